"""SparseSync's data pipeline (BMVC 2022; spec sparsesync.md §1): one 5-s clip per model input.

The original's ``configs/sparse_sync.yaml``. Test: EqualifyFromRight (10 s), a centre 224 crop, a 5-s
temporal crop at a fixed (offset, v_start) with the original's float64 truncation, RGB to [0, 1] and the
ImageNet normalisation, and a log power spectrogram standardised per frequency. Training adds a random
crop (sometimes a smaller one, upscaled), a random grid offset and start, an audio-only jitter of up to
±0.05 s, and the probability-controlled augmentations.

Built like the Synchformer pipeline and from its helpers (`transforms`, `audio`): :func:`plan_sparsesync_clip`
does the index maths on the clip's lengths alone, so that only the needed window is decoded, and
:func:`make_sparsesync_example` applies the plan to the decoded window. All training randomness comes from
the ``np.random.Generator`` passed in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from synchformer_jax.constants import AUDIO_RATE, VIDEO_FPS
from synchformer_jax.data.audio import LOG_EPS, augment_waveform, centred_power_stft, periodic_hann
from synchformer_jax.data.decode import DecodedClip, MediaFile, MediaInfo, MediaSource
from synchformer_jax.data.transforms import (AUDIO_WIGGLE_SEC, CROP_SIZE, OFFSET_CROP_SEC, _check_crop_fits,
                                             _crop_box, _fix_negative_start, _fixed_crop_start, _offset_targets,
                                             _random_crop_start, _wiggle, augment_frames, crop_and_resize,
                                             equalify_lengths)

CLIP_FRAMES = OFFSET_CROP_SEC * VIDEO_FPS  # 125
CLIP_SAMPLES = OFFSET_CROP_SEC * AUDIO_RATE  # 80,000
N_FFT = 512
HOP_LENGTH = 128
STD_EPS = 1e-6  # AudioStandardNormalize: added to the std
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
FREQ_MASK_BINS = 64  # AudioRandomFreqMask's freq_mask_param
TIME_MASK_FRAMES = 200  # AudioRandomTimeMask's time_mask_param


@dataclass(frozen=True)
class SparseSyncPipeline:
  """One variant of SparseSync's data pipeline: the offset grid, the frame size and the training augmentation.

  The grid is ``linspace(-max_off_sec, max_off_sec, num_offset_classes)``: 21 classes over ±2 s (the
  default), or the published 3-class models' [-1, 0, 1] (``max_off_sec=1.0, num_offset_classes=3``).
  ``output_size`` below 224 resizes the 224 crop for the reduced CPU models. The probabilities are the
  training augmentations': horizontal flip, colour jitter then grayscale, the smaller (192) random crop
  upscaled to 224, and the audio augmentations (waveform effects, then frequency and time masks).
  """

  max_off_sec: float = 2.0
  num_offset_classes: int = 21
  output_size: int = CROP_SIZE
  flip_p: float = 0.5
  color_jitter_p: float = 0.0
  grayscale_p: float = 0.0
  upscale_p: float = 0.0
  audio_aug_p: float = 0.0

  def __post_init__(self):
    if self.num_offset_classes < 3:
      raise ValueError(f'num_offset_classes: expected at least 3, got {self.num_offset_classes}')
    step = 2 * self.max_off_sec / (self.num_offset_classes - 1)
    if AUDIO_WIGGLE_SEC > step / 2:  # the original asserts the jitter cannot cross into a neighbouring class
      raise ValueError(f'the {AUDIO_WIGGLE_SEC}-s audio jitter exceeds half the {step:.3f}-s grid step')

  @property
  def offset_grid(self) -> np.ndarray:
    """The class grid, float32 as the original's (computed in float64, then cast)."""
    return np.linspace(-self.max_off_sec, self.max_off_sec, self.num_offset_classes).astype(np.float32)


# configs/sparse_sync.yaml: only the flip is on.
SPARSESYNC = SparseSyncPipeline()
# The original README's fine-tuning recipe: every augmentation probability 0.2 (as Synchformer's Stage I).
SPARSESYNC_FINETUNE = replace(SPARSESYNC, color_jitter_p=0.2, grayscale_p=0.2, upscale_p=0.2, audio_aug_p=0.2)


@dataclass(frozen=True)
class SparseSyncPlan:
  """Where a SparseSync input comes from in its clip. Indices are into the clip's decoded frames / samples."""

  v_start_frame: int
  audio_sample_start: int
  crop_top: int
  crop_left: int
  crop_size: int  # CROP_SIZE, or the smaller crop that is upscaled
  targets: dict[str, Any]

  @property
  def video_frame_index(self) -> np.ndarray:
    return np.arange(self.v_start_frame, self.v_start_frame + CLIP_FRAMES)

  @property
  def frame_window(self) -> tuple[int, int]:
    return self.v_start_frame, self.v_start_frame + CLIP_FRAMES

  @property
  def sample_window(self) -> tuple[int, int]:
    return self.audio_sample_start, self.audio_sample_start + CLIP_SAMPLES


def plan_sparsesync_clip(
  info: MediaInfo,
  pipeline: SparseSyncPipeline = SPARSESYNC,
  *,
  train: bool = False,
  rng: np.random.Generator | None = None,
  offset_sec: float | None = None,
  vstart_sec: float | None = None,
) -> SparseSyncPlan:
  """TemporalCropAndOffsetRandomFeasible and the spatial crop, from the clip's lengths (spec §1).

  With ``offset_sec`` (and ``vstart_sec``, default 0): the fixed-offset branch of valid/test,
  ``int(vstart * 25)`` and ``int((vstart + offset) * 16000)`` from the unsnapped vstart. Otherwise an offset
  from the grid and a start are drawn from ``rng``, the audio start from the snapped start, plus the
  ±0.05-s audio jitter when ``train``. ``train`` also makes the spatial crop random. Raises
  :class:`DecodeError` naming the clip when it is too short.
  """
  if train and rng is None:
    raise ValueError('training needs rng')
  v_len, a_len = equalify_lengths(info.n_frames, info.n_samples)
  top, left, size = _crop_box(info, rng if train else None, pipeline.upscale_p)
  if offset_sec is not None:
    offset, v_start, v_start_i_sec, a_start = _fixed_crop_start(offset_sec, vstart_sec)
  else:
    if rng is None:
      raise ValueError('a random offset needs rng (or pass offset_sec)')
    offset = round(float(rng.choice(pipeline.offset_grid)), 2)
    v_start, v_start_i_sec, a_start = _random_crop_start(rng, info.name, offset, v_len, CLIP_FRAMES)
    if train:  # before the negative-start fix, as the original: a start up to a frame before 0 jitters to >= 0
      a_start = _wiggle(rng, a_start, a_len, CLIP_SAMPLES)
  a_start = _fix_negative_start(info.name, a_start)
  _check_crop_fits(info.name, v_start, CLIP_FRAMES, v_len, a_start, CLIP_SAMPLES, a_len)
  targets = _offset_targets(offset, v_start_i_sec, pipeline.offset_grid)
  return SparseSyncPlan(v_start, a_start, top, left, size, targets)


# ---------------------------------------------------------------------------------------------------
# Video


def crop_frames(plan: SparseSyncPlan, clip: DecodedClip, output_size: int = CROP_SIZE) -> np.ndarray:
  """The plan's 125 frames, spatially cropped (and resized to ``output_size``): uint8 (125, s, s, 3)."""
  first = plan.v_start_frame - clip.first_frame
  frames = clip.frames[first : first + CLIP_FRAMES]
  return crop_and_resize(frames, plan.crop_top, plan.crop_left, plan.crop_size, output_size)


@functools.cache
def _imagenet_lut() -> np.ndarray:
  """(3, 256): each uint8 value of each channel normalised in the original's float32 order: divide by 255,
  subtract the mean, divide by the std (exactly the original's values)."""
  scaled = np.arange(256, dtype=np.float32) / np.float32(255)
  return (scaled - IMAGENET_MEAN[:, None]) / IMAGENET_STD[:, None]


def normalise_video(frames: np.ndarray) -> np.ndarray:
  """RGBToFloatToZeroOne then RGBNormalize (ImageNet) of uint8 (T, H, W, 3) frames -> float32 (T, 3, H, W).

  A table lookup per channel: the same values as the arithmetic, 8x faster.
  """
  channels_first = frames.transpose(0, 3, 1, 2)
  video = np.empty(channels_first.shape, np.float32)
  for c, table in enumerate(_imagenet_lut()):
    video[:, c] = table[channels_first[:, c]]
  return video


# ---------------------------------------------------------------------------------------------------
# Audio


def crop_audio(plan: SparseSyncPlan, clip: DecodedClip) -> np.ndarray:
  """The plan's 80,000 mono samples, float32."""
  first = plan.audio_sample_start - clip.first_sample
  return clip.audio[first : first + CLIP_SAMPLES]


@functools.cache
def _spectrogram_window() -> np.ndarray:
  """torch.hann_window(512), periodic, in float64 (the float32 window moves outputs by up to 1.7e-4)."""
  return periodic_hann(N_FFT)


def log_spectrogram(waveform: np.ndarray) -> np.ndarray:
  """AudioSpectrogram(n_fft=512, hop_length=128) then AudioLog: (..., N) -> (..., 257, 1 + N // 128), float64.

  torchaudio's ``Spectrogram`` defaults: periodic Hann of 512, centred with reflect padding, power 2.
  """
  power = centred_power_stft(waveform, _spectrogram_window(), HOP_LENGTH)
  return np.log(np.swapaxes(power, -1, -2) + LOG_EPS)


def standardise_per_frequency(log_spec: np.ndarray) -> np.ndarray:
  """AudioStandardNormalize: per clip and frequency bin, over time, ``(x - mean) / (unbiased std + 1e-6)``."""
  mean = log_spec.mean(axis=-1, keepdims=True)
  std = log_spec.std(axis=-1, ddof=1, keepdims=True)
  return (log_spec - mean) / (std + STD_EPS)


def model_audio(log_spec: np.ndarray) -> np.ndarray:
  """The model's audio input from log spectrograms (..., 257, T): standardised, float32, (..., 1, 257, T)."""
  return standardise_per_frequency(log_spec).astype(np.float32)[..., None, :, :]


def _mask_band(spec: np.ndarray, rng: np.random.Generator, max_width: int, axis: int) -> np.ndarray:
  """torchaudio ``mask_along_axis``: a band of width U[0, max_width) starting at U[0, n - width), truncated,
  set to 0 (here in the log domain, before standardisation)."""
  width = rng.random() * max_width
  start = int(rng.random() * (spec.shape[axis] - width))
  band = [slice(None)] * spec.ndim
  band[axis] = slice(start, start + int(width))
  masked = spec.copy()
  masked[tuple(band)] = 0.0
  return masked


def mask_spectrogram(log_spec: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
  """AudioRandomFreqMask(64) then AudioRandomTimeMask(200), each applied with probability ``p``."""
  for axis, max_width in ((-2, FREQ_MASK_BINS), (-1, TIME_MASK_FRAMES)):
    if rng.random() < p:
      log_spec = _mask_band(log_spec, rng, max_width, axis)
  return log_spec


# ---------------------------------------------------------------------------------------------------
# Examples


def make_sparsesync_example(
  plan: SparseSyncPlan,
  clip: DecodedClip,
  pipeline: SparseSyncPipeline = SPARSESYNC,
  rng: np.random.Generator | None = None,
) -> dict[str, Any]:
  """Apply a plan to a decoded clip that covers it: ``{'video', 'audio', **targets}``.

  video float32 (125, 3, s, s), audio float32 (1, 257, 626). With ``rng`` the pipeline's training
  augmentations are applied, in the original's order; without it this is the test pipeline.
  """
  frames = crop_frames(plan, clip, pipeline.output_size)
  waveform = crop_audio(plan, clip)
  if rng is not None:
    frames = augment_frames(frames, rng, pipeline)
    waveform = augment_waveform(waveform, rng, pipeline.audio_aug_p)
  log_spec = log_spectrogram(waveform)
  if rng is not None:
    log_spec = mask_spectrogram(log_spec, rng, pipeline.audio_aug_p)
  return {'video': normalise_video(frames), 'audio': model_audio(log_spec)} | plan.targets


def build_sparsesync_test_example(
  source: MediaSource,
  pipeline: SparseSyncPipeline = SPARSESYNC,
  *,
  offset_sec: float | None = None,
  vstart_sec: float | None = None,
  rng: np.random.Generator | None = None,
  original_decoder: bool = False,
  name: str | None = None,
) -> dict[str, Any]:
  """A test-time input from a path or encoded bytes, decoding only the frames and samples it uses.

  At ``offset_sec`` (and ``vstart_sec``, default 0): the fixed-offset evaluation; without it the offset and
  start are drawn from ``rng`` (random-offset evaluation, no jitter, centre crop).
  """
  media = MediaFile(source, original_decoder=original_decoder, name=name)
  plan = plan_sparsesync_clip(media.info, pipeline, rng=rng, offset_sec=offset_sec, vstart_sec=vstart_sec)
  return make_sparsesync_example(plan, media.read(plan.frame_window, plan.sample_window), pipeline)


def build_sparsesync_train_example(
  source: MediaSource,
  rng: np.random.Generator,
  pipeline: SparseSyncPipeline = SPARSESYNC,
  *,
  original_decoder: bool = False,
  name: str | None = None,
) -> dict[str, Any]:
  """A training input with the pipeline's random crops, offset, jitter and augmentations, all drawn from ``rng``."""
  media = MediaFile(source, original_decoder=original_decoder, name=name)
  plan = plan_sparsesync_clip(media.info, pipeline, train=True, rng=rng)
  return make_sparsesync_example(plan, media.read(plan.frame_window, plan.sample_window), pipeline, rng)


# ---------------------------------------------------------------------------------------------------
# Per-record steps for `loader` (the same records as Synchformer's: mp4 bytes, fixed offsets or NaN, id)


def _record_name(record: Mapping[str, Any]) -> str:
  clip_id = record['id']
  return clip_id.decode() if isinstance(clip_id, bytes) else str(clip_id)


@dataclass(frozen=True)
class SparseSyncTrainExample:
  """Training's per-record step (a `loader.ExampleFn`): decode the window a random crop needs, then transform."""

  pipeline: SparseSyncPipeline = SPARSESYNC
  original_decoder: bool = False

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return build_sparsesync_train_example(
      record['video'], rng, self.pipeline, original_decoder=self.original_decoder, name=_record_name(record)
    )


@dataclass(frozen=True)
class SparseSyncEvalExample:
  """Evaluation's per-record step: the test pipeline at the record's fixed offset when it has one and
  `fixed_offsets` is on, else at an offset and start drawn from the record's RNG."""

  pipeline: SparseSyncPipeline = SPARSESYNC
  fixed_offsets: bool = True
  original_decoder: bool = False

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    offset_sec, vstart_sec = float(record['offset_sec']), float(record['vstart_sec'])
    if self.fixed_offsets and not math.isnan(offset_sec):
      window = {'offset_sec': offset_sec, 'vstart_sec': vstart_sec}
    else:
      window = {'rng': rng}
    return build_sparsesync_test_example(
      record['video'], self.pipeline, original_decoder=self.original_decoder, name=_record_name(record), **window
    )
