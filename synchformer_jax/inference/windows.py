"""Offset predictions for media files (any container, frame rate, size, sample rate or channel count).

  predict_offsets(model, path)   one window, built exactly as the original's example.py builds it
  offset_curve(model, path)      sliding windows over the whole file: the offset over time
  search_offset(model, path)     offsets beyond the grid's ±2 s (±1 s), by scanning coarse shifts of the audio

Each takes a Synchformer ('sync') or a SparseSync model, recognised from its config (`kinds`): Synchformer's
window is 14 segments (4.8 s) on its 21-class grid, SparseSync's one 5-s clip on its 21- or 3-class grid, and
results give offsets on the model's grid.

Offsets follow the original's sign: positive means the audio is early (the audio window starts that much
later in the file than the video window). An artificial `offset_sec` starts the audio that much later.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from synchformer_jax.constants import (AUDIO_RATE, SAMPLES_PER_FRAME, SEGMENT_FRAMES, SEGMENT_SAMPLES,
                                       SYNC_SEGMENT_STRIDE_FRAMES, SYNC_SEGMENT_STRIDE_SAMPLES, SYNC_SEGMENT_STRIDE_SEC,
                                       VIDEO_FPS)
from synchformer_jax.data import sparsesync
from synchformer_jax.data.decode import DecodeError, MediaFile, MediaSource
from synchformer_jax.data.transforms import CROP_SIZE, center_crop_box, crop_and_resize
from synchformer_jax.errors import InputError
from synchformer_jax.inference.compiled import bound_call, in_chunks, model_logits, softmax
from synchformer_jax.inference.kinds import (build_file_example, chunk_size_of, is_sparsesync, max_offset_sec,
                                             offset_grid, require_offset_model, sparsesync_pipeline)
from synchformer_jax.inference.results import OffsetCurve, OffsetPrediction, OffsetSearch
from synchformer_jax.inference.segments import (classify_features, encode_audio_segments, encode_video_sync,
                                                num_segments, sync_logits, waveform_segments, window_seconds)

__all__ = ['build_file_example', 'offset_curve', 'predict_offsets', 'search_offset']


def predict_offsets(model: nnx.Module, source: MediaSource, *, offset_sec: float = 0.0, v_start_sec: float = 0.0,
                    original_decoder: bool = False) -> OffsetPrediction:
  """The offset of one window of a file, as the original's example.py computes it.

  The window (4.8 s of segments for Synchformer, a 5-s clip for SparseSync) starts at `v_start_sec`; its audio
  starts `offset_sec` later (an artificial offset, rounded to 0.01 s as the original does). Raises `DecodeError`
  for an unreadable or too short file.
  """
  example, _ = build_file_example(model, source, offset_sec=offset_sec, v_start_sec=v_start_sec,
                                  original_decoder=original_decoder)
  logits = np.asarray(model_logits(model, example['video'][None], example['audio'][None])[0])
  return OffsetPrediction(offset_grid(model), softmax(logits), logits,
                          applied_offset_sec=round(float(example['offset_sec']), 2), v_start_sec=float(v_start_sec))


class FileFeatures:
  """Synchformer's windows of a whole file, from segment features on the Stage II grid: video segment k starts at
  frame 8k; the audio segments of a shift start `shift` seconds after their video segment. Window starts step by
  one segment (0.32 s); the search reads every window."""

  step_sec = SYNC_SEGMENT_STRIDE_SEC
  search_hop = 1

  def __init__(self, model: nnx.Module, source: MediaSource, *, chunk_size: int, original_decoder: bool,
               block_segments: int = 64):
    self.model, self.chunk_size = model, chunk_size
    self.window_sec = window_seconds(model.cfg.transformer.n_segments)
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
    """(start (s) of each window, logits) of the windows, `hop` segments apart, that have audio at the shift."""
    n = self.model.cfg.transformer.n_segments
    afeat, valid = self.audio_at(shift_sec)
    firsts = np.asarray([w for w in range(0, self.n_segments - n + 1, hop) if valid[w:w + n].all()], np.int64)
    if not len(firsts):
      return np.zeros(0), np.zeros((0, self.model.cfg.num_classes), np.float32)
    index = firsts[:, None] + np.arange(n)
    logits = sync_logits(self.model, self.vfeat[index], afeat[index], chunk_size=self.chunk_size)
    return firsts * self.step_sec, np.asarray(logits)


def _video_trunk(model: nnx.Module, video: jax.Array) -> jax.Array:
  return model.video_features(video)


def _audio_trunk(model: nnx.Module, audio: jax.Array) -> jax.Array:
  return model.audio_features(audio)


class SparseSyncFileWindows:
  """SparseSync's 5-s windows of a whole file: window k shows frames [k, k + 125) and hears the 80,000 samples
  from `shift` seconds after its first frame, each through SparseSync's test pipeline (the centre crop resized
  to `cfg.crop`, ImageNet normalisation; the standardised log spectrogram). A window's video trunk runs once
  however many shifts it is heard at; the audio trunk runs per shift. Window starts step by a frame (0.04 s);
  the search reads a window every second."""

  step_sec = 1 / VIDEO_FPS
  search_hop = VIDEO_FPS
  window_sec = sparsesync.CLIP_FRAMES / VIDEO_FPS

  def __init__(self, model: nnx.Module, source: MediaSource, *, chunk_size: int, original_decoder: bool,
               block_frames: int = 500):
    self.model, self.chunk_size, self.block_frames = model, chunk_size, block_frames
    self.pipeline = sparsesync_pipeline(model)
    self.media = MediaFile(source, original_decoder=original_decoder)
    self.name = self.media.name
    info = self.media.info
    self.n_windows = max(0, info.n_frames - sparsesync.CLIP_FRAMES + 1)
    if not self.n_windows:
      raise DecodeError(f'{self.name}: {info.n_frames} frames are fewer than one {self.window_sec:.2f}-s window '
                        f'({sparsesync.CLIP_FRAMES} frames)')
    self.crop_box = center_crop_box(info.height, info.width)
    self.wav = self.media.read((0, 1), (0, info.n_samples)).audio
    self._vfeat: dict[int, np.ndarray] = {}  # window start frame → its video trunk's features
    self._video_trunk = bound_call(_video_trunk, model)
    self._audio_trunk = bound_call(_audio_trunk, model)
    self._classify = bound_call(classify_features, model)

  def _encode_video(self, starts: np.ndarray) -> None:
    """Video trunk features of the windows starting at `starts` (sorted frames), decoded in blocks of about
    `block_frames` frames so that long files fit in memory."""
    while len(starts):
      span = starts < starts[0] + max(self.block_frames - sparsesync.CLIP_FRAMES, 0) + 1
      block, starts = starts[span], starts[~span]
      f0 = int(block[0])
      frames = self.media.read((f0, int(block[-1]) + sparsesync.CLIP_FRAMES), (0, 1)).frames
      frames = crop_and_resize(frames, *self.crop_box, CROP_SIZE, self.pipeline.output_size)
      video = lambda chunk: np.stack([sparsesync.normalise_video(frames[v - f0:v - f0 + sparsesync.CLIP_FRAMES])
                                      for v in chunk])
      features = in_chunks(lambda chunk: self._video_trunk(video(chunk)), block, self.chunk_size)
      self._vfeat.update(zip(block.tolist(), np.asarray(features)))

  def _spectrograms(self, sample_starts: np.ndarray) -> np.ndarray:
    """The model's audio input (N, 1, 257, 626) for the 80,000 samples from each start."""
    wav = self.wav[sample_starts[:, None] + np.arange(sparsesync.CLIP_SAMPLES)]
    return sparsesync.model_audio(sparsesync.log_spectrogram(wav))

  def window_logits(self, shift_sec: float, hop: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(start (s) of each window, logits) of the windows, `hop` frames apart, that have audio at the shift."""
    starts = np.arange(0, self.n_windows, hop)
    sample_starts = starts * SAMPLES_PER_FRAME + int(round(shift_sec * AUDIO_RATE))
    valid = (sample_starts >= 0) & (sample_starts + sparsesync.CLIP_SAMPLES <= len(self.wav))
    starts, sample_starts = starts[valid], sample_starts[valid]
    if not len(starts):
      return np.zeros(0), np.zeros((0, self.model.cfg.num_classes), np.float32)
    self._encode_video(np.asarray([v for v in starts if v not in self._vfeat], np.int64))
    vfeat = np.stack([self._vfeat[v] for v in starts.tolist()])
    afeat = np.asarray(in_chunks(lambda chunk: self._audio_trunk(self._spectrograms(chunk)), sample_starts,
                                 self.chunk_size))
    logits = in_chunks(lambda i: self._classify(vfeat[i], afeat[i]), np.arange(len(starts)), self.chunk_size)
    return starts * self.step_sec, np.asarray(logits)


def file_windows(model: nnx.Module, source: MediaSource, *, chunk_size: int | None,
                 original_decoder: bool) -> FileFeatures | SparseSyncFileWindows:
  """The model's windows over a whole file (`window_logits(shift_sec, hop)`, `window_sec`, `step_sec`)."""
  require_offset_model(model, 'an offset prediction')
  windows = SparseSyncFileWindows if is_sparsesync(model) else FileFeatures
  return windows(model, source, chunk_size=chunk_size_of(model, chunk_size), original_decoder=original_decoder)


def offset_curve(model: nnx.Module, source: MediaSource, *, offset_sec: float = 0.0, hop_sec: float = 1.0,
                 chunk_size: int | None = None, original_decoder: bool = False) -> OffsetCurve:
  """The offset over time: the model's windows every `hop_sec` (rounded to Synchformer's 0.32-s segment stride, or
  to a frame for SparseSync) over the whole file, the audio of each starting `offset_sec` after its video.

  `chunk_size`: segments (Synchformer, default 32) or 5-s windows (SparseSync, default 4) per compiled call.
  """
  windows = file_windows(model, source, chunk_size=chunk_size, original_decoder=original_decoder)
  starts, logits = windows.window_logits(offset_sec, max(1, round(hop_sec / windows.step_sec)))
  if not len(starts):
    raise DecodeError(f'{windows.name}: too short for one {windows.window_sec:.2f}-s window with the audio '
                      f'{offset_sec:+.2f} s from the video')
  return OffsetCurve(starts, windows.window_sec, offset_grid(model), logits, float(offset_sec))


def search_offset(model: nnx.Module, source: MediaSource, *, search_range_sec: float, step_sec: float = 2.0,
                  offset_sec: float = 0.0, chunk_size: int | None = None,
                  original_decoder: bool = False) -> OffsetSearch:
  """Offsets up to ±`search_range_sec`, beyond the grid's ±2 s (±1 s for the 3-class SparseSync; the original's
  issue #7).

  For each coarse offset c in -range, -range + step, ..., +range (and 0), the audio is started c earlier,
  undoing an offset of about c; the model predicts the residual r on every window that fits (Synchformer: every
  0.32 s; SparseSync: every second), their probabilities are averaged, and c + r is that candidate's estimate.
  The most confident candidate wins. The step must leave no offset beyond the grid's reach of a candidate: at
  most twice the grid's largest offset.
  """
  max_step = 2 * max_offset_sec(model)
  if not 0 < step_sec <= max_step:
    raise InputError(f'search step: expected 0 < step <= {max_step:g} s, got {step_sec}')
  if search_range_sec < 0:
    raise InputError(f'search range: expected a non-negative number of seconds, got {search_range_sec}')
  windows = file_windows(model, source, chunk_size=chunk_size, original_decoder=original_decoder)
  half = int(np.ceil(search_range_sec / step_sec - 1e-9))
  coarse = np.round(step_sec * np.arange(-half, half + 1), 6)
  grid = offset_grid(model)
  candidates = []
  for c in coarse:
    _, logits = windows.window_logits(offset_sec - c, windows.search_hop)
    if len(logits):
      candidates.append(OffsetPrediction(grid + c, softmax(logits).mean(axis=0), None,
                                         applied_offset_sec=float(offset_sec), coarse_offset_sec=float(c)))
  if not candidates:
    raise DecodeError(f'{windows.name}: too short for a window at any shift within ±{search_range_sec} s')
  return OffsetSearch(candidates)
