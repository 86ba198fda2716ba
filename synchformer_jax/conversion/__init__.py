"""Conversion between the original PyTorch checkpoints and synchformer_jax model directories."""
from __future__ import annotations

import os

from synchformer_jax import checkpointing, pretrained
from synchformer_jax.conversion.convert import (Conversion, SourceCheckpoint, convert, infer_config, read_source,
                                                to_original_state_dict)
from synchformer_jax.conversion.torch_io import CheckpointError, save_torch_file
from synchformer_jax.models import MODEL_KINDS, SPARSESYNC_TOWERS
from synchformer_jax.models.config import ModelConfig, SparseSyncConfig


def convert_checkpoint(src: str, dst: str, *, target: str | None = None, size: str | None = None,
                       config: ModelConfig | SparseSyncConfig | None = None, allow_missing: bool = False, allow_unused: bool = False,
                       overwrite: bool = False) -> Conversion:
  """Converts an original checkpoint file into a model directory at `dst` (nothing is left there on error)."""
  source = read_source(src)
  conversion = convert(source, target, size=size, config=config, allow_missing=allow_missing,
                       allow_unused=allow_unused)
  provenance = {'source': os.path.abspath(src), 'source_kind': source.kind, 'source_args': source.args,
                **conversion.report()}
  checkpointing.save_model_dir(dst, conversion.params,
                               {'target': conversion.target, 'config': conversion.config.to_dict(),
                                'provenance': provenance}, overwrite=overwrite)
  return conversion


def export_torch_checkpoint(model_dir: str, dst: str) -> str:
  """Writes a model directory as a checkpoint in the original training code's layout.

  Stage II / synchronizability: `{'model': state_dict, ...}` (what the original's `example.py` loads);
  Stage I: `{'state_dict': {'module.' + key: ...}, ...}` as its DDP training writes it. SparseSync:
  `{'model': state_dict, 'model_type': 'AVSyncModel'}`, BatchNorm statistics and counters included; its trunks
  alone as their initial-weight files are laid out (S3D a plain state dict, ResNetAudio under `'model'`), without
  the classifiers the conversion dropped.
  """
  target, cfg = pretrained.read_config(model_dir)
  if target not in (*MODEL_KINDS, *SPARSESYNC_TOWERS):
    raise CheckpointError(f'{model_dir}: holds a single {target} tower; only whole models (sync, synchability, '
                          'avclip, sparsesync) and the SparseSync trunks have an original checkpoint layout to '
                          'export to')
  state_dict = to_original_state_dict(target, cfg, pretrained.read_params(model_dir))
  if target == 'avclip':
    ckpt = {'epoch': 0, 'name': 'synchformer_jax', 'state_dict': {'module.' + k: v for k, v in state_dict.items()}}
  elif target == 's3d':
    ckpt = state_dict
  else:
    model_type = {'sparsesync': 'AVSyncModel', 'resnet_audio': 'ResNetAudio'}.get(target, 'Synchformer')
    ckpt = {'epoch': 0, 'model': state_dict, 'model_type': model_type}
  save_torch_file(ckpt, dst)
  return dst
