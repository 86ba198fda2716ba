"""Synchformer's data transforms: the exact test-time pipeline and the training augmentations.

A model input is built in two steps, so that only the needed window of a clip is decoded:

1. :func:`plan_clip` does all index maths on the clip's lengths alone: EqualifyFromRight, the spatial
   crop, the temporal crop and offset (Stage II/III), and GenerateMultipleSegments. It returns a
   :class:`ClipPlan`: which decoded frame feeds each segment frame, where each audio segment starts,
   the crop box and the targets. The arithmetic is the original's, in float64 with truncation (spec
   §2.0), including its pitfalls (e.g. ``int(4.6 * 25) == 114``, and the fixed-offset audio start
   computed from the CSV ``vstart`` rather than the truncated frame).
2. :func:`make_example` applies the plan to a :class:`~synchformer_jax.data.decode.DecodedClip` that
   covers it: crop, augment (training), RGB scaling and normalisation (in float16 where the original
   does it in float16), log-mel, and the stage's layout.

:func:`build_test_example` and :func:`build_train_example` do both for a file or encoded bytes.

Training randomness comes only from the ``np.random.Generator`` passed in (one per record). The
original draws from Python's ``random`` and torch; the distributions are the same, the streams are not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from synchformer_jax.constants import (AUDIO_RATE, MAX_OFFSET_SEC, OFFSET_GRID, OFFSET_TYPES, SAMPLES_PER_FRAME,
                                       SEGMENT_FRAMES, SEGMENT_SAMPLES, SYNC_SEGMENT_STRIDE_FRAMES, TARGET_KEY,
                                       VIDEO_FPS)
from synchformer_jax.data.audio import audio_features, augment_waveform
from synchformer_jax.data.decode import DecodedClip, DecodeError, MediaFile, MediaInfo, MediaSource

CLIP_MAX_SEC = 10  # EqualifyFromRight
CROP_SIZE = 224
UPSCALE_FROM_SIZE = 192  # RGBSpatialCropSometimesUpscale's smaller crop
OFFSET_CROP_SEC = 5  # TemporalCropAndOffset
IN_SYNC_RANGE_SEC = (-0.125, 0.045)  # ITU-T BT.1359 detectability window, for `uniform_binary`
AUDIO_WIGGLE_SEC = 0.05
RGB_MEAN = RGB_STD = 0.5  # MotionFormer's normalisation, to [-1, 1]


@dataclass(frozen=True)
class Stage:
  """One stage's data pipeline (spec §2.11): segmentation, temporal crop, layouts and training augmentation."""

  name: str
  n_segments: int
  step_seg: float  # segment stride, in segments (0.5 = 50 % overlap)
  temporal_crop: str  # 'none': segments over the whole clip; 'offset': §2.3; 'syncability': §2.4
  video_layout: str  # 'SCTHW' or 'STCHW' (each segment: T = 16 frames, C = 3)
  audio_layout: str  # 'STF' or 'S1FT' (F = 128 mel bands, T = 66 frames)
  test_video_dtype: type  # RGBToFloatToZeroOne (float32) or RGBToHalfToZeroOne (float16); train is float16
  upscale_p: float  # RGBSpatialCropSometimesUpscale
  color_jitter_p: float
  grayscale_p: float
  flip_p: float
  audio_aug_p: float
  augment_per_segment: bool  # Stage I draws colour/flip/audio augmentations per segment, II/III per clip
  segment_audio_jitter_sec: float  # Stage I: one random shift of all audio segments (train)
  # Frame size given to the model: the 224-px crop, resized down for the reduced model sizes.
  output_size: int = CROP_SIZE


STAGE_I = Stage(
  name='avclip',
  n_segments=14,
  step_seg=1.0,
  temporal_crop='none',
  video_layout='SCTHW',
  audio_layout='STF',
  test_video_dtype=np.float32,
  upscale_p=0.2,
  color_jitter_p=0.2,
  grayscale_p=0.2,
  flip_p=0.5,
  audio_aug_p=0.2,
  augment_per_segment=True,
  segment_audio_jitter_sec=0.05,
)
STAGE_II = Stage(
  name='sync',
  n_segments=14,
  step_seg=SYNC_SEGMENT_STRIDE_FRAMES / SEGMENT_FRAMES,
  temporal_crop='offset',
  video_layout='STCHW',
  audio_layout='S1FT',
  test_video_dtype=np.float16,
  upscale_p=0.0,
  color_jitter_p=0.0,
  grayscale_p=0.0,
  flip_p=0.5,
  audio_aug_p=0.0,
  augment_per_segment=False,
  segment_audio_jitter_sec=0.0,
)
# Stage II's pipeline with 13 segments and the synchronizability temporal crop (§2.4).
STAGE_III = replace(STAGE_II, name='synchability', n_segments=13, temporal_crop='syncability')


@dataclass(frozen=True)
class ClipPlan:
  """Where a model input comes from in its clip. Indices are into the clip's decoded frames / samples."""

  video_frame_index: np.ndarray  # (S, 16) int64
  audio_sample_start: np.ndarray  # (S,) int64; each audio segment is SEGMENT_SAMPLES long
  crop_top: int
  crop_left: int
  crop_size: int  # CROP_SIZE, or UPSCALE_FROM_SIZE for a crop that is resized up to CROP_SIZE
  targets: dict[str, Any] = field(default_factory=dict)

  @property
  def frame_window(self) -> tuple[int, int]:
    return int(self.video_frame_index.min()), int(self.video_frame_index.max()) + 1

  @property
  def sample_window(self) -> tuple[int, int]:
    return int(self.audio_sample_start.min()), int(self.audio_sample_start.max()) + SEGMENT_SAMPLES


# ---------------------------------------------------------------------------------------------------
# Index maths (float64 with truncation, as the original's Python does)


def equalify_lengths(n_frames: int, n_samples: int, max_sec: float = CLIP_MAX_SEC) -> tuple[int, int]:
  """EqualifyFromRight: frames and samples kept from the start so both streams last the same time."""
  min_len = min(max_sec, n_samples / AUDIO_RATE, n_frames / VIDEO_FPS)
  v_len = int(VIDEO_FPS * min_len)
  return v_len, SAMPLES_PER_FRAME * v_len


def quantise_offset(offset_sec: float, grid: np.ndarray = OFFSET_GRID) -> tuple[np.float32, int]:
  """Nearest class of a float32 grid, argmin in float32 as the original: (grid value, class index)."""
  index = int(np.argmin(np.abs(grid - np.float32(offset_sec))))
  return grid[index], index


def center_crop_box(height: int, width: int, size: int = CROP_SIZE) -> tuple[int, int]:
  """RGBSpatialCrop centre: Python's round (half to even) of the margins, e.g. 115.5 -> 116, 58.5 -> 58."""
  return round((height - size) / 2), round((width - size) / 2)


def _random_crop_box(rng: np.random.Generator, height: int, width: int, upscale_p: float) -> tuple[int, int, int]:
  """RGBSpatialCropSometimesUpscale, random: a 192 crop (later resized to 224) with prob. p, else 224."""
  size = UPSCALE_FROM_SIZE if rng.random() < upscale_p else CROP_SIZE
  return int(rng.integers(0, height - size, endpoint=True)), int(rng.integers(0, width - size, endpoint=True)), size


def _crop_box(info: MediaInfo, rng: np.random.Generator | None, upscale_p: float) -> tuple[int, int, int]:
  """(top, left, size) of the spatial crop: random with ``rng`` (training), else the centre 224 crop."""
  if rng is not None:
    return _random_crop_box(rng, info.height, info.width, upscale_p)
  return (*center_crop_box(info.height, info.width), CROP_SIZE)


def _draw_offset(rng: np.random.Generator, offset_type: str, prob_oos: float | None) -> tuple[float, dict]:
  """TemporalCropAndOffset's offset draw (Branch A). Returns the rounded offset and its type's targets."""
  if offset_type == 'grid':
    return round(float(rng.choice(OFFSET_GRID)), 2), {}
  if offset_type == 'uniform':
    offset = round(float(rng.uniform(-MAX_OFFSET_SEC, MAX_OFFSET_SEC)), 2)
    return offset, {TARGET_KEY['sync']: np.float32(offset)}
  if offset_type == 'uniform_binary':
    if prob_oos is None:
      raise ValueError("offset_type 'uniform_binary' needs prob_oos")
    lo, hi = IN_SYNC_RANGE_SEC
    is_oos = bool(rng.random() < prob_oos)
    if is_oos:
      offset = rng.uniform(-MAX_OFFSET_SEC, MAX_OFFSET_SEC)
      while lo <= offset <= hi:
        offset = rng.uniform(-MAX_OFFSET_SEC, MAX_OFFSET_SEC)
    else:
      offset = rng.uniform(lo, hi)
    offset = round(float(offset), 2)
    return offset, {TARGET_KEY['sync']: np.float32(offset), 'oos_target': np.int64(is_oos)}
  raise ValueError(f'offset_type must be one of {OFFSET_TYPES}, got {offset_type!r}')


def _segment_span(n_segments: int, step_seg: float) -> float:
  """Length covered by n segments at the given stride, in segments: n * step + (1 - step)."""
  return n_segments * step_seg + (1 - step_seg)


def _offset_targets(offset_sec: float, v_start_i_sec: float, grid: np.ndarray = OFFSET_GRID) -> dict[str, Any]:
  label, index = quantise_offset(offset_sec, grid)
  return {
    'offset_sec': np.float32(offset_sec),
    'v_start_i_sec': np.float32(v_start_i_sec),
    'offset_label': label,
    TARGET_KEY['sync']: np.int64(index),
  }


def _random_crop_start(
  rng: np.random.Generator, name: str, offset: float, v_len: int, crop_frames: int
) -> tuple[int, float, int]:
  """Branch A: a random video start keeping the offset audio window inside the clip, snapped to a frame."""
  v_start_max = (v_len - crop_frames) / VIDEO_FPS
  lo, hi = max(0.0, -offset), min(v_start_max, v_start_max - offset)
  if lo > hi:
    raise DecodeError(
      f'{name}: too short for a {crop_frames / VIDEO_FPS:.2f}-s crop at offset {offset:+.2f} s '
      f'({v_len / VIDEO_FPS:.2f} s usable)'
    )
  v_start_i = int(rng.uniform(lo, hi) * VIDEO_FPS)
  v_start_i_sec = v_start_i / VIDEO_FPS
  return v_start_i, v_start_i_sec, int((v_start_i_sec + offset) * AUDIO_RATE)


def _fixed_crop_start(offset_sec: float, vstart_sec: float | None) -> tuple[float, int, float, int]:
  """The fixed-offset branch: (rounded offset, video start frame, v_start_i_sec, audio start sample).

  float64 truncation, and the audio start from the unsnapped ``vstart_sec`` (default 0), as the original.
  """
  offset = round(float(offset_sec), 2)
  v_start_i_sec = 0.0 if vstart_sec is None else float(vstart_sec)
  return offset, int(v_start_i_sec * VIDEO_FPS), v_start_i_sec, int((v_start_i_sec + offset) * AUDIO_RATE)


def _check_crop_fits(name: str, v_start: int, crop_frames: int, v_len: int, a_start: int, crop_samples: int,
                     a_len: int) -> None:
  """DecodeError naming the clip when the crop's frames or samples run past the equalified lengths."""
  if v_start + crop_frames > v_len or a_start + crop_samples > a_len:
    raise DecodeError(
      f'{name}: too short: the crop needs frames [{v_start}, {v_start + crop_frames}) and samples '
      f'[{a_start}, {a_start + crop_samples}) of the first {v_len / VIDEO_FPS:.2f} s'
    )


def _fix_negative_start(name: str, a_start: int) -> int:
  """The original tolerates an audio start up to one video frame before 0 (and clamps it)."""
  if a_start >= 0:
    return a_start
  if -a_start <= SAMPLES_PER_FRAME:
    return 0
  raise DecodeError(f'{name}: the offset audio window starts {-a_start / AUDIO_RATE:.3f} s before the clip')


def _wiggle(rng: np.random.Generator, a_start: int, a_len: int, crop_samples: int) -> int:
  """Audio jitter: shift the audio crop by up to 0.05 s, within the clip; the label is unchanged."""
  limit = int(AUDIO_WIGGLE_SEC * AUDIO_RATE)
  left, right = min(a_start, limit), min(a_len - crop_samples - a_start, limit)
  return a_start + int(rng.integers(-left, right, endpoint=True))


def _temporal_crop(
  info: MediaInfo,
  stage: Stage,
  v_len: int,
  a_len: int,
  *,
  train: bool,
  rng: np.random.Generator | None,
  offset_sec: float | None,
  vstart_sec: float | None,
  offset_type: str,
  prob_oos: float | None,
) -> tuple[int, int, int, int, dict[str, Any]]:
  """(video start, audio start, crop frames, crop samples, targets) of the stage's temporal crop."""
  if stage.temporal_crop == 'none':
    if offset_sec is not None:
      raise ValueError(f'stage {stage.name} has no offset crop; offset_sec must be None')
    return 0, 0, v_len, a_len, {}
  if stage.temporal_crop == 'offset':
    crop_sec = OFFSET_CROP_SEC
  elif stage.temporal_crop == 'syncability':
    crop_sec = round(_segment_span(stage.n_segments, stage.step_seg) * SEGMENT_FRAMES / VIDEO_FPS, 2)
  else:
    raise ValueError(f'unknown temporal_crop {stage.temporal_crop!r}')
  crop_frames, crop_samples = int(crop_sec * VIDEO_FPS), int(crop_sec * AUDIO_RATE)
  extra: dict[str, Any] = {}
  if offset_sec is not None:  # Branch B: fixed offset (CSV / example.py); audio start from the CSV vstart
    if stage.temporal_crop == 'syncability':
      raise ValueError("the synchronizability crop has no fixed-offset branch (the original's would fail)")
    offset, v_start_i, v_start_i_sec, a_start = _fixed_crop_start(offset_sec, vstart_sec)
  else:
    if rng is None:
      raise ValueError('a random offset needs rng (or pass offset_sec)')
    if stage.temporal_crop == 'syncability':
      syncable = bool(rng.random() < 0.5)
      offset = round(float(rng.choice(OFFSET_GRID)), 2) if syncable else float(rng.choice([-crop_sec, crop_sec]))
      extra = {TARGET_KEY['synchability']: np.int64(syncable)}
    else:
      offset, extra = _draw_offset(rng, offset_type, prob_oos)
    v_start_i, v_start_i_sec, a_start = _random_crop_start(rng, info.name, offset, v_len, crop_frames)
  a_start = _fix_negative_start(info.name, a_start)
  if train:
    a_start = _wiggle(rng, a_start, a_len, crop_samples)
  _check_crop_fits(info.name, v_start_i, crop_frames, v_len, a_start, crop_samples, a_len)
  return v_start_i, a_start, crop_frames, crop_samples, _offset_targets(offset, v_start_i_sec) | extra


def segment_starts(
  n_frames: int, n_samples: int, n_segments: int, step_seg: float, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """GenerateMultipleSegments: (S, 16) frame indices and (S,) audio starts within a crop.

  Centred when ``rng`` is None (test), else a random start (train), the same for both streams.
  """
  stride_v, stride_a = int(step_seg * SEGMENT_FRAMES), int(step_seg * SEGMENT_SAMPLES)
  n_max = min((n_frames - SEGMENT_FRAMES) // stride_v + 1, (n_samples - SEGMENT_SAMPLES) // stride_a + 1)
  if n_segments > n_max:
    raise ValueError(f'{n_segments} segments do not fit in {n_frames} frames / {n_samples} samples')
  max_v0 = n_frames - int(_segment_span(n_segments, step_seg) * SEGMENT_FRAMES)
  v0 = max_v0 // 2 if rng is None else int(rng.integers(0, max_v0, endpoint=True))
  a0 = int((v0 / VIDEO_FPS) * AUDIO_RATE)
  k = np.arange(n_segments, dtype=np.int64)
  video = v0 + stride_v * k[:, None] + np.arange(SEGMENT_FRAMES, dtype=np.int64)
  return video, a0 + stride_a * k


def plan_clip(
  info: MediaInfo,
  stage: Stage = STAGE_II,
  *,
  train: bool = False,
  rng: np.random.Generator | None = None,
  offset_sec: float | None = None,
  vstart_sec: float | None = None,
  offset_type: str = 'grid',
  prob_oos: float | None = None,
) -> ClipPlan:
  """Plan one model input from the clip's lengths (spec §1.5, §2.1-2.5).

  ``offset_sec`` (with ``vstart_sec``, default 0) selects the fixed-offset branch (Stage II), as the
  fixed-offset evaluation and ``example.py`` do; otherwise offsets and crop starts are drawn from ``rng``
  (training, or the random-offset evaluation passes with ``train=False``). ``train`` adds the random
  spatial crop, the audio jitter and the random segment start. Raises :class:`DecodeError` naming the
  clip when it is too short.

  Targets (Stage II/III): ``offset_sec`` (rounded to 0.01), ``v_start_i_sec``, ``offset_label`` (nearest
  grid value) and ``offset_target`` (its class index; the offset itself for the ``uniform`` and
  ``uniform_binary`` offset types), plus ``oos_target`` (``uniform_binary``) or ``sync_target`` (Stage III).
  """
  if train and rng is None:
    raise ValueError('training needs rng')
  v_len, a_len = equalify_lengths(info.n_frames, info.n_samples)
  top, left, size = _crop_box(info, rng if train else None, stage.upscale_p)
  v_start, a_start, crop_frames, crop_samples, targets = _temporal_crop(
    info, stage, v_len, a_len, train=train, rng=rng, offset_sec=offset_sec, vstart_sec=vstart_sec,
    offset_type=offset_type, prob_oos=prob_oos,
  )  # fmt: skip
  try:
    video, audio = segment_starts(crop_frames, crop_samples, stage.n_segments, stage.step_seg, rng if train else None)
  except ValueError as e:
    raise DecodeError(f'{info.name}: too short: {e}') from e
  audio = audio + a_start
  if train and stage.segment_audio_jitter_sec:
    span = int(_segment_span(stage.n_segments, stage.step_seg) * SEGMENT_SAMPLES)
    limit = min(int(stage.segment_audio_jitter_sec * AUDIO_RATE), int(audio[0]), a_len - int(audio[0]) - span)
    audio = audio + int(rng.integers(-limit, limit, endpoint=True))
  return ClipPlan(video + v_start, audio, top, left, size, targets)


# ---------------------------------------------------------------------------------------------------
# Video: crop, augmentation (torchvision semantics on uint8), scaling and normalisation


def _resize_axis_bilinear(x: np.ndarray, size: int, axis: int) -> np.ndarray:
  """Bilinear, align_corners=False, no antialias (torch ``interpolate``), along one axis, float32."""
  n_in = x.shape[axis]
  src = np.maximum((np.arange(size) + 0.5) * (n_in / size) - 0.5, 0.0)
  i0 = np.floor(src).astype(np.int64)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w1 = (src - i0).astype(np.float32)
  shape = [1] * x.ndim
  shape[axis] = size
  w1 = w1.reshape(shape)
  return np.take(x, i0, axis=axis) * (1 - w1) + np.take(x, i1, axis=axis) * w1


def resize_bilinear(frames: np.ndarray, size: int) -> np.ndarray:
  """torchvision ``Resize(size, antialias=None)`` of square uint8 frames (..., h, h, 3), rounded back to uint8."""
  x = frames.astype(np.float32)
  x = _resize_axis_bilinear(_resize_axis_bilinear(x, size, -3), size, -2)
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _grayscale_u8(frames: np.ndarray) -> np.ndarray:
  """torchvision ``rgb_to_grayscale`` on uint8: ITU-R 601 weights, truncated back to uint8. (..., H, W)."""
  r, g, b = (frames[..., c].astype(np.float32) for c in range(3))
  return (0.2989 * r + 0.587 * g + 0.114 * b).astype(np.uint8)


def _blend(img: np.ndarray, other: np.ndarray | float, ratio: float) -> np.ndarray:
  """torchvision ``_blend`` on uint8: clamp to [0, 255], truncate."""
  return np.clip(ratio * img.astype(np.float32) + (1.0 - ratio) * other, 0, 255).astype(np.uint8)


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  """torchvision ``_rgb2hsv`` on floats in [0, 1], channels last."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  maxc, minc = rgb.max(axis=-1), rgb.min(axis=-1)
  eqc = maxc == minc
  cr = maxc - minc
  s = cr / np.where(eqc, 1.0, maxc)
  cr_divisor = np.where(eqc, 1.0, cr)
  rc, gc, bc = ((maxc - c) / cr_divisor for c in (r, g, b))
  hr = (maxc == r) * (bc - gc)
  hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
  hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
  h = np.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
  return np.stack([h, s, maxc], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """torchvision ``_hsv2rgb``, channels last."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  i = np.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(np.int64) % 6
  p = np.clip(v * (1.0 - s), 0.0, 1.0)
  q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  table = np.stack(
    [np.stack(c, axis=-1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], axis=-2
  )  # (..., 6 sectors, 3)
  return np.take_along_axis(table, i[..., None, None], axis=-2)[..., 0, :]


def _adjust(frames: np.ndarray, op: int, factor: float) -> np.ndarray:
  """torchvision's brightness (0), contrast (1), saturation (2) and hue (3) adjustments on uint8 frames."""
  if op == 0:
    return _blend(frames, 0.0, factor)
  if op == 1:  # blend with the mean grey level of each frame
    mean = _grayscale_u8(frames).astype(np.float32).mean(axis=(-2, -1))[..., None, None, None]
    return _blend(frames, mean, factor)
  if op == 2:
    return _blend(frames, _grayscale_u8(frames)[..., None].astype(np.float32), factor)
  hsv = _rgb_to_hsv(frames.astype(np.float32) / 255.0)
  hsv[..., 0] = np.mod(hsv[..., 0] + factor, 1.0)
  return (_hsv_to_rgb(hsv) * (256 - 1e-3)).astype(np.uint8)  # convert_image_dtype(float -> uint8)


def color_jitter(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """ColorJitter(0.8, 0.8, 0.8, 0.2): brightness/contrast/saturation factors U[0.2, 1.8], hue U[-0.2, 0.2],
  in random order; one draw for all the frames given."""
  order = rng.permutation(4)
  factors = [*rng.uniform(0.2, 1.8, size=3), rng.uniform(-0.2, 0.2)]
  for op in order:
    frames = _adjust(frames, int(op), float(factors[op]))
  return frames


class FrameAugmentation(Protocol):
  """The probabilities `augment_frames` reads: a Synchformer `Stage`, or SparseSync's pipeline."""

  color_jitter_p: float
  grayscale_p: float
  flip_p: float


def augment_frames(frames: np.ndarray, rng: np.random.Generator, stage: FrameAugmentation) -> np.ndarray:
  """RandomApplyColorDistortion (jitter, then grayscale) and RandomHorizontalFlip, one draw for all frames."""
  if rng.random() < stage.color_jitter_p:
    frames = color_jitter(frames, rng)
  if rng.random() < stage.grayscale_p:
    frames = np.repeat(_grayscale_u8(frames)[..., None], 3, axis=-1)
  if rng.random() < stage.flip_p:
    frames = frames[..., ::-1, :]
  return frames


@functools.cache
def _rgb_pair_lut(dtype: type) -> np.ndarray:
  """Normalised values of every pair of adjacent uint8 pixels, packed into one wide integer.

  The value of one pixel is the original's arithmetic in ``dtype``, (x / 255 - 0.5) / 0.5: each float16
  op rounds as torch's half ops do (computed in float32, rounded), so the table reproduces the original's
  float16 tensor exactly. Looking up pairs halves the number of gathers, the cost of this step.
  """
  x = np.arange(256).astype(dtype) / dtype(255)
  lut = ((x - dtype(RGB_MEAN)) / dtype(RGB_STD)).astype(dtype)
  pairs = np.arange(2**16, dtype=np.uint16).view(np.uint8).reshape(-1, 2)  # the bytes of each uint16, in memory order
  return lut[pairs].view(f'u{2 * lut.itemsize}')[:, 0]


def normalise_rgb(frames: np.ndarray, dtype: type) -> np.ndarray:
  """RGBToHalfToZeroOne / RGBToFloatToZeroOne then RGBNormalize(0.5, 0.5) of uint8 frames with an even last axis."""
  pairs = np.ascontiguousarray(frames).view(np.uint16)
  return _rgb_pair_lut(dtype)[pairs].view(dtype)


_VIDEO_AXES = {'SCTHW': (0, 4, 1, 2, 3), 'STCHW': (0, 1, 4, 2, 3)}  # from (S, T, H, W, C)


def crop_and_resize(frames: np.ndarray, top: int, left: int, size: int, output_size: int) -> np.ndarray:
  """The square crop of uint8 frames (..., H, W, 3) at (top, left), resized to `output_size` (RGBSpatialCrop,
  then the Resize of the reduced model sizes or of RGBSpatialCropSometimesUpscale)."""
  frames = frames[..., top : top + size, left : left + size, :]
  return frames if size == output_size else resize_bilinear(frames, output_size)


def test_video_segments(segments: np.ndarray, output_size: int, dtype: type) -> np.ndarray:
  """The test pipeline on decoded segments: uint8 (N, 16, H, W, 3) → the Motionformer's (N, 3, 16, s, s).

  The centre 224-px crop, resized to `output_size`, scaled and normalised in `dtype`: what `make_example`
  does to the frames of a clip without augmentation.
  """
  top, left = center_crop_box(*segments.shape[-3:-1])
  frames = crop_and_resize(segments, top, left, CROP_SIZE, output_size)
  return normalise_rgb(frames.transpose(_VIDEO_AXES['SCTHW']), dtype)


def _video_input(plan: ClipPlan, clip: DecodedClip, stage: Stage, rng: np.random.Generator | None) -> np.ndarray:
  frames = crop_and_resize(clip.frames, plan.crop_top, plan.crop_left, plan.crop_size, stage.output_size)
  if rng is not None and not stage.augment_per_segment:
    frames = augment_frames(frames, rng, stage)
  frames = frames[plan.video_frame_index - clip.first_frame]  # (S, T, H, W, C)
  if rng is not None and stage.augment_per_segment:
    frames = np.stack([augment_frames(segment, rng, stage) for segment in frames])
  dtype = np.float16 if rng is not None else stage.test_video_dtype
  return normalise_rgb(frames.transpose(_VIDEO_AXES[stage.video_layout]), dtype)


def _audio_input(plan: ClipPlan, clip: DecodedClip, stage: Stage, rng: np.random.Generator | None) -> np.ndarray:
  audio = clip.audio
  if rng is not None and not stage.augment_per_segment:
    audio = augment_waveform(audio, rng, stage.audio_aug_p)
  segments = audio[(plan.audio_sample_start - clip.first_sample)[:, None] + np.arange(SEGMENT_SAMPLES)]
  if rng is not None and stage.augment_per_segment:
    segments = np.stack([augment_waveform(segment, rng, stage.audio_aug_p) for segment in segments])
  features = audio_features(segments)  # (S, F, T)
  if stage.audio_layout == 'STF':
    return np.ascontiguousarray(features.transpose(0, 2, 1))
  return features[:, None]


def make_example(
  plan: ClipPlan, clip: DecodedClip, stage: Stage = STAGE_II, rng: np.random.Generator | None = None
) -> dict[str, Any]:
  """Apply a plan to a decoded clip that covers it: ``{'video', 'audio', **targets}``.

  With ``rng`` the stage's training augmentations are applied (and video is float16, as in every
  training pipeline); without it this is the test pipeline.
  """
  return {'video': _video_input(plan, clip, stage, rng), 'audio': _audio_input(plan, clip, stage, rng)} | plan.targets


def build_test_example(
  source: MediaSource,
  stage: Stage = STAGE_II,
  *,
  offset_sec: float | None = None,
  vstart_sec: float | None = None,
  rng: np.random.Generator | None = None,
  original_decoder: bool = False,
  name: str | None = None,
) -> dict[str, Any]:
  """A test-time model input from a path or encoded bytes, decoding only the frames and samples it uses.

  Stage II with ``offset_sec`` (and ``vstart_sec``, default 0) is ``example.py`` / the fixed-offset
  evaluation; without it the offset and crop start are drawn from ``rng`` (random-offset evaluation).
  """
  media = MediaFile(source, original_decoder=original_decoder, name=name)
  plan = plan_clip(media.info, stage, rng=rng, offset_sec=offset_sec, vstart_sec=vstart_sec)
  return make_example(plan, media.read(plan.frame_window, plan.sample_window), stage)


def build_train_example(
  source: MediaSource,
  rng: np.random.Generator,
  stage: Stage = STAGE_II,
  *,
  offset_type: str = 'grid',
  prob_oos: float | None = None,
  original_decoder: bool = False,
  name: str | None = None,
) -> dict[str, Any]:
  """A training model input with the stage's random crops, offsets and augmentations, all drawn from ``rng``."""
  media = MediaFile(source, original_decoder=original_decoder, name=name)
  plan = plan_clip(media.info, stage, train=True, rng=rng, offset_type=offset_type, prob_oos=prob_oos)
  return make_example(plan, media.read(plan.frame_window, plan.sample_window), stage, rng)
