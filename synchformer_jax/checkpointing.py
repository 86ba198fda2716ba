"""Model checkpoints on disk: orbax arrays plus a JSON description. The only module that imports orbax.

A model directory holds `synchformer_jax.json` (format version, what the directory holds, the model
config, provenance) and `params/` (an orbax PyTree of the parameters, flat: dotted path → array).
Directories are written under a temporary name and renamed when complete, so a failed write leaves
nothing at the destination.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np
import orbax.checkpoint as ocp

FORMAT_VERSION = 1
METADATA_FILE = 'synchformer_jax.json'
PARAMS_DIR = 'params'


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
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, PARAMS_DIR), {k: np.asarray(v) for k, v in params.items()})
    with open(os.path.join(tmp, METADATA_FILE), 'w') as f:
      json.dump({'format_version': FORMAT_VERSION, **metadata}, f, indent=1)


def read_metadata(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, METADATA_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{directory}: not a synchformer_jax model directory (no {METADATA_FILE})')
  with open(path) as f:
    metadata = json.load(f)
  if metadata.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{path}: format_version {metadata.get("format_version")!r}, expected {FORMAT_VERSION}')
  return metadata


def load_params(directory: str, target: dict[str, Any] | None = None) -> dict[str, Any]:
  """The flat parameters of a model directory; with `target` (abstract arrays) restored to its shardings."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(os.path.abspath(directory), PARAMS_DIR), target)
