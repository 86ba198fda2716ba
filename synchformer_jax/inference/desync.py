"""Clip-level scores of arrays: av-benchmark's DeSync of a Stage II model, and a synchronizability model's p(sync).

`video`: 25 fps frames (B, T, H, W, 3), as `segments.encode_video_sync` takes them; `audio`: 16 kHz mono (B, N).
"""
from __future__ import annotations

import numpy as np
from flax import nnx

from synchformer_jax.constants import OFFSET_GRID
from synchformer_jax.data.decode import SHORT_SIDE
from synchformer_jax.inference.compiled import DEFAULT_CHUNK_SIZE, softmax
from synchformer_jax.inference.segments import aligned_features, require_kind, sync_logits


def desync(model: nnx.Module, video, audio, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
           short_side: int = SHORT_SIDE) -> np.ndarray:
  """av-benchmark's DeSync of each clip (B,): the mean |predicted offset| (s) of its first and last window.

  A window is the model's `n_segments` segments (4.8 s): the clip's first and last 4.8 s, as av-benchmark
  runs it on 8-s clips. Clips must last at least one window.
  """
  require_kind(model, 'sync', 'desync')
  vfeat, afeat = aligned_features(model, video, audio, chunk_size, short_side)
  n = model.cfg.transformer.n_segments
  first = sync_logits(model, vfeat[:, :n], afeat[:, :n], chunk_size=chunk_size)
  last = sync_logits(model, vfeat[:, -n:], afeat[:, -n:], chunk_size=chunk_size)
  grid = np.abs(OFFSET_GRID.astype(np.float64))
  return (grid[np.argmax(first, axis=-1)] + grid[np.argmax(last, axis=-1)]) / 2


def p_in_sync(model: nnx.Module, video, audio, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
              short_side: int = SHORT_SIDE) -> np.ndarray:
  """A synchronizability model's probability (B,) that each clip can be synchronised.

  On each clip's first window of `n_segments` segments (13: 4.48 s), as the original's test does.
  """
  require_kind(model, 'synchability', 'p_in_sync')
  vfeat, afeat = aligned_features(model, video, audio, chunk_size, short_side)
  n = model.cfg.transformer.n_segments
  logits = sync_logits(model, vfeat[:, :n], afeat[:, :n], chunk_size=chunk_size)
  return softmax(logits)[:, 1]
