"""Checkpoints on disk; the only module that imports orbax.

Model directories (`save_model_dir`) are what `synchformer_jax.load` reads and the converter writes;
training checkpoints (`TrainCheckpointer`) add the optimiser, RNG and data-iterator state for resuming.

A model directory holds `synchformer_jax.json` (format version, what the directory holds, the model
config, provenance) and `params/` (an orbax PyTree of the parameters, flat: dotted path → array).
Directories are written under a temporary name and renamed when complete, so a failed write leaves
nothing at the destination.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from synchformer_jax.errors import InputError

# 2: a fused q|k|v projection is stored folded, kernel (D, 3, D) and bias (3, D); 1 stored it flat, (D, 3D) and (3D,).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
METADATA_FILE = 'synchformer_jax.json'
PARAMS_DIR = 'params'


class ModelDirectoryError(InputError):
  """A path that is not a readable model directory; the message names it and what is wrong."""


@contextlib.contextmanager
def atomic_directory(destination: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary directory that becomes `destination` only if the block completes."""
  destination = os.path.abspath(destination)
  if os.path.exists(destination) and not overwrite and (not os.path.isdir(destination) or os.listdir(destination)):
    raise FileExistsError(f'{destination}: already exists (choose another destination or overwrite it)')
  parent = os.path.dirname(destination)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(destination)}.tmp-', dir=parent)
  try:
    yield tmp
    if os.path.exists(destination):
      shutil.rmtree(destination) if os.path.isdir(destination) else os.remove(destination)
    os.rename(tmp, destination)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)


def save_model_dir(destination: str, params: dict[str, Any], metadata: dict[str, Any], overwrite: bool = False) -> None:
  """Writes flat parameters and their description as a model directory."""
  with atomic_directory(destination, overwrite) as tmp:
    # Written by the calling process alone (the others of a multi-host run do not take part).
    alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})
    with ocp.StandardCheckpointer(multiprocessing_options=alone) as checkpointer:
      checkpointer.save(os.path.join(tmp, PARAMS_DIR), {k: np.asarray(v) for k, v in params.items()})
    with open(os.path.join(tmp, METADATA_FILE), 'w') as f:
      json.dump({'format_version': FORMAT_VERSION, **metadata}, f, indent=1)


def read_metadata(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, METADATA_FILE)
  if not os.path.isfile(path):
    raise ModelDirectoryError(f'{directory}: not a synchformer_jax model directory (no {METADATA_FILE})')
  with open(path) as f:
    try:
      metadata = json.load(f)
    except json.JSONDecodeError as e:
      raise ModelDirectoryError(f'{path}: not valid JSON ({e})') from e
  if metadata.get('format_version') not in READABLE_VERSIONS:
    raise ModelDirectoryError(f'{path}: format_version {metadata.get("format_version")!r}, expected one of '
                              f'{READABLE_VERSIONS}')
  return metadata


def load_params(directory: str, target: dict[str, Any] | None = None) -> dict[str, Any]:
  """The flat parameters of a model directory; with `target` (abstract arrays) restored to its shardings."""
  path = os.path.join(os.path.abspath(directory), PARAMS_DIR)
  if not os.path.isdir(path):
    raise ModelDirectoryError(f'{directory}: no {PARAMS_DIR}/ (a model directory holds its parameters there)')
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      return checkpointer.restore(path, target)
    except (ValueError, KeyError, OSError) as e:  # damaged files, or parameters of other names or shapes
      raise ModelDirectoryError(f'{directory}: unreadable parameters ({type(e).__name__}: {e})') from e


def _is_key(x) -> bool:
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _savable(tree: Any) -> Any:
  """Typed PRNG keys → their raw uint32 data (orbax stores plain arrays)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_savable(abstract: Any) -> Any:
  def convert(x):
    if _is_key(x):
      data = jax.eval_shape(jax.random.key_data, x)
      sharding = getattr(x, 'sharding', None)
      return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=_key_data_sharding(sharding, data.ndim))
    return x
  return jax.tree.map(convert, abstract)


def _key_data_sharding(sharding, ndim: int):
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*sharding.spec, *([None] * (ndim - len(sharding.spec)))))
  return sharding


def _restore_keys(tree: Any, abstract: Any) -> Any:
  # Keys are made with the default PRNG implementation (nnx.Rngs), so wrapping with it restores them.
  return jax.tree.map(lambda x, a: jax.random.wrap_key_data(x) if _is_key(a) else x, tree, abstract)


class CheckpointMismatchError(InputError):
  """A training checkpoint that does not fit the run: another structure, shape or dtype, or a changed config."""


def _key_name(key) -> str:
  for attribute in ('key', 'idx', 'name'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _leaf_layouts(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """Dotted path → (shape, dtype) of every array leaf (NNX's `.value` dropped from the paths)."""
  layouts = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [_key_name(k) for k in path]
    if names and names[-1] == 'value':
      names = names[:-1]
    layouts['.'.join(names)] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
  return layouts


def layout_mismatch(stored: Any, expected: Any) -> str | None:
  """The first difference between a checkpoint's arrays and the run's, in words; None when they agree."""
  have, want = _leaf_layouts(stored), _leaf_layouts(expected)
  for name, (shape, dtype) in want.items():
    if name not in have:
      return f'{name} {shape} {dtype} is not in the checkpoint'
    if have[name] != (shape, dtype):
      return f'{name} is {have[name][0]} {have[name][1]} in the checkpoint, the run has {shape} {dtype}'
  extra = sorted(set(have) - set(want))
  return f'{extra[0]} {have[extra[0]][0]} is in the checkpoint, not in the run' if extra else None


def changed_fields(stored: Any, current: Any, prefix: str = '') -> list[str]:
  """Dotted names of the fields whose values differ between two nested dicts (a fingerprint)."""
  if isinstance(stored, dict) and isinstance(current, dict):
    return [name for key in sorted(set(stored) | set(current))
            for name in changed_fields(stored.get(key), current.get(key), f'{prefix}{key}.')]
  return [] if stored == current else [prefix.rstrip('.')]


class TrainCheckpointer:
  """Training checkpoints: the train state (sharded arrays), the data iterator state and run metadata.

  Saves are asynchronous; the last `keep` steps are kept. `restore_latest` falls back to the previous
  checkpoint, with a warning, only when the latest cannot be read (a run killed mid-write, a damaged file);
  a checkpoint of another model or optimiser stops the run (`CheckpointMismatchError`).
  """

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True, cleanup_tmp_directories=True)
    # Handlers named up front, so that a checkpoint's array metadata can be read before restoring it.
    handlers = {'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler(),
                'meta': ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def save(self, step: int, state: Any, data_state: dict[str, Any], meta: dict[str, Any]) -> None:
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_savable(state)),
                                                     data=ocp.args.JsonSave(data_state),
                                                     meta=ocp.args.JsonSave(meta)))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def _check_fits(self, step: int, abstract_state: Any, fingerprint: dict[str, Any] | None,
                  accept_changes: bool) -> None:
    """Raises CheckpointMismatchError when the checkpoint at `step` is not of this run; any other error means
    it is unreadable."""
    where = f'{self.directory}/{step}'
    meta = dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    stored_fingerprint = meta.get('fingerprint')
    if fingerprint is not None and stored_fingerprint is not None and not accept_changes:
      changed = changed_fields(stored_fingerprint, fingerprint)
      if changed:
        raise CheckpointMismatchError(
            f'{where}: the run changes {", ".join(changed)} from the checkpoint; use another workdir, or set '
            'config.accept_config_change=True to resume with the change deliberately')
    mismatch = layout_mismatch(self._manager.item_metadata(step)['state'], _abstract_savable(abstract_state))
    if mismatch:
      raise CheckpointMismatchError(f'{where}: the checkpoint does not fit the run: {mismatch}. Use another '
                                    'workdir (nothing in this one was changed)')

  def restore_latest(self, abstract_state: Any, fingerprint: dict[str, Any] | None = None,
                     accept_changes: bool = False) -> tuple[int, Any, dict, dict] | None:
    """(step, state, data_state, meta) of the newest readable checkpoint, or None when there is none.

    `fingerprint` (what the run's model and optimiser are, a nested dict) is compared with the one saved in the
    checkpoint's `meta`; a difference raises CheckpointMismatchError naming the fields, unless `accept_changes`.
    """
    for step in reversed(self.steps()):
      try:
        self._check_fits(step, abstract_state, fingerprint, accept_changes)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract_savable(abstract_state)),
            data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
      except CheckpointMismatchError:
        raise
      except Exception as e:  # an incomplete or damaged checkpoint: try the one before
        logging.warning('checkpoint at step %d in %s is unreadable (%s: %s); falling back to the previous one',
                        step, self.directory, type(e).__name__, e)
        continue
      return step, _restore_keys(restored.state, abstract_state), dict(restored.data), dict(restored.meta)
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
