"""Synthetic sparse-sync clips: the project's embedded default data (no downloads).

Every clip is a real mp4 (H.264 at 25 fps plus AAC at 16 kHz mono, written through PyAV), so
it travels through exactly the same build, decode and transform path as VGGSound or AudioSet.

What a clip shows: one small *actor* whose brief visual events (a ball landing, a hammer
striking an anvil, a lamp flashing) coincide with the onsets of its sounds (a thud, a click, a
beep). The cues are sparse, like VGGSound-Sparse: the actor covers a few per cent of the frame
and fires a few times per 10 s. The difficulty comes from

- distractors: silent copies of the actor with their own, independent events;
- slow drift of every object (motion that is not an event);
- off-screen sounds: onsets with no visual counterpart;
- background noise in both streams (temporally smooth luminance flicker, pink-ish hiss).

Besides the sparse cue, a clip holds a dense one, the *beacon* (`SyntheticSpec.beacon_period_sec`;
0 turns it off): a large lamp in the middle of the frame cycles through the colour wheel, and a hum of
two notes follows its colour. It stands for the continuous correspondences of real videos (a passing
car's engine, a speaking face), and it is what lets a model trained from scratch on a 2-core CPU learn
the offsets within the hour (BENCHMARKS.md): the tiny towers' untrained features already carry it, while
the sparse events hardly register in them. The lamp's starting colour is random.

Event times are a homogeneous Poisson process, drawn on an interval wider than the clip so
that the edges look like the middle. The content of a window of *one* stream is therefore
independent of where the window sits in the clip, so nothing but the correspondence between
the two streams tells the audio-visual offset. `benchmarks.leak_audit` measures that claim
(single-stream predictors at chance, cross-correlation of the two streams far above it).

A clip is fully determined by its `SyntheticSpec` and seed; the mp4 bytes too, because x264 is
run single-threaded (its output depends on the thread count).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence

import av
import numpy as np

from synchformer_jax.constants import AUDIO_RATE, MAX_OFFSET_SEC, OFFSET_GRID, VIDEO_FPS
from synchformer_jax.data.transforms import OFFSET_CROP_SEC

# Index = class label. Each kind has its own sound: bounce -> thud, hammer -> click, flash -> beep.
EVENT_KINDS = ('bounce', 'hammer', 'flash')

# Motion profiles around an event at time 0 (seconds). The only abrupt change of a trajectory
# is the contact at the event itself: a rise, an apex or a retraction is smooth, so it does
# not look like a second, silent event.
_RISE_SEC = 0.5  # bounce: smooth rise to the apex
_FALL_SEC = 0.4  # bounce: free fall from rest at the apex, landing at the event
_STRIKE_SEC = 0.25  # hammer: accelerating stroke, contact at the event
_HOLD_SEC = 0.08  # hammer: stays on the anvil
_RETRACT_SEC = 0.4  # hammer: smooth retraction
_FLASH_DECAY_SEC = 0.08  # lamp brightness (and beep loudness) decay constant
# Events are drawn on [-margin, duration + margin] so that motion or sound that started before
# the clip (or ends after it) is as frequent at the edges as in the middle.
_EDGE_MARGIN_SEC = 1.0
_NOISE_GRID = 9  # the luminance flicker lives on a 9x9 grid, upsampled bilinearly
_OFFSET_SPAN_SEC = 2 * MAX_OFFSET_SEC  # offsets run from -2 to +2 s
_BEACON_SIZE = 0.45  # lamp diameter, as a fraction of the frame's short side
_BEACON_NOTES_HZ = (220.0, 330.0)
_BEACON_HARMONICS = 8


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Format and difficulty of generated clips.

  Attributes:
    duration_sec: clip length.
    height, width: frame size in pixels (even, for yuv420p). The model's test transforms
      centre-crop 224 px, so the short side should be at least 224; 256 matches the original's
      re-encoded data.
    fps, audio_rate: stream rates; the model expects 25 and 16000.
    event_rate_hz: mean number of actor events per second (Poisson).
    object_size: diameter of an object as a fraction of the frame's short side.
    num_distractors: silent copies of the actor, each with its own events.
    video_noise: std of the luminance flicker, as a fraction of the 0..255 range.
    audio_noise: std of the background hiss (waveform in [-1, 1]).
    offscreen_sound_rate_hz: rate of sound onsets that have no visual event.
    crf: x264 constant rate factor (lower is larger and closer to the rendered frames).
    kinds: the event kinds a clip's actor is drawn from (its label indexes EVENT_KINDS).
    voice_follows_color: the actor's pitch is set by its colour (redder sounds higher) instead of
      drawn independently, so that a clip's two streams also correspond as wholes, as a dog's
      bark goes with a dog, and not only in the timing of their events.
    beacon_period_sec: one cycle of the beacon, a dense cue (0: no beacon). A large lamp in the
      middle of the frame runs through the colour wheel while its hum, a chord of two notes,
      follows it: one note's loudness follows the lamp's red level, the other's its green-against-blue
      balance. Must exceed the span of the offsets (4 s), or two offsets would look alike. At the
      default 10 s a 4.8-s window sees half a cycle, so even its mean colour tells where in the cycle
      it is; at 5 s the window's mean is nearly grey, and a Stage II head that starts by pooling
      every token learned nothing in 3000 steps (BENCHMARKS.md).
    beacon_level: the hum's peak amplitude (waveform in [-1, 1]).
  """

  duration_sec: float = 10.0
  height: int = 256
  width: int = 256
  fps: int = VIDEO_FPS
  audio_rate: int = AUDIO_RATE
  event_rate_hz: float = 0.4
  object_size: float = 0.08
  num_distractors: int = 2
  video_noise: float = 0.02
  audio_noise: float = 0.02
  offscreen_sound_rate_hz: float = 0.1
  crf: int = 23
  kinds: tuple[str, ...] = EVENT_KINDS
  voice_follows_color: bool = False
  beacon_period_sec: float = 10.0
  beacon_level: float = 0.1

  def __post_init__(self):
    if not self.kinds or set(self.kinds) - set(EVENT_KINDS):
      raise ValueError(f'kinds: expected a non-empty subset of {EVENT_KINDS}, got {self.kinds}')
    if self.height % 2 or self.width % 2:
      raise ValueError(f'frame size must be even for yuv420p, got {self.height}x{self.width}')
    if self.duration_sec <= 0 or self.fps <= 0 or self.audio_rate <= 0:
      raise ValueError(f'duration, fps and audio rate must be positive: {self}')
    if not 0 < self.object_size < 0.5:
      raise ValueError(f'object_size is a fraction of the short side, got {self.object_size}')
    if self.beacon_period_sec and self.beacon_period_sec <= _OFFSET_SPAN_SEC:
      raise ValueError(f'beacon_period_sec: expected 0 (no beacon) or more than {_OFFSET_SPAN_SEC} s '
                       f'(the span of the offsets), got {self.beacon_period_sec}')

  @property
  def num_frames(self) -> int:
    return round(self.duration_sec * self.fps)

  @property
  def num_samples(self) -> int:
    return round(self.duration_sec * self.audio_rate)


@dataclasses.dataclass(frozen=True)
class SyntheticClip:
  """A rendered clip before encoding.

  Attributes:
    frames: (T, H, W, 3) uint8 RGB; frame k shows time k / fps.
    audio: (N,) float32 mono in [-1, 1]; sample n is at time n / audio_rate.
    event_times_sec: onsets of the actor's audible events that fall inside the clip.
    label: index into EVENT_KINDS.
  """

  frames: np.ndarray
  audio: np.ndarray
  event_times_sec: np.ndarray
  label: int


@dataclasses.dataclass(frozen=True)
class _Object:
  x: float  # centre at rest, pixels
  y: float
  drift_amplitude: float  # pixels
  drift_hz: float
  drift_phase: float
  color: np.ndarray  # (3,) float32
  event_times: np.ndarray  # seconds, including events just outside the clip


def _poisson_times(rng: np.random.Generator, rate_hz: float, start: float, stop: float) -> np.ndarray:
  count = rng.poisson(rate_hz * (stop - start))
  return np.sort(rng.uniform(start, stop, size=count))


def _event_profile(kind: str, t: np.ndarray, event_times: np.ndarray) -> np.ndarray:
  """Per-frame state in [0, 1] of one object: height (bounce), gap (hammer), brightness (flash)."""
  if event_times.size == 0:
    return np.full(t.shape, 1.0 if kind == 'hammer' else 0.0)
  tau = t[:, None] - event_times[None, :]  # (frames, events), time since each event
  if kind == 'bounce':
    rise_u = np.clip((tau + _RISE_SEC + _FALL_SEC) / _RISE_SEC, 0.0, 1.0)
    rising = (1.0 - np.cos(np.pi * rise_u)) / 2.0
    fall_u = (tau + _FALL_SEC) / _FALL_SEC
    falling = 1.0 - fall_u**2
    height = np.where(tau < -_FALL_SEC, rising, np.where(tau < 0.0, falling, 0.0))
    height = np.where(tau < -(_RISE_SEC + _FALL_SEC), 0.0, height)
    return height.max(axis=1)
  if kind == 'hammer':
    strike_u = (tau + _STRIKE_SEC) / _STRIKE_SEC
    striking = 1.0 - strike_u**2
    retract_u = np.clip((tau - _HOLD_SEC) / _RETRACT_SEC, 0.0, 1.0)
    retracting = (1.0 - np.cos(np.pi * retract_u)) / 2.0
    gap = np.where(tau < -_STRIKE_SEC, 1.0, np.where(tau < 0.0, striking, retracting))
    return gap.min(axis=1)
  if kind == 'flash':
    return np.where(tau >= 0.0, np.exp(-np.maximum(tau, 0.0) / _FLASH_DECAY_SEC), 0.0).max(axis=1)
  raise ValueError(f'unknown event kind {kind!r}')


def _paint_disc(canvas: np.ndarray, cx: float, cy: float, radius: float, color: np.ndarray):
  """Alpha-blends an anti-aliased disc into canvas (H, W, 3) float32, in place."""
  h, w, _ = canvas.shape
  y0, y1 = max(int(cy - radius - 1), 0), min(int(cy + radius + 2), h)
  x0, x1 = max(int(cx - radius - 1), 0), min(int(cx + radius + 2), w)
  if y0 >= y1 or x0 >= x1:
    return
  yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
  xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
  alpha = np.clip(radius + 0.5 - np.sqrt(yy * yy + xx * xx), 0.0, 1.0)[..., None]
  patch = canvas[y0:y1, x0:x1]
  patch += alpha * (color - patch)


def _paint_box(canvas: np.ndarray, cx: float, cy: float, half_w: float, half_h: float, color: np.ndarray):
  """Alpha-blends an anti-aliased axis-aligned box into canvas, in place."""
  h, w, _ = canvas.shape
  y0, y1 = max(int(cy - half_h - 1), 0), min(int(cy + half_h + 2), h)
  x0, x1 = max(int(cx - half_w - 1), 0), min(int(cx + half_w + 2), w)
  if y0 >= y1 or x0 >= x1:
    return
  ay = np.clip(half_h + 0.5 - np.abs(np.arange(y0, y1, dtype=np.float32) + 0.5 - cy), 0.0, 1.0)
  ax = np.clip(half_w + 0.5 - np.abs(np.arange(x0, x1, dtype=np.float32) + 0.5 - cx), 0.0, 1.0)
  alpha = (ay[:, None] * ax[None, :])[..., None]
  patch = canvas[y0:y1, x0:x1]
  patch += alpha * (color - patch)


def _bilinear_taps(size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
  """Left control point and weight of the right one, for each of `size` pixels spanning `grid` points."""
  pos = np.linspace(0.0, grid - 1.0, size)
  left = np.minimum(pos.astype(int), grid - 2)
  return left, (pos - left).astype(np.float32)


def _object_geometry(spec: SyntheticSpec) -> tuple[float, float]:
  """(object diameter, bounce height = hammer stroke), in pixels."""
  size = spec.object_size * min(spec.height, spec.width)
  return size, 2.5 * size


def _beacon_angle(spec: SyntheticSpec, t: np.ndarray, phase: float) -> np.ndarray:
  """The beacon's angle on the colour wheel (radians) at times t."""
  return 2 * np.pi * t / spec.beacon_period_sec + phase


def _render_frames(spec: SyntheticSpec, kind: str, objects: Sequence[_Object], beacon_phase: float,
                   rng: np.random.Generator) -> np.ndarray:
  h, w = spec.height, spec.width
  size, travel = _object_geometry(spec)
  t = np.arange(spec.num_frames) / spec.fps

  # Static background: a vertical gradient plus each object's static part (floor, anvil), so
  # that only the objects themselves move.
  top, bottom = rng.uniform(20, 110, size=3), rng.uniform(20, 110, size=3)
  ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
  background = np.broadcast_to(top + ramp * (bottom - top), (h, w, 3)).astype(np.float32)
  static_color = rng.uniform(60, 140, size=3).astype(np.float32)
  for obj in objects:
    if kind == 'bounce':  # floor under the ball
      _paint_box(background, obj.x, obj.y + 0.5 * size + 2, 1.5 * size, 2, static_color)
    elif kind == 'hammer':  # anvil under the hammer head
      _paint_box(background, obj.x, obj.y + 0.6 * size, 0.9 * size, 0.3 * size, static_color)

  # Luminance flicker, temporally smooth (AR(1)) so that it compresses like real sensor drift.
  flicker = np.empty((spec.num_frames, _NOISE_GRID, _NOISE_GRID), np.float32)
  noise = rng.standard_normal((_NOISE_GRID, _NOISE_GRID))
  for k in range(spec.num_frames):
    noise = 0.8 * noise + 0.6 * rng.standard_normal((_NOISE_GRID, _NOISE_GRID))
    flicker[k] = noise
  flicker *= 255.0 * spec.video_noise
  # Bilinear upsampling by gathers, not matmuls: multi-threaded BLAS on tiny matrices stalls
  # badly when the cores are busy (as in a pool of generator processes).
  top_y, weight_y = _bilinear_taps(h, _NOISE_GRID)
  left_x, weight_x = _bilinear_taps(w, _NOISE_GRID)
  flicker_rows = flicker[:, top_y] * (1.0 - weight_y[:, None]) + flicker[:, top_y + 1] * weight_y[:, None]

  drift = [obj.drift_amplitude * np.sin(2 * np.pi * obj.drift_hz * t + obj.drift_phase) for obj in objects]
  profiles = [_event_profile(kind, t, obj.event_times) for obj in objects]
  if spec.beacon_period_sec:
    angle = _beacon_angle(spec, t, beacon_phase)[:, None] + np.array([0.0, -2 * np.pi / 3, 2 * np.pi / 3])
    beacon_colors = (127.5 + 127.5 * np.cos(angle)).astype(np.float32)  # (frames, RGB) around the hue circle
  frames = np.empty((spec.num_frames, h, w, 3), np.uint8)
  for k in range(spec.num_frames):
    rows = flicker_rows[k]
    canvas = background + (rows[:, left_x] * (1.0 - weight_x) + rows[:, left_x + 1] * weight_x)[..., None]
    if spec.beacon_period_sec:  # behind the objects, so that it never hides an event
      _paint_disc(canvas, w / 2, h / 2, _BEACON_SIZE * min(h, w) / 2, beacon_colors[k])
    for obj, dx, profile in zip(objects, drift, profiles):
      x = obj.x + dx[k]
      if kind == 'bounce':
        _paint_disc(canvas, x, obj.y - travel * profile[k], size / 2, obj.color)
      elif kind == 'hammer':
        head_y = obj.y - travel * profile[k]
        _paint_box(canvas, x, head_y - 0.9 * size, 0.12 * size, 0.8 * size, obj.color * 0.6)  # handle
        _paint_box(canvas, x, head_y, 0.5 * size, 0.3 * size, obj.color)  # head
      else:  # flash: a dim lamp that lights up
        _paint_disc(canvas, x, obj.y, size / 2, obj.color * (0.25 + 0.75 * profile[k]))
    np.clip(canvas, 0.0, 255.0, out=canvas)
    frames[k] = canvas
  return frames


def _sound(kind: str, pitch_hz: float, rate: int, rng: np.random.Generator) -> np.ndarray:
  """One sound event of `kind`, starting at its first sample."""
  if kind == 'bounce':  # thud: low decaying tone plus a short noise burst
    t = np.arange(int(0.3 * rate)) / rate
    return np.sin(2 * np.pi * pitch_hz * t) * np.exp(-t / 0.06) + 0.5 * rng.standard_normal(t.size) * np.exp(-t / 0.015)
  if kind == 'hammer':  # click: a very short broadband burst with a metallic ring
    t = np.arange(int(0.12 * rate)) / rate
    return rng.standard_normal(t.size) * np.exp(-t / 0.006) + 0.6 * np.sin(2 * np.pi * pitch_hz * t) * np.exp(-t / 0.03)
  if kind == 'flash':  # beep: a tone that fades like the lamp
    t = np.arange(int(0.4 * rate)) / rate
    return np.sin(2 * np.pi * pitch_hz * t) * np.minimum(t / 0.003, 1.0) * np.exp(-t / _FLASH_DECAY_SEC)
  raise ValueError(f'unknown event kind {kind!r}')


_COLOR_RANGE = (150.0, 255.0)  # objects' RGB channels, bright against the background
_PITCH_RANGE_HZ = {'bounce': (70.0, 160.0), 'hammer': (2000.0, 4000.0), 'flash': (600.0, 1600.0)}


def _pink_noise(num_samples: int, std: float, rng: np.random.Generator) -> np.ndarray:
  spectrum = np.fft.rfft(rng.standard_normal(num_samples))
  spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1.0))
  noise = np.fft.irfft(spectrum, n=num_samples)
  return noise * (std / max(float(noise.std()), 1e-12))


def _beacon_hum(spec: SyntheticSpec, phase: float) -> np.ndarray:
  """The beacon's sound: two buzzing notes whose loudness follows the cosine and sine of its colour angle.

  Each note carries its first harmonics (amplitude 1/k), so that it lights up many mel bands, not one.
  """
  t = np.arange(spec.num_samples) / spec.audio_rate
  angle = _beacon_angle(spec, t, phase)
  loudness = (1 + np.cos(angle)) / 2, (1 + np.sin(angle)) / 2
  harmonics = np.arange(1, _BEACON_HARMONICS + 1)
  notes = [sum(np.sin(2 * np.pi * k * pitch * t) / k for k in harmonics) for pitch in _BEACON_NOTES_HZ]
  return spec.beacon_level * sum(gain * note for gain, note in zip(loudness, notes))


def _render_audio(spec: SyntheticSpec, kind: str, actor: _Object, beacon_phase: float,
                  rng: np.random.Generator) -> np.ndarray:
  rate, n = spec.audio_rate, spec.num_samples
  # Sounds are placed on a padded buffer so that events before the clip leave their tails in it.
  pad = int(_EDGE_MARGIN_SEC * rate)
  audio = np.zeros(n + 2 * pad)
  low, high = _PITCH_RANGE_HZ[kind]
  if spec.voice_follows_color:
    actor_pitch = low + (high - low) * (actor.color[0] - _COLOR_RANGE[0]) / (_COLOR_RANGE[1] - _COLOR_RANGE[0])
  else:
    actor_pitch = rng.uniform(low, high)

  def add(sound_kind: str, onset_sec: float, pitch_hz: float):
    sound = rng.uniform(0.25, 0.5) * _sound(sound_kind, pitch_hz, rate, rng)
    start = pad + int(round(onset_sec * rate))
    stop = min(start + sound.size, audio.size)
    if stop > start >= 0:
      audio[start:stop] += sound[: stop - start]

  for onset in actor.event_times:
    add(kind, onset, actor_pitch)
  for onset in _poisson_times(rng, spec.offscreen_sound_rate_hz, -_EDGE_MARGIN_SEC, spec.duration_sec + _EDGE_MARGIN_SEC):
    other = EVENT_KINDS[rng.integers(len(EVENT_KINDS))]
    add(other, onset, rng.uniform(*_PITCH_RANGE_HZ[other]))
  audio = audio[pad : pad + n] + _pink_noise(n, spec.audio_noise, rng)
  if spec.beacon_period_sec:
    audio += _beacon_hum(spec, beacon_phase)
  return np.clip(audio, -1.0, 1.0).astype(np.float32)


def render_clip(spec: SyntheticSpec, seed: int | Sequence[int]) -> SyntheticClip:
  """Renders the frames and waveform of one clip; deterministic given (spec, seed)."""
  rng = np.random.default_rng(seed)
  kind = spec.kinds[rng.integers(len(spec.kinds))]
  label = EVENT_KINDS.index(kind)
  size, travel = _object_geometry(spec)

  # Objects sit in distinct columns, the actor in a random one, so its place reveals nothing.
  num_objects = 1 + spec.num_distractors
  columns = rng.permutation(num_objects)
  column_width = spec.width / num_objects
  first, last = -_EDGE_MARGIN_SEC, spec.duration_sec + _EDGE_MARGIN_SEC
  objects = []
  for i in range(num_objects):
    lowest = travel + 1.6 * size if kind != 'flash' else size
    objects.append(
        _Object(
            x=(columns[i] + 0.5) * column_width,
            y=rng.uniform(lowest, spec.height - 1.2 * size),
            drift_amplitude=rng.uniform(0.1, 0.3) * max(column_width - 2 * size, 0.0),
            drift_hz=rng.uniform(0.05, 0.25),
            drift_phase=rng.uniform(0, 2 * np.pi),
            color=rng.uniform(*_COLOR_RANGE, size=3).astype(np.float32),
            event_times=_poisson_times(rng, spec.event_rate_hz, first, last),
        )
    )
  actor_events = objects[0].event_times
  # A random starting angle: where the beacon is tells nothing about where in the clip a window sits.
  beacon_phase = rng.uniform(0, 2 * np.pi)
  frames = _render_frames(spec, kind, objects, beacon_phase, rng)
  audio = _render_audio(spec, kind, objects[0], beacon_phase, rng)
  inside = actor_events[(actor_events >= 0.0) & (actor_events < spec.duration_sec)]
  return SyntheticClip(frames=frames, audio=audio, event_times_sec=inside, label=label)


def encode_mp4(frames: np.ndarray, audio: np.ndarray, *, fps: int, audio_rate: int, crf: int = 23) -> bytes:
  """Encodes (T, H, W, 3) uint8 frames and a mono float waveform as H.264 + AAC in mp4."""
  buffer = io.BytesIO()
  with av.open(buffer, mode='w', format='mp4') as container:
    video = container.add_stream('libx264', rate=fps)
    video.height, video.width = frames.shape[1:3]
    video.pix_fmt = 'yuv420p'
    # threads=1: x264's output bits depend on its thread count; one thread keeps clips
    # byte-identical across machines. mbtree=0: x264's SIMD macroblock-tree rate control gives
    # different bits from one call to the next in one process (it depends on buffer alignment).
    video.options = {'crf': str(crf), 'preset': 'veryfast', 'threads': '1', 'x264-params': 'mbtree=0'}
    # 48 kb/s is ample for 16-kHz mono; the encoder's default (128 kb/s) mostly spends bits on hiss.
    sound = container.add_stream('aac', rate=audio_rate, layout='mono', bit_rate=48000)
    for frame in frames:
      container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(video.encode())
    frame_size = sound.codec_context.frame_size or 1024
    for start in range(0, audio.size, frame_size):
      chunk = av.AudioFrame.from_ndarray(
          np.ascontiguousarray(audio[None, start : start + frame_size], np.float32), format='fltp', layout='mono'
      )
      chunk.sample_rate = audio_rate
      chunk.pts = start
      container.mux(sound.encode(chunk))
    container.mux(sound.encode())
  return buffer.getvalue()


def generate_clip(spec: SyntheticSpec, seed: int | Sequence[int]) -> tuple[bytes, SyntheticClip]:
  """Renders and encodes one clip: (mp4 bytes, the rendered clip)."""
  clip = render_clip(spec, seed)
  data = encode_mp4(clip.frames, clip.audio, fps=spec.fps, audio_rate=spec.audio_rate, crf=spec.crf)
  return data, clip


# ------------------------------------------------------------------------------------------
# Offsets (the audit that shows the clips have no single-stream shortcut: benchmarks/leak_audit.py).


def sample_offset_and_vstart(rng: np.random.Generator, num_frames: int, *, fps: int = VIDEO_FPS) -> tuple[float, float]:
  """Draws (offset_sec, vstart_sec) the way the original drew its fixed evaluation offsets.

  Mirrors the random branch of the Stage II crop (data.md §2.3, §3.4): an offset uniform over
  the float32 class grid rounded to 2 decimals, then a video start uniform over the range that
  keeps both 5-s windows inside the clip, snapped to the frame grid and rounded to 2 decimals.
  """
  offset = round(float(OFFSET_GRID[rng.integers(len(OFFSET_GRID))]), 2)
  vstart_max = (num_frames - int(OFFSET_CROP_SEC * fps)) / fps
  low, high = max(0.0, -offset), min(vstart_max, vstart_max - offset)
  if low > high:
    raise ValueError(f'{num_frames} frames are too few for a {OFFSET_CROP_SEC}-s crop at offset {offset}')
  vstart = rng.uniform(low, high)
  return offset, round(int(vstart * fps) / fps, 2)
