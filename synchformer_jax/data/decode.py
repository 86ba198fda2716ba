"""Decode audio-visual clips with PyAV into the original's model-input conventions.

The original (Synchformer) reads every clip in full with ``torchvision.io.read_video`` from files that were
re-encoded beforehand to 25 fps, shorter side 256 px, 16 kHz AAC. This module gives the same arrays, but:

* **Windowed.** :meth:`MediaFile.read` decodes only the frames and samples a model input needs. Video
  seeks to the last keyframe before the window. Packets that are outside the window and are not
  reference frames are not decoded (``skip_frame=NONREF``), and decoding stops once the window is
  complete. Audio at 16 kHz seeks to :data:`_AUDIO_PREROLL_SEC` before the window and drops that
  pre-roll, which keeps AAC's overlapped transform exact: the samples equal a full decode bit for bit.
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
  - audio at another rate goes through libswresample (PyAV ``AudioResampler``). Its output is aligned
    to the input start, so such audio is decoded from the start of the stream up to the window end
    (cheap next to video), which keeps the result identical however it is windowed;
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

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Union

import av
import numpy as np

VIDEO_FPS = 25
AUDIO_RATE = 16_000
SHORT_SIDE = 256
# Audio decoded before a seek target and thrown away: AAC needs one frame (1,024 samples) of overlap.
_AUDIO_PREROLL_SEC = 0.2

MediaSource = Union[str, os.PathLike, bytes, BinaryIO]


class DecodeError(ValueError):
    """A clip cannot give the requested frames and samples. The message names the file and what was expected."""


@dataclass(frozen=True)
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

    @property
    def duration_sec(self) -> tuple[float, float]:
        return self.n_frames / VIDEO_FPS, self.n_samples / AUDIO_RATE


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class _VideoIndex:
    """Presentation timestamps of all video packets, in display order, with the keyframe ones for seeking."""

    pts: np.ndarray  # (F,) int64, sorted
    keyframe_pts: np.ndarray  # (K,) int64, sorted
    keyframe_seek_ts: np.ndarray  # (K,) int64: dts (or pts) of the same keyframes, what the demuxer indexes
    end_pts: int  # pts just after the last frame
    time_base: Fraction


def _source_name(source: MediaSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{type(source).__name__}>"


class MediaFile:
    """An open clip: :attr:`info` from a packet scan (no decoding), then :meth:`read` for any window.

    ``source`` is a path, the encoded bytes of a file (e.g. an mp4 stored in a record), or a seekable
    binary file object. ``name`` is used in error messages (defaults to the path).
    """

    def __init__(self, source: MediaSource, *, original_decoder: bool = False, name: str | None = None):
        self.name = _source_name(source, name)
        try:
            self._container = av.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except (av.FFmpegError, OSError) as e:
            raise DecodeError(f"{self.name}: not a readable media file ({e})") from e
        try:
            self._vstream, self._astream = self._streams()
            self._index, audio_end_sec, audio_pad_sec = self._scan_packets()
            self._audio_shift = int(audio_pad_sec * AUDIO_RATE) if original_decoder else 0
            self.info = self._make_info(audio_end_sec)
        except BaseException:
            self._container.close()
            raise

    def __enter__(self) -> MediaFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def _streams(self):
        container = self._container
        if not container.streams.video:
            raise DecodeError(f"{self.name}: has no video stream; expected a video with an audio track")
        if not container.streams.audio:
            raise DecodeError(f"{self.name}: has no audio stream; expected a video with an audio track")
        return container.streams.video[0], container.streams.audio[0]

    def _scan_packets(self) -> tuple[_VideoIndex, Fraction, Fraction]:
        """Demux (not decode) every packet: video timestamps, audio end time and leading audio padding."""
        vs, aus = self._vstream, self._astream
        vpts, vdur, key_pts, key_seek = [], [], [], []
        a_first, a_end = None, None
        frame_ticks = Fraction(aus.codec_context.frame_size) / (aus.rate * Fraction(aus.time_base))
        try:
            for packet in self._container.demux(vs, aus):
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
                        key_seek.append(packet.dts if packet.dts is not None else pts)
                else:
                    # The decoder gives whole codec frames, also for the last (padded) packet.
                    end = pts + max(frame_ticks, packet.duration or 0)
                    a_first = pts if a_first is None else min(a_first, pts)
                    a_end = end if a_end is None else max(a_end, end)
        except av.FFmpegError as e:
            raise DecodeError(f"{self.name}: corrupt or truncated file ({e})") from e
        if not vpts:
            raise DecodeError(f"{self.name}: the video stream has no frames")
        if a_end is None:
            raise DecodeError(f"{self.name}: the audio stream has no samples")
        order = np.argsort(vpts, kind="stable")
        pts = np.asarray(vpts, np.int64)[order]
        last_duration = np.asarray(vdur, np.int64)[order][-1]
        if last_duration <= 0:
            rate = vs.average_rate or vs.guessed_rate or VIDEO_FPS
            last_duration = round(1 / (Fraction(rate) * vs.time_base))
        key_order = np.argsort(key_pts, kind="stable")
        index = _VideoIndex(
            pts=pts,
            keyframe_pts=np.asarray(key_pts, np.int64)[key_order],
            keyframe_seek_ts=np.asarray(key_seek, np.int64)[key_order],
            end_pts=int(pts[-1] + last_duration),
            time_base=Fraction(vs.time_base),
        )
        atb = Fraction(aus.time_base)
        return index, Fraction(a_end) * atb, max(Fraction(0), -Fraction(a_first) * atb)

    def _make_info(self, audio_end_sec: Fraction) -> MediaInfo:
        vs, aus, index = self._vstream, self._astream, self._index
        height, width = _output_size(vs.codec_context.height, vs.codec_context.width)
        # Round to the nearest slot, consistent with the nearest-frame rule of _slot_to_source.
        n_frames = int(Fraction(index.end_pts) * index.time_base * VIDEO_FPS + Fraction(1, 2))
        return MediaInfo(
            name=self.name,
            n_frames=n_frames,
            n_samples=int(audio_end_sec * AUDIO_RATE) - self._audio_shift,
            height=height,
            width=width,
            source_fps=float(vs.average_rate or 0),
            source_rate=aus.rate,
            source_channels=aus.channels,
            audio_start_sec=self._audio_shift / AUDIO_RATE,
        )

    def read(self, frames: tuple[int, int] | None = None, samples: tuple[int, int] | None = None) -> DecodedClip:
        """Decode video frames ``[f0, f1)`` and audio samples ``[s0, s1)``; ``None`` means the whole stream."""
        f0, f1 = frames if frames is not None else (0, self.info.n_frames)
        s0, s1 = samples if samples is not None else (0, self.info.n_samples)
        self._check_window("video frames", f0, f1, self.info.n_frames, VIDEO_FPS)
        self._check_window("audio samples", s0, s1, self.info.n_samples, AUDIO_RATE)
        try:
            video = self._read_video(f0, f1)
            audio = self._read_audio(s0 + self._audio_shift, s1 + self._audio_shift)
        except av.FFmpegError as e:
            raise DecodeError(f"{self.name}: corrupt stream ({e})") from e
        return DecodedClip(frames=video, audio=audio, first_frame=f0, first_sample=s0, info=self.info)

    def _check_window(self, what: str, start: int, stop: int, length: int, rate: int) -> None:
        if not 0 <= start < stop <= length:
            raise DecodeError(
                f"{self.name}: needs {what} [{start}, {stop}) ({start / rate:.3f}-{stop / rate:.3f} s) but the clip "
                f"has {length} ({length / rate:.3f} s)"
            )

    def _read_video(self, f0: int, f1: int) -> np.ndarray:
        index, vs = self._index, self._vstream
        source = _slot_to_source(index, f0, f1)
        needed_pts = index.pts[source]
        wanted = set(needed_pts.tolist())
        first = int(needed_pts.min())
        # The last keyframe shown at or before the first needed frame; seek by the timestamp the demuxer indexes.
        k = max(int(np.searchsorted(index.keyframe_pts, first, side="right")) - 1, 0)
        self._container.seek(int(index.keyframe_seek_ts[k]), stream=vs, backward=True)
        codec = vs.codec_context
        decoded: dict[int, np.ndarray] = {}
        for packet in self._container.demux(vs):
            pts = packet.pts if packet.pts is not None else packet.dts
            # Reference frames must be decoded anyway; other frames only when shown.
            codec.skip_frame = "DEFAULT" if pts is None or pts in wanted else "NONREF"
            for frame in packet.decode():
                if frame.pts in wanted:
                    decoded[frame.pts] = self._to_rgb(frame)
            if len(decoded) == len(wanted):
                break
        codec.skip_frame = "DEFAULT"
        if len(decoded) != len(wanted):
            missing = sorted(wanted - decoded.keys())
            raise DecodeError(
                f"{self.name}: corrupt or truncated video: {len(missing)} of the frames for [{f0}, {f1}) "
                f"did not decode (first missing at {float(missing[0] * index.time_base):.3f} s)"
            )
        return np.stack([decoded[p] for p in needed_pts.tolist()])

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        height, width = self.info.height, self.info.width
        if (frame.height, frame.width) == (height, width):
            return frame.to_ndarray(format="rgb24")
        scaled_h, scaled_w = _scaled_size(frame.height, frame.width)
        rgb = frame.to_ndarray(format="rgb24", width=scaled_w, height=scaled_h, interpolation="BICUBIC")
        return np.ascontiguousarray(rgb[:height, :width])

    def _read_audio(self, m0: int, m1: int) -> np.ndarray:
        """Mono float32 samples ``[m0, m1)`` in media time (16 kHz samples from media time 0)."""
        aus = self._astream
        resampler = av.AudioResampler(format="fltp", rate=AUDIO_RATE)  # passthrough for 16 kHz fltp
        seek_sec = Fraction(m0, AUDIO_RATE) - Fraction(_AUDIO_PREROLL_SEC)
        # A resampler's output depends on where it started, so only 16 kHz audio may seek into the stream.
        if aus.rate != AUDIO_RATE or seek_sec <= 0:
            seek_sec = Fraction(0)
        self._container.seek(int(seek_sec / Fraction(aus.time_base)), stream=aus, backward=True)
        chunks: list[np.ndarray] = []
        start = None  # media sample index of chunks[0][0]
        have = 0
        packets = self._container.demux(aus)
        for frame in _flushed(resampler, (f for p in packets for f in p.decode())):
            if start is None:
                start = 0 if frame.pts is None else round(frame.pts * Fraction(frame.time_base) * AUDIO_RATE)
            chunks.append(frame.to_ndarray())
            have += frame.samples
            if start + have >= m1:
                break
        if start is None or start > m0 or start + have < m1:
            got = "nothing" if start is None else f"[{start}, {start + have})"
            raise DecodeError(
                f"{self.name}: corrupt or truncated audio: needs media samples [{m0}, {m1}) at {AUDIO_RATE} Hz, "
                f"decoded {got}"
            )
        audio = np.concatenate(chunks, axis=1)[:, m0 - start : m1 - start]
        return audio.mean(axis=0, dtype=np.float32)


def _flushed(resampler: av.AudioResampler, frames):
    """Resample decoded frames, then drain what the resampler still holds."""
    for frame in frames:
        yield from resampler.resample(frame)
    yield from resampler.resample(None)


def _scaled_size(height: int, width: int) -> tuple[int, int]:
    """Shorter side to 256 px, aspect kept, longer side truncated (ffmpeg's ``scale`` with an expression)."""
    short = min(height, width)
    return height * SHORT_SIDE // short, width * SHORT_SIDE // short


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
    return np.maximum(np.searchsorted(lhs, rhs, side="left") - 1, 0)


def open_media(source: MediaSource, *, original_decoder: bool = False, name: str | None = None) -> MediaFile:
    """Open a clip for windowed reading; use as a context manager. See :class:`MediaFile`."""
    return MediaFile(source, original_decoder=original_decoder, name=name)


def decode_clip(source: MediaSource, *, original_decoder: bool = False, name: str | None = None) -> DecodedClip:
    """Decode a whole clip, as the original's ``read_video`` does (frames 0.., samples 0..)."""
    with open_media(source, original_decoder=original_decoder, name=name) as media:
        return media.read()
