"""Reading and writing the original's checkpoint files without running their pickled code.

Real Synchformer checkpoints pickle an OmegaConf config (and optimiser state) beside the weights.
`load_torch_file` unpickles with an allow-list: torch's tensor/storage rebuilders and plain containers
are real; any other class becomes an inert `Opaque` record of its pickled state, so nothing from the
file is imported or executed. `opaque_to_plain` turns an OmegaConf `DictConfig` record back into
dicts and lists. Safetensors files are read with no torch at all.
"""
from __future__ import annotations

import os
import pickle
import types
import zipfile
from typing import Any

import numpy as np

from synchformer_jax.errors import InputError


class CheckpointError(InputError):
  """A checkpoint file that cannot be read or converted; the message names the file and the problem."""


class Opaque:
  """Stands in for a class the allow-list does not trust; keeps whatever the pickle gave it."""
  module = name = ''

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs, self.state, self.items = args, kwargs, None, {}

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):  # dict subclasses are rebuilt item by item
    self.items[key] = value

  def append(self, value):  # and list subclasses by append/extend
    self.items[len(self.items)] = value

  def extend(self, values):
    for v in values:
      self.append(v)

  def __repr__(self):
    return f'Opaque({self.module}.{self.name})'


_SAFE_BUILTINS = {('collections', 'OrderedDict'), ('builtins', 'set'), ('builtins', 'frozenset'),
                  ('builtins', 'slice'), ('builtins', 'complex'), ('_codecs', 'encode'),
                  ('torch', 'Size'), ('torch', 'device'), ('torch', 'float32'), ('torch', 'float16'),
                  ('torch', 'bfloat16'), ('torch', 'int64'), ('torch', 'int32'),
                  ('torch._utils', '_rebuild_tensor_v2'), ('torch._utils', '_rebuild_tensor'),
                  ('torch._utils', '_rebuild_parameter'), ('torch._utils', '_rebuild_parameter_with_state'),
                  ('torch.storage', 'UntypedStorage'), ('torch.storage', 'TypedStorage'),
                  ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
                  ('numpy', 'dtype'), ('numpy.core.multiarray', '_reconstruct'),
                  ('numpy._core.multiarray', '_reconstruct'), ('numpy', 'ndarray')}


class _AllowListUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) in _SAFE_BUILTINS or (module == 'torch' and name.endswith('Storage')):
      return super().find_class(module, name)
    return type(name, (Opaque,), {'module': module, 'name': name})


# torch.load accepts a pickle module; this one only swaps in the allow-list unpickler.
allow_list_pickle = types.SimpleNamespace(Unpickler=_AllowListUnpickler, load=lambda f, **kw: _AllowListUnpickler(f, **kw).load(),
                                          __name__='allow_list_pickle')


def _require_torch(path: str):
  try:
    import torch
  except ImportError as e:
    raise CheckpointError(f'{path}: reading PyTorch checkpoints needs torch; install it with '
                          f"pip install -e '.[torch]'") from e
  return torch


def load_torch_file(path: str) -> Any:
  """Unpickles a .pt/.pth/.pyth/.bin file with tensors as numpy float32 (integers kept as they are)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: no such file')
  if path.endswith('.safetensors'):
    return load_safetensors(path)
  torch = _require_torch(path)
  with open(path, 'rb') as f:
    head = f.read(4)
  if head[:2] == b'PK' and not zipfile.is_zipfile(path):
    raise CheckpointError(f'{path}: truncated or damaged checkpoint (a zip archive without its directory)')
  try:
    obj = torch.load(path, map_location='cpu', pickle_module=allow_list_pickle, weights_only=False)
  except Exception as e:  # torch raises many types for damaged files
    raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})') from e
  return _tensors_to_numpy(obj, torch)


def _tensors_to_numpy(obj, torch):
  if isinstance(obj, torch.Tensor):
    t = obj.detach()
    return t.float().numpy() if t.is_floating_point() else t.numpy()
  if isinstance(obj, dict):
    return type(obj)((k, _tensors_to_numpy(v, torch)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_tensors_to_numpy(v, torch) for v in obj)
  return obj


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  try:
    tensors = load_file(path)
  except Exception as e:
    raise CheckpointError(f'{path}: not a readable safetensors file ({type(e).__name__}: {e})') from e
  return {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in tensors.items()}


def opaque_to_plain(obj: Any) -> Any:
  """An unpickled OmegaConf DictConfig/ListConfig (as `Opaque` records) → plain dicts, lists and scalars."""
  if isinstance(obj, Opaque):
    state = obj.state if isinstance(obj.state, dict) else {}
    if obj.name in ('DictConfig', 'ListConfig') and '_content' in state:
      return opaque_to_plain(state['_content'])
    if obj.name == 'AnyNode' or obj.name.endswith('Node'):
      return opaque_to_plain(state.get('_val'))
    if obj.items:
      return {k: opaque_to_plain(v) for k, v in obj.items.items()}
    return None
  if isinstance(obj, dict):
    return {k: opaque_to_plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [opaque_to_plain(v) for v in obj]
  return obj


def save_torch_file(obj: Any, path: str) -> None:
  """Writes numpy arrays as torch tensors with torch.save (atomically: a temp file, then rename)."""
  torch = _require_torch(path)

  def to_torch(o):
    if isinstance(o, np.ndarray):
      return torch.from_numpy(np.asarray(o, order="C"))
    if isinstance(o, dict):
      return {k: to_torch(v) for k, v in o.items()}
    return o

  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    torch.save(to_torch(obj), tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)

