"""Loading and saving whole models as directories: `synchformer_jax.load(DIR)` / `synchformer_jax.save(...)`."""
from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import numpy as np
from flax import nnx

from synchformer_jax import checkpointing, cpu
from synchformer_jax.models import TARGETS, Buffer, build_target, stored_variables, target_of
from synchformer_jax.models.config import ModelConfig, ModelConfigError, SparseSyncConfig, config_from_dict


def save(module: nnx.Module, directory: str, cfg: ModelConfig | None = None, *, provenance: dict[str, Any] | None = None,
         overwrite: bool = False) -> None:
  """Writes a model (or a single tower, with the `cfg` it was built from) as a model directory."""
  variables = {k: np.asarray(jax.device_get(v.get_value())) for k, v in stored_variables(module).items()}
  save_variables(variables, directory, target_of(module), cfg or module.cfg, provenance=provenance,
                 overwrite=overwrite)


def save_variables(variables: dict[str, np.ndarray], directory: str, target: str, cfg: ModelConfig, *,
                   provenance: dict[str, Any] | None = None, overwrite: bool = False) -> None:
  """Writes a target's variables (dotted path → array, as `stored_variables` names them) as a model directory."""
  metadata = {'target': target, 'config': cfg.to_dict(), 'provenance': provenance or {}}
  checkpointing.save_model_dir(directory, variables, metadata, overwrite=overwrite)


@functools.cache
def _use_inference_flags() -> None:
  """XLA:CPU's inference settings (`cpu.INFERENCE_FLAGS`), or once a warning that JAX started without them."""
  if not cpu.use_inference_flags() and cpu.backends_initialised() and not cpu.inference_flags_set():
    warnings.warn('synchformer_jax.load: JAX was initialised before the CPU inference settings could be applied, '
                  'so CPU inference runs up to 28 % slower: load the model (or call '
                  'synchformer_jax.cpu.use_inference_flags()) before the first JAX computation', stacklevel=3)


def read_config(directory: str) -> tuple[str, ModelConfig | SparseSyncConfig]:
  """(target, model config) of a model directory, without reading its parameters."""
  metadata = checkpointing.read_metadata(directory)
  target = metadata.get('target')
  if target not in TARGETS:
    raise checkpointing.ModelDirectoryError(
        f'{directory}: unknown target {target!r} in {checkpointing.METADATA_FILE}, expected one of {TARGETS}')
  try:
    return target, config_from_dict(metadata['config'])
  except ModelConfigError as e:
    raise checkpointing.ModelDirectoryError(f'{directory}: {e}') from e


def _is_qkv(name: str) -> bool:
  return name.endswith(('.qkv.kernel', '.qkv.bias'))


def _folded(name: str, value):
  """A format-1 (flat) q|k|v parameter in the folded layout of format 2."""
  return value.reshape(value.shape[0], 3, -1) if name.endswith('kernel') else value.reshape(3, -1)


def _flat_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The format-1 shape of a folded q|k|v parameter."""
  return (shape[0], shape[1] * shape[2]) if name.endswith('kernel') else (shape[0] * shape[1],)


def read_params(directory: str, shapes: dict[str, jax.ShapeDtypeStruct] | None = None) -> dict[str, Any]:
  """The flat parameters of a model directory in the current layout; format-1 directories are upgraded.

  With `shapes` (the current layout's) the restore checks them and places the arrays as they say.
  """
  version = checkpointing.read_metadata(directory)['format_version']
  if version == checkpointing.FORMAT_VERSION:
    return checkpointing.load_params(directory, shapes)
  if shapes is not None:
    shapes = {k: jax.ShapeDtypeStruct(_flat_shape(k, s.shape), s.dtype) if _is_qkv(k) else s
              for k, s in shapes.items()}
  params = checkpointing.load_params(directory, shapes)
  return {k: _folded(k, v) if _is_qkv(k) else v for k, v in params.items()}


def load(directory: str, *, dtype: str | None = None, seed: int = 0) -> nnx.Module:
  """The model stored in `directory`, in eval mode.

  `dtype` ('float32' / 'bfloat16') overrides the compute dtype; parameters stay float32. Parameters are
  restored onto the first local device; only the dropout RNG state is made fresh.
  """
  _use_inference_flags()
  target, cfg = read_config(directory)
  if dtype is not None:
    cfg = cfg.replace(dtype=dtype)
  build = lambda: build_target(target, cfg, seed)
  abstract = nnx.eval_shape(build)
  # Restored straight onto the device: restoring to host arrays and then copying them would hold the
  # parameters twice (for the full Stage II model 0.8 GiB more peak memory).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device) for k, v in stored_variables(abstract).items()}
  params = read_params(directory, shapes)
  graphdef = nnx.split(abstract, (nnx.Param, Buffer), ...)[0]
  # Building under jit and returning only the RNG state lets XLA drop the parameter initialisers.
  rest = jax.jit(lambda: nnx.split(build(), (nnx.Param, Buffer), ...)[2])()
  stored = nnx.state(abstract, (nnx.Param, Buffer))
  flat = nnx.to_flat_state(stored)
  for path, var in flat:
    var.set_value(params['.'.join(map(str, path))])
  module = nnx.merge(graphdef, nnx.from_flat_state(flat), rest)
  module.eval()
  cpu.release_free_memory()  # the restore's staging buffers
  return module
