"""What each kind of offset model takes: the one place the inference code asks "Synchformer or SparseSync?".

  Synchformer ('sync')   14 segments of 16 frames (a 4.8-s window) through the Stage II test pipeline; 21 classes
                         over ±2 s
  SparseSync             one 5-s clip (125 frames, 80,000 samples; the centre crop resized to `cfg.crop`) through
                         its own test pipeline (`data.sparsesync`); 21 classes over ±2 s or 3 over ±1 s

The model is recognised from its config (`model.cfg.kind`), so a SparseSync model directory needs no flag.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from synchformer_jax.constants import OFFSET_GRID
from synchformer_jax.data import loader, sparsesync, transforms
from synchformer_jax.data.decode import MediaFile, MediaSource
from synchformer_jax.errors import InputError
from synchformer_jax.inference.compiled import DEFAULT_CHUNK_SIZE
from synchformer_jax.inference.segments import model_stage

OFFSET_KINDS = ('sync', 'sparsesync')
# SparseSync's compiled calls take whole 5-s windows (125 full-size frames each), not 16-frame segments.
SPARSESYNC_DEFAULT_CHUNK_SIZE = 4


def model_kind(model: nnx.Module) -> str:
  return getattr(getattr(model, 'cfg', None), 'kind', type(model).__name__)


def is_sparsesync(model: nnx.Module) -> bool:
  return model_kind(model) == 'sparsesync'


def require_offset_model(model: nnx.Module, what: str) -> None:
  found = model_kind(model)
  if found not in OFFSET_KINDS:
    raise InputError(f"{what} needs a 'sync' model (Synchformer) or a 'sparsesync' one, got {found!r}")


def sparsesync_pipeline(model: nnx.Module) -> sparsesync.SparseSyncPipeline:
  """The test pipeline of a SparseSync model: its class grid and frame size."""
  cfg = model.cfg
  return sparsesync.SparseSyncPipeline(max_off_sec=cfg.max_offset_sec, num_offset_classes=cfg.num_classes,
                                       output_size=cfg.crop)


def offset_grid(model: nnx.Module) -> np.ndarray:
  """The offset (s) each class of the model stands for, float64 (the float32 grids' values)."""
  grid = sparsesync_pipeline(model).offset_grid if is_sparsesync(model) else OFFSET_GRID
  return grid.astype(np.float64)


def max_offset_sec(model: nnx.Module) -> float:
  """The largest offset on the model's grid (2 s, or 1 s for the 3-class SparseSync)."""
  return float(np.abs(offset_grid(model)).max())


def chunk_size_of(model: nnx.Module, chunk_size: int | None) -> int:
  """What one compiled call takes: `chunk_size` segments (Synchformer) or 5-s windows (SparseSync); None: the
  kind's default."""
  if chunk_size is not None:
    return chunk_size
  return SPARSESYNC_DEFAULT_CHUNK_SIZE if is_sparsesync(model) else DEFAULT_CHUNK_SIZE


def build_file_example(model: nnx.Module, source: MediaSource, *, offset_sec: float = 0.0, v_start_sec: float = 0.0,
                       original_decoder: bool = False) -> tuple[dict[str, Any], Any]:
  """The model's input for one window of a file (the video from `v_start_sec`, its audio `offset_sec` later), as
  its test pipeline builds it, and the plan saying where it comes from (`transforms.ClipPlan` or
  `sparsesync.SparseSyncPlan`). Only that window is decoded. Raises `DecodeError` for an unreadable or too short
  file."""
  require_offset_model(model, 'an offset prediction')
  media = MediaFile(source, original_decoder=original_decoder)
  if is_sparsesync(model):
    pipeline = sparsesync_pipeline(model)
    plan = sparsesync.plan_sparsesync_clip(media.info, pipeline, offset_sec=offset_sec, vstart_sec=v_start_sec)
    return sparsesync.make_sparsesync_example(plan, media.read(plan.frame_window, plan.sample_window), pipeline), plan
  stage = model_stage(model)
  plan = transforms.plan_clip(media.info, stage, offset_sec=offset_sec, vstart_sec=v_start_sec)
  return transforms.make_example(plan, media.read(plan.frame_window, plan.sample_window), stage), plan


def eval_example(model: nnx.Module, *, fixed_offsets: bool, original_decoder: bool) -> loader.ExampleFn:
  """The per-record step of evaluating the model on a dataset split (a `loader.ExampleFn`)."""
  if is_sparsesync(model):
    return sparsesync.SparseSyncEvalExample(sparsesync_pipeline(model), fixed_offsets=fixed_offsets,
                                            original_decoder=original_decoder)
  return loader.EvalExample(model_stage(model), fixed_offsets=fixed_offsets, original_decoder=original_decoder)
