"""Offset predictions for media files (any container, frame rate, size, sample rate or channel count).

  predict_offsets(model, path)   one window, built exactly as the original's example.py builds it
  offset_curve(model, path)      sliding windows over the whole file: the offset over time
  search_offset(model, path)     offsets beyond ±2 s, by scanning coarse shifts of the audio

Offsets follow the original's sign: positive means the audio is early (the audio window starts that much
later in the file than the video window). An artificial `offset_sec` starts the audio that much later.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx

from synchformer_jax.constants import (AUDIO_RATE, MAX_OFFSET_SEC, OFFSET_GRID, SEGMENT_FRAMES, SEGMENT_SAMPLES,
                                       SYNC_SEGMENT_STRIDE_FRAMES, SYNC_SEGMENT_STRIDE_SAMPLES, SYNC_SEGMENT_STRIDE_SEC)
from synchformer_jax.data import transforms
from synchformer_jax.data.decode import DecodeError, MediaFile, MediaSource
from synchformer_jax.errors import InputError
from synchformer_jax.inference.compiled import DEFAULT_CHUNK_SIZE, model_logits, softmax
from synchformer_jax.inference.results import OffsetCurve, OffsetPrediction, OffsetSearch
from synchformer_jax.inference.segments import (encode_audio_segments, encode_video_sync, model_stage, num_segments,
                                                require_kind, sync_logits, waveform_segments, window_seconds)

# Candidate shifts of the offset search must be close enough that every offset is within the grid's ±2 s
# of one of them.
MAX_SEARCH_STEP_SEC = 2 * MAX_OFFSET_SEC


def build_file_example(model: nnx.Module, source: MediaSource, *, offset_sec: float = 0.0,
                       v_start_sec: float = 0.0, original_decoder: bool = False
                       ) -> tuple[dict[str, Any], transforms.ClipPlan]:
  """The model input example.py builds (Stage II test transforms, fixed offset) and where it comes from."""
  require_kind(model, 'sync', 'an offset prediction')
  stage = model_stage(model)
  media = MediaFile(source, original_decoder=original_decoder)
  plan = transforms.plan_clip(media.info, stage, offset_sec=offset_sec, vstart_sec=v_start_sec)
  return transforms.make_example(plan, media.read(plan.frame_window, plan.sample_window), stage), plan


def predict_offsets(model: nnx.Module, source: MediaSource, *, offset_sec: float = 0.0, v_start_sec: float = 0.0,
                    original_decoder: bool = False) -> OffsetPrediction:
  """The offset of one window of a file, as the original's example.py computes it.

  The 5-s crop starts at `v_start_sec`; its audio starts `offset_sec` later (an artificial offset, rounded
  to 0.01 s as the original does). Raises `DecodeError` for an unreadable or too short file.
  """
  example, _ = build_file_example(model, source, offset_sec=offset_sec, v_start_sec=v_start_sec,
                                  original_decoder=original_decoder)
  logits = np.asarray(model_logits(model, example['video'][None], example['audio'][None])[0])
  return OffsetPrediction(OFFSET_GRID.astype(np.float64), softmax(logits), logits,
                          applied_offset_sec=round(float(example['offset_sec']), 2), v_start_sec=float(v_start_sec))


class FileFeatures:
  """Segment features of a whole file on the Stage II grid: video segment k starts at frame 8k; the audio
  segments of a shift start `shift` seconds after their video segment."""

  def __init__(self, model: nnx.Module, source: MediaSource, *, chunk_size: int, original_decoder: bool,
               block_segments: int = 64):
    require_kind(model, 'sync', 'an offset prediction')
    self.model, self.chunk_size = model, chunk_size
    media = MediaFile(source, original_decoder=original_decoder)
    self.name = media.name
    n_frames = media.info.n_frames
    self.n_segments = num_segments(n_frames, SEGMENT_FRAMES, SYNC_SEGMENT_STRIDE_FRAMES)
    # The whole waveform (cheap), and the video in blocks of segments so that long files fit in memory.
    # `read` decodes a window of both streams; the one not wanted here is given a one-frame/sample window.
    self.wav = media.read((0, 1), (0, media.info.n_samples)).audio
    blocks = []
    for first in range(0, self.n_segments, block_segments):
      count = min(block_segments, self.n_segments - first)
      f0 = first * SYNC_SEGMENT_STRIDE_FRAMES
      frames = media.read((f0, f0 + (count - 1) * SYNC_SEGMENT_STRIDE_FRAMES + SEGMENT_FRAMES), (0, 1)).frames
      blocks.append(np.asarray(encode_video_sync(model, frames[None], chunk_size=chunk_size))[0])
    if not blocks:
      raise DecodeError(f'{self.name}: {n_frames} frames are fewer than one {SEGMENT_FRAMES}-frame segment')
    self.vfeat = np.concatenate(blocks)

  def audio_at(self, shift_sec: float) -> tuple[np.ndarray, np.ndarray]:
    """Audio features (K, 6, D) aligned with the video segments at `shift_sec`, and which exist (K,)."""
    starts = SYNC_SEGMENT_STRIDE_SAMPLES * np.arange(self.n_segments) + int(round(shift_sec * AUDIO_RATE))
    valid = (starts >= 0) & (starts + SEGMENT_SAMPLES <= len(self.wav))
    afeat = np.zeros((self.n_segments, self.model.cfg.audio.time_tokens, self.model.cfg.audio.dim), np.float32)
    if valid.any():
      segments = waveform_segments(self.wav, starts[valid])
      afeat[valid] = np.asarray(encode_audio_segments(self.model, segments, self.chunk_size), np.float32)
    return afeat, valid

  def window_logits(self, shift_sec: float, hop: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(first segment of each window, logits) of the windows, `hop` segments apart, that have audio at the shift."""
    n = self.model.cfg.transformer.n_segments
    afeat, valid = self.audio_at(shift_sec)
    firsts = [w for w in range(0, self.n_segments - n + 1, hop) if valid[w:w + n].all()]
    if not firsts:
      return np.zeros(0, np.int64), np.zeros((0, self.model.cfg.num_classes), np.float32)
    index = np.asarray(firsts)[:, None] + np.arange(n)
    logits = sync_logits(self.model, self.vfeat[index], afeat[index], chunk_size=self.chunk_size)
    return np.asarray(firsts), np.asarray(logits)


def offset_curve(model: nnx.Module, source: MediaSource, *, offset_sec: float = 0.0, hop_sec: float = 1.0,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, original_decoder: bool = False) -> OffsetCurve:
  """The offset over time: windows of `n_segments` segments every `hop_sec` (rounded to the 0.32-s segment
  stride) over the whole file, the audio of each starting `offset_sec` after its video."""
  features = FileFeatures(model, source, chunk_size=chunk_size, original_decoder=original_decoder)
  hop = max(1, round(hop_sec / SYNC_SEGMENT_STRIDE_SEC))
  firsts, logits = features.window_logits(offset_sec, hop)
  n = model.cfg.transformer.n_segments
  if not len(firsts):
    raise DecodeError(f'{features.name}: too short for one {window_seconds(n):.2f}-s window with the audio '
                      f'{offset_sec:+.2f} s from the video')
  return OffsetCurve(firsts * SYNC_SEGMENT_STRIDE_SEC, window_seconds(n), OFFSET_GRID.astype(np.float64), logits,
                     float(offset_sec))


def search_offset(model: nnx.Module, source: MediaSource, *, search_range_sec: float, step_sec: float = 2.0,
                  offset_sec: float = 0.0, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  original_decoder: bool = False) -> OffsetSearch:
  """Offsets up to ±`search_range_sec`, beyond the grid's ±2 s (the original's issue #7).

  For each coarse offset c in -range, -range + step, ..., +range (and 0), the audio is started c earlier,
  undoing an offset of about c; the model predicts the residual r on every window that fits, their
  probabilities are averaged, and c + r is that candidate's estimate. The most confident candidate wins.
  """
  if not 0 < step_sec <= MAX_SEARCH_STEP_SEC:
    raise InputError(f'search step: expected 0 < step <= {MAX_SEARCH_STEP_SEC} s, got {step_sec}')
  if search_range_sec < 0:
    raise InputError(f'search range: expected a non-negative number of seconds, got {search_range_sec}')
  features = FileFeatures(model, source, chunk_size=chunk_size, original_decoder=original_decoder)
  half = int(np.ceil(search_range_sec / step_sec - 1e-9))
  coarse = np.round(step_sec * np.arange(-half, half + 1), 6)
  candidates = []
  for c in coarse:
    firsts, logits = features.window_logits(offset_sec - c)
    if len(firsts):
      candidates.append(OffsetPrediction(OFFSET_GRID.astype(np.float64) + c, softmax(logits).mean(axis=0), None,
                                         applied_offset_sec=float(offset_sec), coarse_offset_sec=float(c)))
  if not candidates:
    raise DecodeError(f'{features.name}: too short for a window at any shift within ±{search_range_sec} s')
  return OffsetSearch(candidates)
