"""Segment features and offset logits of arrays: the array half of the downstream API.

  encode_video_sync(model, frames)    25 fps frames (B, T, H, W, 3) → visual segment features (B, S, 8, D)
  encode_audio_sync(model, wav_16k)   16 kHz mono waveforms (B, N) → audio segment features (B, S, 6, D)
  sync_logits(model, vfeat, afeat)    one window of `n_segments` segments → logits (B, classes)

Segments are 16 frames (0.64 s) at a stride of 8 frames (10,240 samples at a stride of 5,120), Stage II's
segmentation. Frames go through the test pipeline's own functions (`data.transforms.test_video_segments`),
so features of a decoded file's frames are those its model inputs give.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from synchformer_jax.constants import (SEGMENT_FRAMES, SEGMENT_SAMPLES, SYNC_SEGMENT_STRIDE_FRAMES,
                                       SYNC_SEGMENT_STRIDE_SAMPLES, VIDEO_FPS)
from synchformer_jax.data import transforms
from synchformer_jax.data.audio import audio_features
from synchformer_jax.data.decode import SHORT_SIDE, resize_short_side
from synchformer_jax.errors import InputError
from synchformer_jax.inference.compiled import DEFAULT_CHUNK_SIZE, in_chunks, jitted_call


def model_stage(model: nnx.Module) -> transforms.Stage:
  """The test pipeline a model takes: Stage II or III, at the model's frame size."""
  stage = transforms.STAGE_III if model.cfg.kind == 'synchability' else transforms.STAGE_II
  return dataclasses.replace(stage, output_size=model.cfg.video.crop)


def require_kind(model: nnx.Module, kind: str, what: str) -> None:
  found = getattr(getattr(model, 'cfg', None), 'kind', type(model).__name__)
  if found != kind:
    raise InputError(f'{what} needs a {kind!r} model, got {found!r}')


def require_segments(model: nnx.Module, what: str) -> None:
  """The array API is Synchformer's: SparseSync models read whole 5-s clips, not segments."""
  if getattr(getattr(model, 'cfg', None), 'kind', None) == 'sparsesync':
    raise InputError(f"{what} works on Synchformer's segments; a SparseSync model reads whole 5-s clips "
                     '(predict_offsets, offset_curve, search_offset)')


def classify_features(model: nnx.Module, vfeat: jax.Array, afeat: jax.Array) -> jax.Array:
  """The model's head on its trunks' or towers' features (for `jitted_call`)."""
  return model.classify(vfeat, afeat)


def _tower(tower: nnx.Module, inputs: jax.Array) -> jax.Array:
  return tower(inputs)


def num_segments(length: int, segment: int, stride: int) -> int:
  return max(0, (length - segment) // stride + 1)


def window_seconds(n_segments: int) -> float:
  """Duration of `n_segments` segments at the Stage II stride (4.8 s for 14)."""
  return ((n_segments - 1) * SYNC_SEGMENT_STRIDE_FRAMES + SEGMENT_FRAMES) / VIDEO_FPS


def _as_uint8(frames: np.ndarray) -> np.ndarray:
  """Decoded video is 8-bit RGB: float frames in [0, 1] are rounded to it."""
  if frames.dtype == np.uint8:
    return frames
  return np.clip(np.round(np.asarray(frames, np.float32) * 255), 0, 255).astype(np.uint8)


def encode_video_sync(model: nnx.Module, frames, *, stride: int = SYNC_SEGMENT_STRIDE_FRAMES,
                      chunk_size: int = DEFAULT_CHUNK_SIZE, short_side: int = SHORT_SIDE) -> jax.Array:
  """Visual segment features (B, S, 8, D) of 25 fps frames (B, T, H, W, 3).

  Frames are uint8 RGB, or float RGB in [0, 1] (rounded to uint8, as decoded video is). Segment k covers
  frames [k·stride, k·stride + 16). Frames are resized so that their shorter side is `short_side` (256, the
  original's data; MMAudio and av-benchmark resize to 224), as decoding resizes them, unless they already are
  the 224-px crop; then the test pipeline crops the centre 224 px, resizes to the model's input size and
  normalises in the stage's dtype. `chunk_size` segments go through the tower per compiled call.
  """
  require_segments(model, 'encode_video_sync')
  frames = np.asarray(frames)
  if frames.ndim != 5 or frames.shape[-1] != 3:
    raise InputError(f'encode_video_sync: expected frames (B, T, H, W, 3), got {frames.shape}')
  if short_side < transforms.CROP_SIZE:
    raise InputError(f'encode_video_sync: short_side {short_side} is smaller than the {transforms.CROP_SIZE}-px crop')
  b, t = frames.shape[:2]
  s = num_segments(t, SEGMENT_FRAMES, stride)
  if s == 0:
    raise InputError(f'encode_video_sync: {t} frames are fewer than one {SEGMENT_FRAMES}-frame segment')
  frames = _as_uint8(frames)
  if frames.shape[2:4] != (transforms.CROP_SIZE, transforms.CROP_SIZE):
    frames = resize_short_side(frames, short_side)
  tower, dtype = model.vfeat_extractor, model_stage(model).test_video_dtype
  first_frames = stride * np.arange(s)
  pairs = np.stack(np.meshgrid(np.arange(b), first_frames, indexing='ij'), axis=-1).reshape(-1, 2)

  def encode(chunk: np.ndarray) -> jax.Array:
    segments = frames[chunk[:, :1], chunk[:, 1:] + np.arange(SEGMENT_FRAMES)]  # (n, 16, H, W, 3)
    return jitted_call(_tower, tower, transforms.test_video_segments(segments, tower.cfg.crop, dtype))

  return in_chunks(encode, pairs, chunk_size).reshape(b, s, -1, tower.cfg.dim)


def waveform_segments(wav: np.ndarray, starts: np.ndarray) -> np.ndarray:
  """(..., N) samples → (..., len(starts), 10240) segments starting at `starts`."""
  return wav[..., starts[:, None] + np.arange(SEGMENT_SAMPLES)]


def encode_audio_sync(model: nnx.Module, wav_16k, *, stride: int = SYNC_SEGMENT_STRIDE_SAMPLES,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Audio segment features (B, S, 6, D) of 16 kHz mono waveforms (B, N).

  Segment k covers samples [k·stride, k·stride + 10240); each becomes the original's log-mel
  (`synchformer_jax.data.audio.audio_features`). `chunk_size` segments per compiled call.
  """
  require_segments(model, 'encode_audio_sync')
  wav = np.asarray(wav_16k, np.float32)
  if wav.ndim != 2:
    raise InputError(f'encode_audio_sync: expected waveforms (B, N), got {wav.shape}')
  b, n = wav.shape
  s = num_segments(n, SEGMENT_SAMPLES, stride)
  if s == 0:
    raise InputError(f'encode_audio_sync: {n} samples are fewer than one {SEGMENT_SAMPLES}-sample segment')
  segments = waveform_segments(wav, stride * np.arange(s)).reshape(b * s, SEGMENT_SAMPLES)
  return encode_audio_segments(model, segments, chunk_size).reshape(b, s, -1, model.cfg.audio.dim)


def encode_audio_segments(model: nnx.Module, segments: np.ndarray, chunk_size: int) -> jax.Array:
  """(M, 10240) waveform segments → (M, 6, D) audio features."""
  tower = model.afeat_extractor
  encode = lambda chunk: jitted_call(_tower, tower, np.swapaxes(audio_features(chunk), -1, -2))  # (n, 66, 128)
  return in_chunks(encode, segments, chunk_size)


def sync_logits(model: nnx.Module, vfeat, afeat, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Logits (B, classes) of windows of segment features (B, S, 8, D) and (B, S, 6, D), S = `n_segments`.

  `chunk_size` windows per compiled call.
  """
  require_segments(model, 'sync_logits')
  vfeat, afeat = np.asarray(vfeat), np.asarray(afeat)
  n = model.cfg.transformer.n_segments
  if vfeat.shape[:2] != afeat.shape[:2] or vfeat.shape[1] != n:
    raise InputError(f'sync_logits: expected {n} segments of each stream, got video {vfeat.shape} and '
                     f'audio {afeat.shape}')
  pairs = np.arange(len(vfeat))
  return in_chunks(lambda i: jitted_call(classify_features, model, vfeat[i], afeat[i]), pairs, chunk_size)


def aligned_features(model, video, audio, chunk_size: int, short_side: int) -> tuple[np.ndarray, np.ndarray]:
  """Both streams' segment features, cut to the segments both have; clips must hold one window."""
  vfeat = np.asarray(encode_video_sync(model, video, chunk_size=chunk_size, short_side=short_side))
  afeat = np.asarray(encode_audio_sync(model, audio, chunk_size=chunk_size))
  s = min(vfeat.shape[1], afeat.shape[1])
  n = model.cfg.transformer.n_segments
  if s < n:
    raise InputError(f'clips of {s} segments are shorter than one {window_seconds(n):.2f}-s window ({n} segments)')
  return vfeat[:, :s], afeat[:, :s]
