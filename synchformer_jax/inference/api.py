"""Synchformer as a library: segment features, offset logits, DeSync, synchronizability, file predictions.

Arrays in, arrays out (batched, jitted, `chunk_size` items per compiled call):

  encode_video_sync(model, frames)    25 fps frames (B, T, H, W, 3) → visual segment features (B, S, 8, D)
  encode_audio_sync(model, wav_16k)   16 kHz mono waveforms (B, N) → audio segment features (B, S, 6, D)
  sync_logits(model, vfeat, afeat)    one window of `n_segments` segments → logits (B, classes)
  desync(model, video, audio)         av-benchmark's DeSync of each clip
  p_in_sync(model, video, audio)      a synchronizability model's p(synchronizable)

Segments are 16 frames (0.64 s) at a stride of 8 frames (10,240 samples at a stride of 5,120), Stage II's
segmentation: MMAudio conditions its generator on `encode_video_sync` features and av-benchmark's DeSync is
`desync`. A model loaded with `synchformer_jax.load(DIR, dtype='bfloat16')` computes in bfloat16.

Files (any container, frame rate, size, sample rate or channel count; the decoder converts):

  predict_offsets(model, path)   one window, built exactly as the original's example.py builds it
  offset_curve(model, path)      sliding windows over the whole file: the offset over time
  search_offset(model, path)     offsets beyond ±2 s, by scanning coarse shifts of the audio

Offsets follow the original's sign: positive means the audio is early (the audio window starts that much
later in the file than the video window). An artificial `offset_sec` starts the audio that much later.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from synchformer_jax.data import transforms
from synchformer_jax.data.audio import audio_features
from synchformer_jax.data.decode import AUDIO_RATE, SHORT_SIDE, VIDEO_FPS, DecodeError, MediaFile, MediaSource
from synchformer_jax.data.transforms import CROP_SIZE, OFFSET_GRID, SEGMENT_FRAMES, SEGMENT_SAMPLES

SEGMENT_STRIDE_FRAMES = int(transforms.STAGE_II.step_seg * SEGMENT_FRAMES)  # 8
SEGMENT_STRIDE_SAMPLES = int(transforms.STAGE_II.step_seg * SEGMENT_SAMPLES)  # 5,120
SEGMENT_STRIDE_SEC = SEGMENT_STRIDE_FRAMES / VIDEO_FPS  # 0.32
DEFAULT_CHUNK_SIZE = 32
# Candidate shifts of the offset search must be close enough that every offset is within the grid's ±2 s
# of one of them.
MAX_SEARCH_STEP_SEC = 2 * transforms.MAX_OFFSET_SEC


def model_stage(model: nnx.Module) -> transforms.Stage:
  """The test pipeline a model takes: Stage II or III, at the model's frame size."""
  stage = transforms.STAGE_III if model.cfg.kind == 'synchability' else transforms.STAGE_II
  return dataclasses.replace(stage, output_size=model.cfg.video.crop)


def _require_kind(model: nnx.Module, kind: str, what: str) -> None:
  found = getattr(getattr(model, 'cfg', None), 'kind', type(model).__name__)
  if found != kind:
    raise ValueError(f'{what} needs a {kind!r} model, got {found!r}')


# ---------------------------------------------------------------------------------------------------
# Compiled calls


@functools.cache
def _compiled(graphdef: nnx.GraphDef, method: Callable) -> Callable:
  """`method(module, *arrays)` jitted for one module structure; the module's state is an argument."""
  return jax.jit(lambda state, *arrays: method(nnx.merge(graphdef, state), *arrays))


def jitted_call(method: Callable, module: nnx.Module, *arrays):
  """`method(module, *arrays)`, compiled once per module structure and method."""
  graphdef, state = nnx.split(module)
  return _compiled(graphdef, method)(state, *arrays)


def _in_chunks(fn: Callable[[np.ndarray], jax.Array], items: np.ndarray, chunk_size: int) -> jax.Array:
  """`fn` over the leading axis, `chunk_size` items at a time.

  Chunks are padded to `chunk_size`, or for fewer items to the next power of two, so that a few
  compilations serve inputs of every length.
  """
  if chunk_size < 1:
    raise ValueError(f'chunk_size: expected a positive integer, got {chunk_size}')
  size = min(chunk_size, 1 << (len(items) - 1).bit_length())
  outputs = []
  for start in range(0, len(items), size):
    chunk = items[start:start + size]
    n = len(chunk)
    if n < size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
    outputs.append(fn(chunk)[:n])
  return jnp.concatenate(outputs)


def softmax(logits) -> np.ndarray:
  return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))


def _logits(model: nnx.Module, video: jax.Array, audio: jax.Array) -> jax.Array:
  return model(video, audio)[0]


def _classify(model: nnx.Module, vfeat: jax.Array, afeat: jax.Array) -> jax.Array:
  return model.classify(vfeat, afeat)


def _tower(tower: nnx.Module, inputs: jax.Array) -> jax.Array:
  return tower(inputs)


def model_logits(model: nnx.Module, video: np.ndarray, audio: np.ndarray) -> jax.Array:
  """The model on inputs in its own layouts (a batch of `transforms.make_example` outputs), jitted."""
  return jitted_call(_logits, model, video, audio)


# ---------------------------------------------------------------------------------------------------
# Segment features


@functools.partial(jax.jit, static_argnames=('output_size', 'short_side'))
def _prepare_frames(clips: jax.Array, *, output_size: int, short_side: int) -> jax.Array:
  """(N, 16, H, W, 3) RGB → the Motionformer's (N, 3, 16, s, s) input: the test pipeline's geometry.

  The shorter side is resized (bicubic) to `short_side` unless it already is, or the frames are already
  the 224-px crop; then the centre 224-px crop, resized (bilinear) to the model's size, scaled to [-1, 1].
  """
  x = clips.astype(jnp.float32)
  if jnp.issubdtype(clips.dtype, jnp.integer):
    x = x / 255.0
  height, width = x.shape[-3:-1]
  if (height, width) != (CROP_SIZE, CROP_SIZE) and min(height, width) != short_side:
    height, width = height * short_side // min(height, width), width * short_side // min(height, width)
    x = jnp.clip(jax.image.resize(x, (*x.shape[:-3], height, width, 3), 'bicubic'), 0.0, 1.0)
  top, left = transforms.center_crop_box(height, width)
  x = x[..., top:top + CROP_SIZE, left:left + CROP_SIZE, :]
  if output_size != CROP_SIZE:
    x = jax.image.resize(x, (*x.shape[:-3], output_size, output_size, 3), 'linear', antialias=False)
  x = (x - transforms.RGB_MEAN) / transforms.RGB_STD
  return einops.rearrange(x, 'n t h w c -> n c t h w')


def num_segments(length: int, segment: int, stride: int) -> int:
  return max(0, (length - segment) // stride + 1)


def encode_video_sync(model: nnx.Module, frames, *, stride: int = SEGMENT_STRIDE_FRAMES,
                      chunk_size: int = DEFAULT_CHUNK_SIZE, short_side: int = SHORT_SIDE) -> jax.Array:
  """Visual segment features (B, S, 8, D) of 25 fps frames (B, T, H, W, 3).

  Frames are uint8 RGB, or float RGB in [0, 1]. Segment k covers frames [k·stride, k·stride + 16). Frames
  are resized so that their shorter side is `short_side` (256, the original's data; MMAudio and
  av-benchmark resize to 224), centre-cropped to 224 px and resized to the model's input size; frames
  already 224×224 are taken as that crop. `chunk_size` segments go through the tower per compiled call.
  """
  frames = np.asarray(frames)
  if frames.ndim != 5 or frames.shape[-1] != 3:
    raise ValueError(f'encode_video_sync: expected frames (B, T, H, W, 3), got {frames.shape}')
  if short_side < CROP_SIZE:
    raise ValueError(f'encode_video_sync: short_side {short_side} is smaller than the {CROP_SIZE}-px crop')
  b, t = frames.shape[:2]
  s = num_segments(t, SEGMENT_FRAMES, stride)
  if s == 0:
    raise ValueError(f'encode_video_sync: {t} frames are fewer than one {SEGMENT_FRAMES}-frame segment')
  tower = model.vfeat_extractor
  first_frames = stride * np.arange(s)
  pairs = np.stack(np.meshgrid(np.arange(b), first_frames, indexing='ij'), axis=-1).reshape(-1, 2)

  def encode(chunk: np.ndarray) -> jax.Array:
    clips = frames[chunk[:, :1], chunk[:, 1:] + np.arange(SEGMENT_FRAMES)]  # (n, 16, H, W, 3)
    return jitted_call(_tower, tower, _prepare_frames(clips, output_size=tower.cfg.crop, short_side=short_side))

  return _in_chunks(encode, pairs, chunk_size).reshape(b, s, -1, tower.cfg.dim)


def waveform_segments(wav: np.ndarray, starts: np.ndarray) -> np.ndarray:
  """(..., N) samples → (..., len(starts), 10240) segments starting at `starts`."""
  return wav[..., starts[:, None] + np.arange(SEGMENT_SAMPLES)]


def encode_audio_sync(model: nnx.Module, wav_16k, *, stride: int = SEGMENT_STRIDE_SAMPLES,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Audio segment features (B, S, 6, D) of 16 kHz mono waveforms (B, N).

  Segment k covers samples [k·stride, k·stride + 10240); each becomes the original's log-mel
  (`synchformer_jax.data.audio.audio_features`). `chunk_size` segments per compiled call.
  """
  wav = np.asarray(wav_16k, np.float32)
  if wav.ndim != 2:
    raise ValueError(f'encode_audio_sync: expected waveforms (B, N), got {wav.shape}')
  b, n = wav.shape
  s = num_segments(n, SEGMENT_SAMPLES, stride)
  if s == 0:
    raise ValueError(f'encode_audio_sync: {n} samples are fewer than one {SEGMENT_SAMPLES}-sample segment')
  segments = waveform_segments(wav, stride * np.arange(s)).reshape(b * s, SEGMENT_SAMPLES)
  return _encode_segments(model, segments, chunk_size).reshape(b, s, -1, model.cfg.audio.dim)


def _encode_segments(model: nnx.Module, segments: np.ndarray, chunk_size: int) -> jax.Array:
  """(M, 10240) waveform segments → (M, 6, D) audio features."""
  tower = model.afeat_extractor
  encode = lambda chunk: jitted_call(_tower, tower, np.swapaxes(audio_features(chunk), -1, -2))  # (n, 66, 128)
  return _in_chunks(encode, segments, chunk_size)


def sync_logits(model: nnx.Module, vfeat, afeat, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Logits (B, classes) of windows of segment features (B, S, 8, D) and (B, S, 6, D), S = `n_segments`.

  `chunk_size` windows per compiled call.
  """
  vfeat, afeat = np.asarray(vfeat), np.asarray(afeat)
  n = model.cfg.transformer.n_segments
  if vfeat.shape[:2] != afeat.shape[:2] or vfeat.shape[1] != n:
    raise ValueError(f'sync_logits: expected {n} segments of each stream, got video {vfeat.shape} and '
                     f'audio {afeat.shape}')
  pairs = np.arange(len(vfeat))
  return _in_chunks(lambda i: jitted_call(_classify, model, vfeat[i], afeat[i]), pairs, chunk_size)


def _aligned_features(model, video, audio, chunk_size: int, short_side: int) -> tuple[np.ndarray, np.ndarray]:
  vfeat = np.asarray(encode_video_sync(model, video, chunk_size=chunk_size, short_side=short_side))
  afeat = np.asarray(encode_audio_sync(model, audio, chunk_size=chunk_size))
  s = min(vfeat.shape[1], afeat.shape[1])
  if s < model.cfg.transformer.n_segments:
    window_sec = window_seconds(model.cfg.transformer.n_segments)
    raise ValueError(f'clips of {s} segments are shorter than one {window_sec:.2f}-s window '
                     f'({model.cfg.transformer.n_segments} segments)')
  return vfeat[:, :s], afeat[:, :s]


def window_seconds(n_segments: int) -> float:
  """Duration of `n_segments` segments at the Stage II stride (4.8 s for 14)."""
  return ((n_segments - 1) * SEGMENT_STRIDE_FRAMES + SEGMENT_FRAMES) / VIDEO_FPS


def desync(model: nnx.Module, video, audio, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
           short_side: int = SHORT_SIDE) -> np.ndarray:
  """av-benchmark's DeSync of each clip (B,): the mean |predicted offset| (s) of its first and last window.

  A window is the model's `n_segments` segments (4.8 s): the clip's first and last 4.8 s, as av-benchmark
  runs it on 8-s clips. `video`: 25 fps frames (B, T, H, W, 3) (see `encode_video_sync`); `audio`: 16 kHz
  mono (B, N). Clips must last at least one window.
  """
  _require_kind(model, 'sync', 'desync')
  vfeat, afeat = _aligned_features(model, video, audio, chunk_size, short_side)
  n = model.cfg.transformer.n_segments
  first = sync_logits(model, vfeat[:, :n], afeat[:, :n], chunk_size=chunk_size)
  last = sync_logits(model, vfeat[:, -n:], afeat[:, -n:], chunk_size=chunk_size)
  grid = np.abs(OFFSET_GRID.astype(np.float64))
  return (grid[np.argmax(first, axis=-1)] + grid[np.argmax(last, axis=-1)]) / 2


def p_in_sync(model: nnx.Module, video, audio, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
              short_side: int = SHORT_SIDE) -> np.ndarray:
  """A synchronizability model's probability (B,) that each clip can be synchronised.

  On each clip's first window of `n_segments` segments (13: 4.48 s), as the original's test does.
  `video` and `audio` as for `desync`.
  """
  _require_kind(model, 'synchability', 'p_in_sync')
  vfeat, afeat = _aligned_features(model, video, audio, chunk_size, short_side)
  n = model.cfg.transformer.n_segments
  logits = sync_logits(model, vfeat[:, :n], afeat[:, :n], chunk_size=chunk_size)
  return softmax(logits)[:, 1]


# ---------------------------------------------------------------------------------------------------
# File-level predictions


@dataclasses.dataclass(frozen=True)
class OffsetPrediction:
  """A distribution over candidate offsets.

  `offsets_sec` is what each class stands for: the 21-class grid, shifted by `coarse_offset_sec` in a search.
  `logits` is None for a distribution averaged over windows.
  """

  offsets_sec: np.ndarray  # (C,)
  probs: np.ndarray  # (C,)
  logits: np.ndarray | None
  applied_offset_sec: float = 0.0
  v_start_sec: float = 0.0
  coarse_offset_sec: float = 0.0

  @property
  def predicted_class(self) -> int:
    return int(np.argmax(self.probs))

  @property
  def offset_sec(self) -> float:
    return float(self.offsets_sec[self.predicted_class])

  @property
  def prob(self) -> float:
    return float(self.probs[self.predicted_class])

  def top_k(self, k: int) -> list[dict[str, Any]]:
    order = np.argsort(-self.probs, kind='stable')[:k]
    return [{'offset_sec': round(float(self.offsets_sec[c]), 4), 'prob': float(self.probs[c]), 'class': int(c),
             **({'logit': float(self.logits[c])} if self.logits is not None else {})} for c in order]

  def to_dict(self, top_k: int = 5) -> dict[str, Any]:
    return {'applied_offset_sec': self.applied_offset_sec, 'v_start_sec': self.v_start_sec,
            'coarse_offset_sec': self.coarse_offset_sec, 'offset_sec': round(self.offset_sec, 4),
            'prob': self.prob, 'class': self.predicted_class, 'top_k': self.top_k(top_k)}


def build_file_example(model: nnx.Module, source: MediaSource, *, offset_sec: float = 0.0,
                       v_start_sec: float = 0.0, original_decoder: bool = False
                       ) -> tuple[dict[str, Any], transforms.ClipPlan]:
  """The model input example.py builds (Stage II test transforms, fixed offset) and where it comes from."""
  _require_kind(model, 'sync', 'an offset prediction')
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


class _FileFeatures:
  """Segment features of a whole file on the Stage II grid: video segment k starts at frame 8k; the audio
  segments of a shift start `shift` seconds after their video segment."""

  def __init__(self, model: nnx.Module, source: MediaSource, *, chunk_size: int, original_decoder: bool,
               block_segments: int = 64):
    _require_kind(model, 'sync', 'an offset prediction')
    self.model, self.chunk_size = model, chunk_size
    media = MediaFile(source, original_decoder=original_decoder)
    self.name = media.name
    n_frames = media.info.n_frames
    self.n_segments = num_segments(n_frames, SEGMENT_FRAMES, SEGMENT_STRIDE_FRAMES)
    # The whole waveform (cheap), and the video in blocks of segments so that long files fit in memory.
    # `read` decodes a window of both streams; the one not wanted here is given a one-frame/sample window.
    self.wav = media.read((0, 1), (0, media.info.n_samples)).audio
    blocks = []
    for first in range(0, self.n_segments, block_segments):
      count = min(block_segments, self.n_segments - first)
      f0 = first * SEGMENT_STRIDE_FRAMES
      frames = media.read((f0, f0 + (count - 1) * SEGMENT_STRIDE_FRAMES + SEGMENT_FRAMES), (0, 1)).frames
      blocks.append(np.asarray(encode_video_sync(model, frames[None], chunk_size=chunk_size))[0])
    if not blocks:
      raise DecodeError(f'{self.name}: {n_frames} frames are fewer than one {SEGMENT_FRAMES}-frame segment')
    self.vfeat = np.concatenate(blocks)

  def audio_at(self, shift_sec: float) -> tuple[np.ndarray, np.ndarray]:
    """Audio features (K, 6, D) aligned with the video segments at `shift_sec`, and which exist (K,)."""
    starts = SEGMENT_STRIDE_SAMPLES * np.arange(self.n_segments) + int(round(shift_sec * AUDIO_RATE))
    valid = (starts >= 0) & (starts + SEGMENT_SAMPLES <= len(self.wav))
    afeat = np.zeros((self.n_segments, self.model.cfg.audio.time_tokens, self.model.cfg.audio.dim), np.float32)
    if valid.any():
      segments = waveform_segments(self.wav, starts[valid])
      afeat[valid] = np.asarray(_encode_segments(self.model, segments, self.chunk_size), np.float32)
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


@dataclasses.dataclass(frozen=True)
class OffsetCurve:
  """Predictions of sliding windows over a file. Window i covers video [start_sec[i], start_sec[i] + window_sec)."""

  start_sec: np.ndarray  # (W,)
  window_sec: float
  offsets_sec: np.ndarray  # (C,)
  logits: np.ndarray  # (W, C)
  applied_offset_sec: float

  @property
  def probs(self) -> np.ndarray:
    return softmax(self.logits)

  @property
  def offset_sec(self) -> np.ndarray:
    return self.offsets_sec[np.argmax(self.logits, axis=-1)]

  @property
  def consensus(self) -> OffsetPrediction:
    """The windows' probabilities averaged: one prediction for the file."""
    return OffsetPrediction(self.offsets_sec, self.probs.mean(axis=0), None, applied_offset_sec=self.applied_offset_sec)

  def to_dict(self, top_k: int = 5) -> dict[str, Any]:
    probs = self.probs
    return {'applied_offset_sec': self.applied_offset_sec, 'window_sec': self.window_sec,
            'windows': [{'start_sec': round(float(t), 4), 'offset_sec': round(float(o), 4), 'prob': float(p.max())}
                        for t, o, p in zip(self.start_sec, self.offset_sec, probs)],
            'consensus': self.consensus.to_dict(top_k)}


def offset_curve(model: nnx.Module, source: MediaSource, *, offset_sec: float = 0.0, hop_sec: float = 1.0,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, original_decoder: bool = False) -> OffsetCurve:
  """The offset over time: windows of `n_segments` segments every `hop_sec` (rounded to the 0.32-s segment
  stride) over the whole file, the audio of each starting `offset_sec` after its video."""
  features = _FileFeatures(model, source, chunk_size=chunk_size, original_decoder=original_decoder)
  hop = max(1, round(hop_sec / SEGMENT_STRIDE_SEC))
  firsts, logits = features.window_logits(offset_sec, hop)
  n = model.cfg.transformer.n_segments
  if not len(firsts):
    raise DecodeError(f'{features.name}: too short for one {window_seconds(n):.2f}-s window with the audio '
                      f'{offset_sec:+.2f} s from the video')
  return OffsetCurve(firsts * SEGMENT_STRIDE_SEC, window_seconds(n), OFFSET_GRID.astype(np.float64), logits,
                     float(offset_sec))


@dataclasses.dataclass(frozen=True)
class OffsetSearch:
  """One prediction per coarse shift of the audio; the most confident is the answer."""

  candidates: list[OffsetPrediction]

  @property
  def best(self) -> OffsetPrediction:
    return max(self.candidates, key=lambda c: c.prob)

  def to_dict(self, top_k: int = 5) -> dict[str, Any]:
    return {'candidates': [{'coarse_offset_sec': c.coarse_offset_sec, 'offset_sec': round(c.offset_sec, 4),
                            'prob': c.prob} for c in self.candidates],
            'best': self.best.to_dict(top_k)}


def search_offset(model: nnx.Module, source: MediaSource, *, search_range_sec: float, step_sec: float = 2.0,
                  offset_sec: float = 0.0, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  original_decoder: bool = False) -> OffsetSearch:
  """Offsets up to ±`search_range_sec`, beyond the grid's ±2 s (the original's issue #7).

  For each coarse offset c in -range, -range + step, ..., +range (and 0), the audio is started c earlier,
  undoing an offset of about c; the model predicts the residual r on every window that fits, their
  probabilities are averaged, and c + r is that candidate's estimate. The most confident candidate wins.
  """
  if not 0 < step_sec <= MAX_SEARCH_STEP_SEC:
    raise ValueError(f'search step: expected 0 < step <= {MAX_SEARCH_STEP_SEC} s, got {step_sec}')
  if search_range_sec < 0:
    raise ValueError(f'search range: expected a non-negative number of seconds, got {search_range_sec}')
  features = _FileFeatures(model, source, chunk_size=chunk_size, original_decoder=original_decoder)
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
