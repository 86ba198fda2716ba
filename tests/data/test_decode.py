"""The PyAV decoder: timing of resampled inputs, windowed reads, the original-decoder option, bad inputs."""
import fractions
import hashlib

import av
import numpy as np
import pytest

from synchformer_jax.data import decode
from synchformer_jax.data.decode import AUDIO_RATE, DecodeError, MediaFile, decode_clip
from synchformer_jax.data.transforms import STAGE_II, build_test_example
from tests.conftest import SHARED_DIR, require_fixture

VGGSOUND_CLIP = SHARED_DIR / 'samples' / '3qesirWAGt4_20000_30000.mp4'  # 1 keyframe, AAC edit list at 1024
LRS3_CLIP = SHARED_DIR / 'samples' / 'lrs3_C8zY0oAdQrs_00018.mp4'  # stereo, keyframes at frames 0 and 250


def _md5(array):
  return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


def _write_clip(path, frames=None, fps=25, audio=None, rate=AUDIO_RATE, layout='mono'):
  """Encode (T, H, W, 3) uint8 frames (H.264) and (C, N) float audio (AAC) with PyAV; either may be None."""
  with av.open(str(path), 'w') as out:  # all streams are added before the first packet is written
    if frames is not None:
      vs = out.add_stream('libx264', rate=fps, options={'crf': '12', 'preset': 'ultrafast'})
      vs.height, vs.width, vs.pix_fmt = frames.shape[1], frames.shape[2], 'yuv420p'
    if audio is not None:
      aus = out.add_stream('aac', rate=rate, layout=layout)
    if frames is not None:
      for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format='rgb24')
        frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
        out.mux(vs.encode(frame))
      out.mux(vs.encode())
    if audio is not None:
      frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, np.float32), format='fltp', layout=layout)
      frame.sample_rate, frame.pts, frame.time_base = rate, 0, fractions.Fraction(1, rate)
      out.mux(aus.encode(frame))
      out.mux(aus.encode(None))


MARKER_LEVELS = 4  # grey-level step per source frame index in the marker block


def _marked_frames(n, height, width, seed=0):
  """Noisy frames whose top-left 64x64 block has grey level 8 + 4 j: the source frame index j, readable after coding."""
  frames = np.random.default_rng(seed).integers(60, 200, size=(n, height, width, 3), dtype=np.uint8)
  frames[:, :64, :64] = (8 + MARKER_LEVELS * np.arange(n, dtype=np.uint8))[:, None, None, None]
  return frames


def _read_marker(frames):
  return np.round((frames[:, 8:32, 8:32].astype(np.float64).mean(axis=(1, 2, 3)) - 8) / MARKER_LEVELS).astype(int)


@pytest.fixture(scope='module')
def reference_audio():
  return decode_clip(require_fixture(VGGSOUND_CLIP, 'sample clip')).audio[:2 * AUDIO_RATE]


@pytest.fixture(scope='module')
def resampled_clip(tmp_path_factory, reference_audio):
  """2 s at 30 fps, 360x640, 44.1 kHz stereo (L = a + tone, R = a - tone), in Matroska."""
  path = tmp_path_factory.mktemp('media') / 'clip_30fps_44k_stereo.mkv'
  rate = 44100
  t = np.arange(2 * rate) / rate
  a = np.interp(t, np.arange(len(reference_audio)) / AUDIO_RATE, reference_audio)
  tone = 0.2 * np.sin(2 * np.pi * 3000 * t)
  _write_clip(path, _marked_frames(60, 360, 640), fps=30, audio=np.stack([a + tone, a - tone]), rate=rate,
              layout='stereo')
  return path


def test_resampled_input_is_25fps_16khz_256px_mono_and_aligned(resampled_clip, reference_audio):
  media = MediaFile(resampled_clip)
  info = media.info
  assert (info.source_fps, info.source_rate, info.source_channels) == (30.0, 44100, 2)
  assert info.n_frames == 50
  # AAC pads the last frame: at most 1,024 samples at 44.1 kHz (372 at 16 kHz) beyond the 2 s
  assert 2 * AUDIO_RATE <= info.n_samples <= 2 * AUDIO_RATE + 372
  clip = media.read()
  # 640 * 256 / 360 = 455.1 -> 455, then cropped to even
  assert clip.frames.shape == (50, 256, 454, 3) and clip.frames.dtype == np.uint8

  # Slot k shows the nearest source frame j (the last with j / 30 < (k + 1/2) / 25), as ffmpeg's fps filter.
  k = np.arange(50)
  expected = np.ceil((k + 0.5) * 30 / 25).astype(int) - 1
  np.testing.assert_array_equal(_read_marker(clip.frames), expected)

  # Audio: channels averaged (the +-tone cancels), resampled to 16 kHz with no time shift.
  audio = clip.audio[: 2 * AUDIO_RATE]
  lags = np.arange(-20, 21)
  middle = slice(4000, 28000)
  scores = [np.dot(audio[middle], np.roll(reference_audio, lag)[middle]) for lag in lags]
  assert lags[int(np.argmax(scores))] == 0
  assert np.corrcoef(audio[middle], reference_audio[middle])[0, 1] > 0.95

  window = media.read((10, 20), (5000, 9000))
  np.testing.assert_array_equal(window.frames, clip.frames[10:20])
  np.testing.assert_array_equal(window.audio, clip.audio[5000:9000])


def test_windowed_read_equals_full_decode():
  media = MediaFile(require_fixture(LRS3_CLIP, 'sample clip'))
  full = media.read()
  assert full.frames.shape == (393, 256, 454, 3) and full.audio.shape == (251_904,)
  full_md5 = [_md5(frame) for frame in full.frames]
  for f0, f1, s0, s1 in [(0, 16, 0, 10_240), (123, 160, 70_001, 93_000), (248, 260, 150_000, 200_000),
                         (380, 393, 240_000, 251_904)]:
    window = media.read((f0, f1), (s0, s1))
    assert [_md5(frame) for frame in window.frames] == full_md5[f0:f1]
    np.testing.assert_array_equal(window.audio, full.audio[s0:s1])
    assert (window.video_start_sec, window.audio_start_sec) == (f0 / 25, s0 / AUDIO_RATE)


@pytest.mark.parametrize('original_decoder', [False, True])
def test_windowed_audio_is_exact_around_the_seek_preroll(original_decoder):
  # Windows starting within the 0.2-s pre-roll decode from 0; later ones seek, past the AAC priming packet.
  media = MediaFile(require_fixture(VGGSOUND_CLIP, 'sample clip'), original_decoder=original_decoder)
  full = media.read((0, 1)).audio
  for s0 in (1, 3199, 3201, 3300, 5000, media.info.n_samples - 10_240):
    np.testing.assert_array_equal(media.read((0, 1), (s0, s0 + 10_240)).audio, full[s0:s0 + 10_240])


class _CountingContainer:
  """Wraps a PyAV container and counts the video packets a read demuxes (all go to the decoder)."""

  video_packets = 0

  def __init__(self, container):
    self._container = container

  def __getattr__(self, name):
    return getattr(self._container, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._container.close()

  def demux(self, *streams):
    for packet in self._container.demux(*streams):
      _CountingContainer.video_packets += packet.size > 0 and packet.stream.type == 'video'
      yield packet


@pytest.mark.parametrize('clip, frames, most_packets', [
  (LRS3_CLIP, (300, 316), 90),  # seeks to the keyframe at 250 instead of decoding from 0
  (VGGSOUND_CLIP, (0, 16), 25),  # stops soon after the window instead of reading all 250
])
def test_windowed_read_seeks_and_stops_early(monkeypatch, clip, frames, most_packets):
  media = MediaFile(require_fixture(clip, 'sample clip'))
  monkeypatch.setattr(decode.av, 'open', lambda *a, _open=av.open, **k: _CountingContainer(_open(*a, **k)))
  _CountingContainer.video_packets = 0
  media.read(frames, (0, 1000))
  assert _CountingContainer.video_packets <= most_packets
  _CountingContainer.video_packets = 0
  media.read()
  assert _CountingContainer.video_packets == media.info.n_frames


def test_original_decoder_drops_the_first_aac_frame_of_edit_listed_audio():
  clip_path = require_fixture(VGGSOUND_CLIP, 'sample clip')
  modern, original = MediaFile(clip_path), MediaFile(clip_path, original_decoder=True)
  assert (modern.info.audio_start_sec, original.info.audio_start_sec) == (0.0, 0.064)
  assert modern.info.n_samples - original.info.n_samples == 1024
  a, b = modern.read((0, 1), (1024, 5024)), original.read((0, 1), (0, 4000))
  np.testing.assert_array_equal(a.audio, b.audio)
  assert a.audio_start_sec == b.audio_start_sec == 0.064
  np.testing.assert_array_equal(a.frames, b.frames)
  lrs3 = MediaFile(require_fixture(LRS3_CLIP, 'sample clip'), original_decoder=True)  # edit list at 0
  assert lrs3.info.audio_start_sec == 0.0 and lrs3.info.n_samples == 251_904


def test_bytes_and_file_object_sources_read_the_same():
  clip_path = require_fixture(VGGSOUND_CLIP, 'sample clip')
  expected = MediaFile(clip_path).read((40, 45), (30_000, 31_000))
  with open(clip_path, 'rb') as f:
    for source in (clip_path.read_bytes(), f):
      clip = MediaFile(source, name='record-17').read((40, 45), (30_000, 31_000))
      np.testing.assert_array_equal(clip.frames, expected.frames)
      np.testing.assert_array_equal(clip.audio, expected.audio)


def _faststart_copy(src, dst):
  """Remux with the index (moov) first, so a truncated copy still opens."""
  with av.open(str(src)) as inp, av.open(str(dst), 'w', options={'movflags': 'faststart'}) as out:
    streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
    for packet in inp.demux():
      if packet.dts is not None:
        packet.stream = streams[packet.stream.index]
        out.mux(packet)


@pytest.mark.parametrize('kind', ['not_media', 'missing_file', 'no_audio', 'no_video', 'truncated',
                                  'truncated_faststart', 'too_short'])
def test_bad_input_raises_a_clear_error(tmp_path, kind):
  path = tmp_path / f'{kind}.mp4'
  expected = {'not_media': 'not a readable media file', 'missing_file': 'not a readable media file',
              'no_audio': 'has no audio stream', 'no_video': 'has no video stream',
              'truncated': 'not a readable media file', 'truncated_faststart': 'needs video frames',
              'too_short': 'too short'}[kind]
  if kind == 'not_media':
    path.write_text('name,offset_sec\nclip,0.4\n' * 100)
  elif kind == 'no_audio':
    _write_clip(path, frames=_marked_frames(10, 64, 64))
  elif kind == 'no_video':
    path = path.with_suffix('.m4a')
    _write_clip(path, audio=np.zeros((1, AUDIO_RATE)))
  elif kind == 'truncated':
    data = require_fixture(VGGSOUND_CLIP, 'sample clip').read_bytes()
    path.write_bytes(data[: len(data) // 2])  # its index is at the end
  elif kind == 'truncated_faststart':
    _faststart_copy(require_fixture(VGGSOUND_CLIP, 'sample clip'), tmp_path / 'full.mp4')
    data = (tmp_path / 'full.mp4').read_bytes()
    path.write_bytes(data[: len(data) // 2])
  elif kind == 'too_short':  # 2 s; Stage II needs 5 s
    _write_clip(path, frames=_marked_frames(50, 256, 256), audio=np.zeros((1, 2 * AUDIO_RATE)))

  with pytest.raises(DecodeError, match=expected) as error:
    if kind == 'truncated_faststart':
      MediaFile(path).read((200, 210), (0, 100))  # the index survives, the second half of the data does not
    else:
      build_test_example(path, STAGE_II, offset_sec=0.0, vstart_sec=0.0)
  assert str(path) in str(error.value)
