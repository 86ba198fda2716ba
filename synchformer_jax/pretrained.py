"""Loading and saving whole models as directories: `synchformer_jax.load(DIR)` / `synchformer_jax.save(...)`."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from synchformer_jax import checkpointing
from synchformer_jax.models import TARGETS, Buffer, build_target, stored_variables, target_of
from synchformer_jax.models.config import ModelConfig, ModelConfigError


def save(module: nnx.Module, directory: str, cfg: ModelConfig | None = None, *, provenance: dict[str, Any] | None = None,
         overwrite: bool = False) -> None:
  """Writes a model (or a single tower, with the `cfg` it was built from) as a model directory."""
  cfg = cfg or module.cfg
  params = {k: np.asarray(jax.device_get(v.get_value())) for k, v in stored_variables(module).items()}
  metadata = {'target': target_of(module), 'config': cfg.to_dict(), 'provenance': provenance or {}}
  checkpointing.save_model_dir(directory, params, metadata, overwrite=overwrite)


def read_config(directory: str) -> tuple[str, ModelConfig]:
  """(target, model config) of a model directory, without reading its parameters."""
  metadata = checkpointing.read_metadata(directory)
  target = metadata.get('target')
  if target not in TARGETS:
    raise checkpointing.ModelDirectoryError(
        f'{directory}: unknown target {target!r} in {checkpointing.METADATA_FILE}, expected one of {TARGETS}')
  try:
    return target, ModelConfig.from_dict(metadata['config'])
  except ModelConfigError as e:
    raise checkpointing.ModelDirectoryError(f'{directory}: {e}') from e


def load(directory: str, *, dtype: str | None = None, seed: int = 0) -> nnx.Module:
  """The model stored in `directory`, in eval mode.

  `dtype` ('float32' / 'bfloat16') overrides the compute dtype; parameters stay float32. Parameters are
  placed as the restore gives them; only the dropout RNG state is made fresh.
  """
  target, cfg = read_config(directory)
  if dtype is not None:
    cfg = cfg.replace(dtype=dtype)
  build = lambda: build_target(target, cfg, seed)
  abstract = nnx.eval_shape(build)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in stored_variables(abstract).items()}
  params = checkpointing.load_params(directory, shapes)
  graphdef = nnx.split(abstract, (nnx.Param, Buffer), ...)[0]
  # Building under jit and returning only the RNG state lets XLA drop the parameter initialisers.
  rest = jax.jit(lambda: nnx.split(build(), (nnx.Param, Buffer), ...)[2])()
  stored = nnx.state(abstract, (nnx.Param, Buffer))
  flat = nnx.to_flat_state(stored)
  for path, var in flat:
    var.set_value(jnp.asarray(params['.'.join(map(str, path))]))
  module = nnx.merge(graphdef, nnx.from_flat_state(flat), rest)
  module.eval()
  return module
