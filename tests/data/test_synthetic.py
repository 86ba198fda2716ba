"""Synthetic sparse-sync clips: determinism, real mp4 streams in sync, sparsity, and no shortcut."""
import io

import av
import numpy as np
import pytest

from synchformer_jax.data import synthetic

SMALL = synthetic.SyntheticSpec(duration_sec=2.0, height=64, width=64)


def _decode(data: bytes) -> tuple[np.ndarray, np.ndarray, dict]:
  """Full PyAV decode (edit lists honoured): frames (T, H, W, 3), mono audio, stream facts."""
  with av.open(io.BytesIO(data)) as container:
    video, audio = container.streams.video[0], container.streams.audio[0]
    facts = {
        'video_codec': video.codec_context.name,
        'fps': float(video.average_rate),
        'audio_codec': audio.codec_context.name,
        'audio_rate': audio.codec_context.sample_rate,
        'channels': audio.codec_context.layout.nb_channels,
    }
    frames = np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)])
  with av.open(io.BytesIO(data)) as container:
    waveform = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)])
  return frames, waveform, facts


def test_render_is_deterministic_given_spec_and_seed():
  a, b, other = synthetic.render_clip(SMALL, 7), synthetic.render_clip(SMALL, 7), synthetic.render_clip(SMALL, 8)
  assert a.frames.shape == (50, 64, 64, 3) and a.frames.dtype == np.uint8
  assert a.audio.shape == (32000,) and a.audio.dtype == np.float32
  assert np.abs(a.audio).max() <= 1.0
  np.testing.assert_array_equal(a.frames, b.frames)
  np.testing.assert_array_equal(a.audio, b.audio)
  np.testing.assert_array_equal(a.event_times_sec, b.event_times_sec)
  assert a.label == b.label and 0 <= a.label < len(synthetic.EVENT_KINDS)
  assert not np.array_equal(a.audio, other.audio)


def test_mp4_is_h264_aac_byte_identical_and_in_sync():
  data, clip = synthetic.generate_clip(SMALL, 3)
  again, _ = synthetic.generate_clip(SMALL, 3)
  assert data == again, 'x264 is run single-threaded so that clips are byte-identical'
  frames, waveform, facts = _decode(data)
  assert facts == {'video_codec': 'h264', 'fps': 25.0, 'audio_codec': 'aac', 'audio_rate': 16000, 'channels': 1}
  # Frame k of the file is rendered frame k (lossy, but close), so video starts at time 0.
  assert frames.shape == clip.frames.shape
  assert np.abs(frames.astype(float) - clip.frames).mean() < 4.0
  # Audio sample n of the file is rendered sample n: the AAC priming is not a shift.
  n = clip.audio.size
  assert waveform.size >= n
  lags = range(-64, 65)
  scores = [np.dot(np.roll(waveform[:n], lag), clip.audio) for lag in lags]
  assert lags[int(np.argmax(scores))] == 0


def test_events_are_sparse_in_time_and_space():
  counts = [synthetic.render_clip(synthetic.SyntheticSpec(height=32, width=32), seed).event_times_sec.size for seed in range(40)]
  # Poisson with mean event_rate_hz * 10 s = 4 per clip.
  assert 3.0 < np.mean(counts) < 5.0
  clip = synthetic.render_clip(synthetic.SyntheticSpec(beacon_period_sec=0.0), 3)  # the beacon is not sparse
  moving = (clip.frames.max(axis=0).astype(int) - clip.frames.min(axis=0)).max(axis=-1) > 40
  assert moving.mean() < 0.06, 'actor and distractors together cover a few per cent of the frame'


def test_spec_rejects_odd_frame_sizes():
  with pytest.raises(ValueError, match='even'):
    synthetic.SyntheticSpec(height=255)


def test_kinds_restrict_the_actor_and_label():
  spec = synthetic.SyntheticSpec(duration_sec=2.0, height=64, width=64, kinds=('flash',))
  assert {synthetic.render_clip(spec, seed).label for seed in range(6)} == {synthetic.EVENT_KINDS.index('flash')}
  with pytest.raises(ValueError, match='kinds'):
    synthetic.SyntheticSpec(kinds=('whistle',))


def _lamp_red_and_pitch(spec: synthetic.SyntheticSpec, seeds: range) -> np.ndarray:
  """(red level of the lit lamp, dominant frequency of the soundtrack in Hz) of the clips with a flash."""
  rows = []
  for seed in seeds:
    clip = synthetic.render_clip(spec, seed)
    if clip.event_times_sec.size:
      spectrum = np.abs(np.fft.rfft(clip.audio))
      rows.append((clip.frames[..., 0].max(), np.argmax(spectrum) * spec.audio_rate / clip.audio.size))
  return np.array(rows, float).T


@pytest.mark.parametrize('follows', [True, False])
def test_voice_follows_color_ties_pitch_to_the_actor(follows):
  # One lamp, no distractors or off-screen sounds, dense events: the brightest red is the lit lamp's
  # and the loudest frequency its beep's.
  spec = synthetic.SyntheticSpec(duration_sec=2.0, height=64, width=64, kinds=('flash',), num_distractors=0,
                                 offscreen_sound_rate_hz=0.0, event_rate_hz=3.0, object_size=0.3,
                                 video_noise=0.0, audio_noise=0.0, voice_follows_color=follows, beacon_period_sec=0.0)
  red, pitch = _lamp_red_and_pitch(spec, range(16))
  correlation = np.corrcoef(red, pitch)[0, 1]
  assert (correlation > 0.9) if follows else (abs(correlation) < 0.6), correlation


def _beacon_angles(clip: synthetic.SyntheticClip, spec: synthetic.SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
  """Per frame: the lamp's colour angle, read from the centre pixel, and the hum's, from its two notes' loudness."""
  rgb = clip.frames[:, spec.height // 2, spec.width // 2].astype(float)
  video = np.arctan2((rgb[:, 1] - rgb[:, 2]) / np.sqrt(3), rgb[:, 0] - 127.5)
  samples = spec.audio_rate // spec.fps
  t = np.arange(samples) / spec.audio_rate
  frames = clip.audio[: spec.num_frames * samples].reshape(spec.num_frames, samples)
  window = np.hanning(samples)  # keeps the other note and the harmonics from leaking into a note's bin
  loudness = [2 * np.abs(frames @ (window * np.exp(-2j * np.pi * note * t))) / window.sum() / spec.beacon_level
              for note in synthetic._BEACON_NOTES_HZ]  # (1 + cos) / 2 and (1 + sin) / 2
  audio = np.arctan2(2 * loudness[1] - 1, 2 * loudness[0] - 1)
  return video, audio


def test_beacon_colour_and_hum_follow_one_angle_from_a_random_start():
  spec = synthetic.SyntheticSpec(height=64, width=64, num_distractors=0, event_rate_hz=0.0, offscreen_sound_rate_hz=0.0,
                                 video_noise=0.0, audio_noise=0.0, beacon_period_sec=5.0)
  starts = []
  for seed in range(3):
    video, audio = _beacon_angles(synthetic.render_clip(spec, seed), spec)
    assert np.abs(np.angle(np.exp(1j * (video - audio)))).max() < 0.1, 'the streams show the same angle'
    turns = np.unwrap(video) / (2 * np.pi)
    np.testing.assert_allclose(turns[-1] - turns[0], (spec.num_frames - 1) / spec.fps / 5.0, atol=0.02)
    starts.append(video[0])
  assert np.ptp(starts) > 0.5, 'each clip starts at its own angle, so the angle does not tell the time'
  with pytest.raises(ValueError, match='beacon_period_sec'):
    synthetic.SyntheticSpec(beacon_period_sec=4.0)


def test_fixed_offsets_are_grid_values_with_both_windows_inside_the_clip():
  rng = np.random.default_rng(0)
  grid = np.round(np.linspace(-2, 2, 21), 2)
  for _ in range(500):
    offset, vstart = synthetic.sample_offset_and_vstart(rng, 250)
    assert offset in grid and vstart == round(vstart, 2)
    assert round(vstart * 25, 6) == int(round(vstart * 25, 6)), 'on the frame grid'
    assert 0 <= vstart and vstart + 5 <= 10 + 1e-9
    assert 0 <= vstart + offset and vstart + offset + 5 <= 10 + 1e-9
  with pytest.raises(ValueError, match='too few'):
    synthetic.sample_offset_and_vstart(np.random.default_rng(0), 100)
