"""Decode audio-visual clips with PyAV into the original's model-input conventions.

The original (Synchformer) reads every clip in full with ``torchvision.io.read_video`` from files that were
re-encoded beforehand to 25 fps, shorter side 256 px, 16 kHz AAC. This module gives the same arrays, but:

* **Windowed.** :meth:`MediaFile.read` decodes only the frames and samples a model input needs. Video
  seeks to the last keyframe before the window. Packets that are outside the window and are not
  reference frames are not decoded (``skip_frame=NONREF``), and decoding stops once the window is
  complete. Audio at 16 kHz seeks to :data:`_AUDIO_PREROLL_SEC` before the window and drops that
  pre-roll, which keeps AAC's overlapped transform exact. Frames and samples equal a full decode's
  bit for bit (and a full decode equals the original's ``read_video`` on its parity clips). The clip's
  lengths come from a scan of its packets, without decoding.
* **Timestamp-exact.** Frame ``k`` is the picture at media time ``k / 25`` s and audio sample ``n`` is
  the sound at ``n / 16000`` s. Media time 0 is where the container's edit lists put it, as any
  current PyAV honours them (so AAC priming samples are dropped). :class:`DecodedClip` returns the time
  of its first frame and first sample.
* **Format-normalising.** Inputs that are not 25 fps / 16 kHz / 256 px are converted the way the
  original's ``example.py`` re-encode would (ffmpeg ``fps=25``, ``scale``, ``-ar 16000``):

  - video frame ``k`` shows the last source frame whose timestamp is earlier than ``(k + 1/2) / 25`` s,
    i.e. the nearest one, with ties to the earlier (the rule of ffmpeg's ``fps`` filter). Slots before
    the first source frame show the first frame. For a 25 fps source this is the identity;
  - frames whose shorter side is not 256 px are resized bicubically (ffmpeg's ``scale`` default) so it
    is 256, with the longer side truncated to an integer, then cropped down to even dimensions;
  - audio at another rate goes through libswresample (PyAV ``AudioResampler``), whose output is aligned
    to the input start. It is decoded and resampled in full once, when the file is opened (cheap next
    to video), so every window of it is the same samples and its length is exact;
  - any channel count is averaged to mono, as the original does.

``original_decoder=True`` reproduces the original's pinned decoder (PyAV 9.0.0 on FFmpeg 4.3, through
torchvision 0.15) with a current PyAV. That decoder seeks the audio stream to 0 before reading, and
for files whose audio edit list starts inside the packet timeline (first audio packet at a negative
timestamp, e.g. -1,024 samples of AAC priming) the seek drops that many samples of real audio.
Audio sample 0 is then at media time 0.064 s for the VGGSound files, so every input built from
them carries its label plus 64 ms. The published checkpoints were trained and evaluated that way.
Video is unaffected.
"""

from __future__ import annotations

import dataclasses
import io
import os
from fractions import Fraction
from typing import BinaryIO, Union

import av
import numpy as np

from synchformer_jax.constants import AUDIO_RATE, VIDEO_FPS
from synchformer_jax.errors import InputError

SHORT_SIDE = 256
# Audio decoded before a seek target and thrown away: AAC needs one frame (1,024 samples) of overlap.
_AUDIO_PREROLL_SEC = 0.2

MediaSource = Union[str, os.PathLike, bytes, BinaryIO]


class DecodeError(InputError):
  """A clip cannot give the requested frames and samples. The message names the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  """What :meth:`MediaFile.read` can return. Lengths are in output units (25 fps frames, 16 kHz samples)."""

  name: str
  n_frames: int
  n_samples: int
  height: int
  width: int
  source_fps: float
  source_rate: int
  source_channels: int
  audio_start_sec: float  # media time of audio sample 0: 0.0, or the dropped priming with original_decoder


@dataclasses.dataclass(frozen=True)
class DecodedClip:
  """Frames ``first_frame .. first_frame + T - 1`` and samples ``first_sample .. first_sample + N - 1``."""

  frames: np.ndarray  # (T, H, W, 3) uint8 RGB
  audio: np.ndarray  # (N,) float32 mono
  first_frame: int
  first_sample: int
  info: MediaInfo

  @property
  def video_start_sec(self) -> float:
    """Media time of ``frames[0]``."""
    return self.first_frame / VIDEO_FPS

  @property
  def audio_start_sec(self) -> float:
    """Media time of ``audio[0]``."""
    return self.info.audio_start_sec + self.first_sample / AUDIO_RATE


@dataclasses.dataclass(frozen=True)
class _VideoIndex:
  """Presentation timestamps of all video packets, in display order, and of the keyframes (for seeking)."""

  pts: np.ndarray  # (F,) int64, sorted
  keyframe_pts: np.ndarray  # (K,) int64, sorted
  end_pts: int  # pts just after the last frame
  time_base: Fraction


def _source_name(source: MediaSource, name: str | None) -> str:
  if name is not None:
    return name
  if isinstance(source, (str, os.PathLike)):
    return os.fspath(source)
  return f'<{type(source).__name__}>'


class MediaFile:
  """A clip to read windows from: :attr:`info` comes from a packet scan (no decoding), :meth:`read` decodes.

  ``source`` is a path, the encoded bytes of a file (e.g. an mp4 stored in a record), or a seekable
  binary file object. ``name`` is used in error messages (defaults to the path). By default audio
  sample 0 is media time 0; ``original_decoder=True`` drops the leading audio that the original's
  pinned PyAV 9 drops (the AAC frame an edit list starts into; see the module docstring), so that
  ``info.audio_start_sec`` is 0.064 s for such files. Raises :class:`DecodeError` for a file that is not
  a video with an audio track.
  """

  def __init__(self, source: MediaSource, *, original_decoder: bool = False, name: str | None = None):
    self.name = _source_name(source, name)
    self._source = source
    with self._open() as container:
      vs, aus = container.streams.video[0], container.streams.audio[0]
      self._index, audio_end_sec, audio_pad_sec = self._scan_packets(container, vs, aus)
      self._audio_shift = int(audio_pad_sec * AUDIO_RATE) if original_decoder else 0
      height, width = _output_size(vs.codec_context.height, vs.codec_context.width)
      self.info = MediaInfo(
        name=self.name,
        # Round to the nearest slot, consistent with the nearest-frame rule of _slot_to_source.
        n_frames=int(Fraction(self._index.end_pts) * self._index.time_base * VIDEO_FPS + Fraction(1, 2)),
        n_samples=int(audio_end_sec * AUDIO_RATE) - self._audio_shift,
        height=height,
        width=width,
        source_fps=float(vs.average_rate or 0),
        source_rate=aus.rate,
        source_channels=aus.channels,
        audio_start_sec=self._audio_shift / AUDIO_RATE,
      )
    # Resampled audio is decoded once, in full, from a fresh container: a resampler's output depends on
    # where it started, and its exact length is only known after resampling.
    self._resampled_audio = None
    if self.info.source_rate != AUDIO_RATE:
      with self._open() as container:
        self._resampled_audio = _decode_audio(container, self.name, None, self._audio_shift, None)
      self.info = dataclasses.replace(self.info, n_samples=len(self._resampled_audio))

  def _open(self) -> av.container.InputContainer:
    """A new container per pass: PyAV's seek plus flush does not reset a decoder the way a new one
    starts (AAC's first frame differs), and the original decodes each stream once, fresh."""
    source = self._source
    if isinstance(source, bytes):
      source = io.BytesIO(source)
    elif hasattr(source, 'seek'):
      source.seek(0)
    try:
      container = av.open(source)
    except (av.FFmpegError, OSError) as e:
      raise DecodeError(f'{self.name}: not a readable media file ({e})') from e
    for kind in ('video', 'audio'):
      if not getattr(container.streams, kind):
        container.close()
        raise DecodeError(f'{self.name}: has no {kind} stream; expected a video with an audio track')
    return container

  def _scan_packets(self, container, vs, aus) -> tuple[_VideoIndex, Fraction, Fraction]:
    """Demux (not decode) every packet: video timestamps, audio end time and leading audio padding."""
    vpts, vdur, key_pts = [], [], []
    a_first, a_end = None, None
    frame_ticks = Fraction(aus.codec_context.frame_size) / (aus.rate * Fraction(aus.time_base))
    try:
      for packet in container.demux(vs, aus):
        pts = packet.pts if packet.pts is not None else packet.dts
        if packet.size == 0 or pts is None:
          continue
        if packet.stream is vs:
          if packet.is_discard:
            continue
          vpts.append(pts)
          vdur.append(packet.duration or 0)
          if packet.is_keyframe:
            key_pts.append(pts)
        else:
          # The decoder gives whole codec frames, also for the last (padded) packet.
          end = pts + max(frame_ticks, packet.duration or 0)
          a_first = pts if a_first is None else min(a_first, pts)
          a_end = end if a_end is None else max(a_end, end)
    except av.FFmpegError as e:
      raise DecodeError(f'{self.name}: corrupt or truncated file ({e})') from e
    if not vpts:
      raise DecodeError(f'{self.name}: the video stream has no frames')
    if a_end is None:
      raise DecodeError(f'{self.name}: the audio stream has no samples')
    order = np.argsort(vpts, kind='stable')
    pts = np.asarray(vpts, np.int64)[order]
    last_duration = int(np.asarray(vdur, np.int64)[order][-1])
    if last_duration <= 0:
      rate = vs.average_rate or vs.guessed_rate or VIDEO_FPS
      last_duration = round(1 / (Fraction(rate) * vs.time_base))
    index = _VideoIndex(
      pts=pts,
      keyframe_pts=np.sort(np.asarray(key_pts, np.int64)),
      end_pts=int(pts[-1]) + last_duration,
      time_base=Fraction(vs.time_base),
    )
    atb = Fraction(aus.time_base)
    return index, Fraction(a_end) * atb, max(Fraction(0), -Fraction(a_first) * atb)

  def read(self, frames: tuple[int, int] | None = None, samples: tuple[int, int] | None = None) -> DecodedClip:
    """Decode video frames ``[f0, f1)`` and audio samples ``[s0, s1)``; ``None`` means the whole stream."""
    f0, f1 = frames if frames is not None else (0, self.info.n_frames)
    s0, s1 = samples if samples is not None else (0, self.info.n_samples)
    self._check_window('video frames', f0, f1, self.info.n_frames, VIDEO_FPS)
    self._check_window('audio samples', s0, s1, self.info.n_samples, AUDIO_RATE)
    with self._open() as container:
      try:
        video = self._read_video(container, f0, f1)
        audio = self._read_audio(container, s0 + self._audio_shift, s1 + self._audio_shift)
      except av.FFmpegError as e:
        raise DecodeError(f'{self.name}: corrupt stream ({e})') from e
    return DecodedClip(frames=video, audio=audio, first_frame=f0, first_sample=s0, info=self.info)

  def _check_window(self, what: str, start: int, stop: int, length: int, rate: int) -> None:
    if not 0 <= start < stop <= length:
      raise DecodeError(
        f'{self.name}: needs {what} [{start}, {stop}) ({start / rate:.3f}-{stop / rate:.3f} s) but the clip '
        f'has {length} ({length / rate:.3f} s)'
      )

  def _read_video(self, container, f0: int, f1: int) -> np.ndarray:
    index, vs = self._index, container.streams.video[0]
    needed_pts = index.pts[_slot_to_source(index, f0, f1)]
    wanted = set(needed_pts.tolist())
    # Seek to the last keyframe shown at or before the first needed frame, by its own timestamp: seeking
    # to the needed frame could land, in a container indexed by dts, on a later keyframe.
    k = max(int(np.searchsorted(index.keyframe_pts, needed_pts.min(), side='right')) - 1, 0)
    container.seek(int(index.keyframe_pts[k]), stream=vs, backward=True)
    codec = vs.codec_context
    decoded: dict[int, np.ndarray] = {}
    for packet in container.demux(vs):
      pts = packet.pts if packet.pts is not None else packet.dts
      # Reference frames must be decoded anyway; other frames only when shown.
      codec.skip_frame = 'DEFAULT' if pts is None or pts in wanted else 'NONREF'
      for frame in packet.decode():
        if frame.pts in wanted:
          decoded[frame.pts] = self._to_rgb(frame)
      if len(decoded) == len(wanted):
        break
    if len(decoded) != len(wanted):
      first_missing = min(wanted - decoded.keys())
      raise DecodeError(
        f'{self.name}: corrupt or truncated video: {len(wanted) - len(decoded)} of the frames for '
        f'[{f0}, {f1}) did not decode (first missing at {float(first_missing * index.time_base):.3f} s)'
      )
    return np.stack([decoded[p] for p in needed_pts.tolist()])

  def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
    height, width = self.info.height, self.info.width
    if (frame.height, frame.width) == (height, width):
      return frame.to_ndarray(format='rgb24')
    scaled_h, scaled_w = _scaled_size(frame.height, frame.width)
    rgb = frame.to_ndarray(format='rgb24', width=scaled_w, height=scaled_h, interpolation='BICUBIC')
    return np.ascontiguousarray(rgb[:height, :width])

  def _read_audio(self, container, m0: int, m1: int) -> np.ndarray:
    """Mono float32 samples ``[m0, m1)`` in media time (16 kHz samples from media time 0)."""
    if self._resampled_audio is not None:
      return self._resampled_audio[m0:m1]
    # Seeking to 0 rather than not seeking when the window starts the clip: the original's read_video
    # does that, and the first AAC frame decodes differently.
    seek_sec = max(Fraction(m0, AUDIO_RATE) - Fraction(_AUDIO_PREROLL_SEC), Fraction(0))
    return _decode_audio(container, self.name, seek_sec, m0, m1)


def _decode_audio(container, name: str, seek_sec: Fraction | None, m0: int, m1: int | None) -> np.ndarray:
  """Decode (and resample to 16 kHz) mono samples ``[m0, m1)``, ``m1=None`` to the end of the stream.

  ``seek_sec=None`` decodes from the start of the file without seeking (a resampler's output depends
  on where it started, so resampled audio is only decoded that way).
  """
  aus = container.streams.audio[0]
  if seek_sec is not None:
    container.seek(int(seek_sec / Fraction(aus.time_base)), stream=aus, backward=True)
  resampler = av.AudioResampler(format='fltp', rate=AUDIO_RATE)  # passthrough for 16 kHz fltp
  chunks: list[np.ndarray] = []
  start = None  # media sample index of chunks[0][0]
  have = 0
  decoded = (frame for packet in container.demux(aus) for frame in packet.decode())
  for frame in _flushed(resampler, decoded):
    if start is None:
      start = 0 if frame.pts is None else round(frame.pts * Fraction(frame.time_base) * AUDIO_RATE)
    chunks.append(frame.to_ndarray())
    have += frame.samples
    if m1 is not None and start + have >= m1:
      break
  if start is None or start > m0 or (m1 is not None and start + have < m1):
    got = 'nothing' if start is None else f'[{start}, {start + have})'
    raise DecodeError(
      f"{name}: corrupt or truncated audio: needs media samples [{m0}, {m1 or 'end'}) at {AUDIO_RATE} Hz, "
      f'decoded {got}'
    )
  stop = start + have if m1 is None else m1
  audio = np.concatenate(chunks, axis=1)[:, m0 - start : stop - start]
  return audio.mean(axis=0, dtype=np.float32)


def _flushed(resampler: av.AudioResampler, frames):
  """Resample decoded frames, then drain what the resampler still holds."""
  for frame in frames:
    yield from resampler.resample(frame)
  yield from resampler.resample(None)


def _scaled_size(height: int, width: int, short_side: int = SHORT_SIDE) -> tuple[int, int]:
  """Shorter side to 256 px, aspect kept, longer side truncated (ffmpeg's ``scale`` with an expression)."""
  short = min(height, width)
  return height * short_side // short, width * short_side // short


def resize_short_side(frames: np.ndarray, short_side: int = SHORT_SIDE) -> np.ndarray:
  """RGB uint8 frames (..., H, W, 3) resized so that the shorter side is `short_side`, as decoding resizes them
  (bicubic swscale, the longer side truncated); frames already that size are returned as they are."""
  height, width = frames.shape[-3:-1]
  if min(height, width) == short_side:
    return frames
  scaled_h, scaled_w = _scaled_size(height, width, short_side)
  flat = np.ascontiguousarray(frames).reshape(-1, height, width, 3)
  resized = [av.VideoFrame.from_ndarray(f, format='rgb24').reformat(
      width=scaled_w, height=scaled_h, interpolation='BICUBIC').to_ndarray() for f in flat]
  return np.stack(resized).reshape(*frames.shape[:-3], scaled_h, scaled_w, 3)


def _output_size(height: int, width: int) -> tuple[int, int]:
  if min(height, width) == SHORT_SIDE:
    return height, width
  scaled_h, scaled_w = _scaled_size(height, width)
  return scaled_h - scaled_h % 2, scaled_w - scaled_w % 2


def _slot_to_source(index: _VideoIndex, f0: int, f1: int) -> np.ndarray:
  """Index into ``index.pts`` of the frame shown in each 25 fps slot ``f0 .. f1 - 1``.

  Slot k shows the last frame with ``t < (k + 1/2) / 25``; compared in integers, exactly:
  ``pts * num * 2 * 25 < (2k + 1) * den``.
  """
  tb = index.time_base
  lhs = index.pts * (tb.numerator * 2 * VIDEO_FPS)
  rhs = (2 * np.arange(f0, f1, dtype=np.int64) + 1) * tb.denominator
  return np.maximum(np.searchsorted(lhs, rhs, side='left') - 1, 0)


def decode_clip(source: MediaSource, *, original_decoder: bool = False, name: str | None = None) -> DecodedClip:
  """Decode a whole clip, as the original's ``read_video`` does (frames 0.., samples 0..)."""
  return MediaFile(source, original_decoder=original_decoder, name=name).read()
