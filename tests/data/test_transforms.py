"""Transforms: the original's index arithmetic, and the training augmentations by their statistics."""
import dataclasses

import numpy as np
import pytest

from synchformer_jax.data import audio as audio_lib
from synchformer_jax.data.decode import DecodeError, MediaInfo
from synchformer_jax.data.transforms import (
  IN_SYNC_RANGE_SEC, OFFSET_GRID, SEGMENT_SAMPLES, STAGE_I, STAGE_II, STAGE_III, augment_frames,
  build_test_example, build_train_example, center_crop_box, color_jitter, equalify_lengths, normalise_rgb,
  plan_clip, quantise_offset, resize_bilinear,
)
from tests.conftest import SHARED_DIR, require_fixture

VGGSOUND_CLIP = SHARED_DIR / 'samples' / '3qesirWAGt4_20000_30000.mp4'
N_DRAWS = 2000


def _info(n_frames=250, n_samples=160_768, height=256, width=454):
  return MediaInfo(name='clip.mp4', n_frames=n_frames, n_samples=n_samples, height=height, width=width,
                   source_fps=25.0, source_rate=16000, source_channels=1, audio_start_sec=0.0)


def _plans(stage, n=N_DRAWS, seed=0, **kwargs):
  rng = np.random.default_rng(seed)
  return [plan_clip(_info(), stage, train=True, rng=rng, **kwargs) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------
# Index arithmetic (spec §1.5, §2.0-2.5)


def test_equalify_cuts_both_streams_to_the_shorter():
  assert equalify_lengths(250, 160_768) == (250, 160_000)
  assert equalify_lengths(393, 251_904) == (250, 160_000)  # 10-s cap
  assert equalify_lengths(250, 159_840) == (249, 159_360)  # audio 9.99 s


def test_offset_grid_and_quantisation():
  assert OFFSET_GRID.dtype == np.float32 and len(OFFSET_GRID) == 21
  assert [quantise_offset(x)[1] for x in (-2.0, -1.8, 0.0, 1.6, 2.0, 0.09, 0.11, 7.0)] == [0, 1, 10, 18, 20, 10, 11, 20]
  assert quantise_offset(1.6)[0] == np.float32(1.6)


def test_center_crop_rounds_half_to_even():
  assert center_crop_box(256, 454) == (16, 115)
  assert center_crop_box(256, 340) == (16, 58)
  assert center_crop_box(256, 455) == (16, 116)  # 115.5
  assert center_crop_box(256, 341) == (16, 58)  # 58.5


def test_fixed_offset_keeps_the_originals_float_truncation():
  # int(4.6 * 25) = 114 (not 115); the audio start uses the CSV vstart: int((4.6 - 1.6) * 16000) = 47999
  plan = plan_clip(_info(), STAGE_II, offset_sec=-1.6, vstart_sec=4.6)
  np.testing.assert_array_equal(plan.video_frame_index[:, 0], 114 + 2 + 8 * np.arange(14))
  np.testing.assert_array_equal(plan.audio_sample_start, 47_999 + 1280 + 5120 * np.arange(14))
  assert (plan.crop_top, plan.crop_left, plan.crop_size) == (16, 115, 224)
  assert plan.targets['offset_target'] == 2 and plan.targets['offset_sec'] == np.float32(-1.6)
  assert plan.frame_window == (116, 236) and plan.sample_window == (49_279, 49_279 + 76_800)


def test_negative_audio_start_within_one_frame_is_clamped_else_an_error():
  plan = plan_clip(_info(), STAGE_II, offset_sec=-0.02, vstart_sec=0.0)  # -320 samples -> 0
  assert plan.audio_sample_start[0] == 1280
  with pytest.raises(DecodeError, match='clip.mp4.*before the clip'):
    plan_clip(_info(), STAGE_II, offset_sec=-0.2, vstart_sec=0.0)


def test_test_time_segments_are_centred():
  stage1 = plan_clip(_info(), STAGE_I)
  np.testing.assert_array_equal(stage1.video_frame_index, 13 + np.arange(224).reshape(14, 16))
  np.testing.assert_array_equal(stage1.audio_sample_start, 8320 + 10_240 * np.arange(14))
  # Stage III: 4.48-s crop of 13 segments, which leaves no room to centre
  stage3 = plan_clip(_info(), STAGE_III, rng=np.random.default_rng(0))
  starts = stage3.video_frame_index[:, 0]
  np.testing.assert_array_equal(np.diff(starts), 8)
  assert stage3.video_frame_index.shape == (13, 16)


@pytest.mark.parametrize('stage, n_frames, offset_sec', [(STAGE_II, 124, 0.0), (STAGE_I, 223, None)])
def test_too_short_clip_is_a_clear_error(stage, n_frames, offset_sec):
  with pytest.raises(DecodeError, match='clip.mp4: too short'):
    plan_clip(_info(n_frames=n_frames), stage, offset_sec=offset_sec)


# ---------------------------------------------------------------------------------------------------
# Training draws, by their statistics


def _stage2_draws(plan):
  """(crop start frame, segment start within the crop, audio wiggle in samples) of a Stage II training plan."""
  crop_v0 = round(float(plan.targets['v_start_i_sec']) * 25)
  segment_v0 = int(plan.video_frame_index[0, 0]) - crop_v0
  nominal = max(int((crop_v0 / 25 + round(float(plan.targets['offset_sec']), 2)) * 16000), 0)
  return crop_v0, segment_v0, int(plan.audio_sample_start[0]) - 640 * segment_v0 - nominal


def test_grid_offsets_are_uniform_and_windows_stay_inside_the_clip():
  plans = _plans(STAGE_II)
  classes = np.bincount([p.targets['offset_target'] for p in plans], minlength=21)
  expected = N_DRAWS / 21
  assert classes.min() > expected - 4.5 * np.sqrt(expected) and classes.max() < expected + 4.5 * np.sqrt(expected)
  for p in plans:
    crop_v0, _, _ = _stage2_draws(p)
    assert 0 <= crop_v0 <= 125 and p.frame_window[1] <= 250
    assert 0 <= p.sample_window[0] and p.sample_window[1] <= 160_000


def test_video_crop_and_segment_starts_cover_their_ranges():
  crop_v0, segment_v0, _ = np.array([_stage2_draws(p) for p in _plans(STAGE_II, offset_type='uniform')]).T
  assert np.bincount(segment_v0).tolist() == pytest.approx([N_DRAWS / 6] * 6, abs=4.5 * np.sqrt(N_DRAWS / 6))
  assert crop_v0.min() == 0 and crop_v0.max() >= 123  # 125 needs v_start exactly 5.0 s


def test_audio_wiggle_is_uniform_within_50ms():
  wiggle = np.array([_stage2_draws(p)[2] for p in _plans(STAGE_II, offset_type='uniform')])
  assert wiggle.min() >= -800 and wiggle.max() <= 800
  assert wiggle.min() < -700 and wiggle.max() > 700
  assert abs(wiggle.mean()) < 40 and abs(wiggle.std() - 1600 / np.sqrt(12)) < 40


def test_uniform_offsets():
  offsets = np.array([float(p.targets['offset_sec']) for p in _plans(STAGE_II, offset_type='uniform')])
  assert offsets.min() >= -2 and offsets.max() <= 2
  assert np.allclose(offsets, np.round(offsets, 2))
  assert abs(offsets.mean()) < 0.1 and abs(offsets.std() - 4 / np.sqrt(12)) < 0.05


def test_uniform_binary_offsets_follow_prob_oos():
  plans = _plans(STAGE_II, offset_type='uniform_binary', prob_oos=0.3)
  oos = np.array([p.targets['oos_target'] for p in plans])
  offsets = np.array([float(p.targets['offset_sec']) for p in plans])
  assert abs(oos.mean() - 0.3) < 0.04
  lo, hi = IN_SYNC_RANGE_SEC
  in_sync = offsets[oos == 0]
  assert in_sync.min() >= lo - 0.005 and in_sync.max() <= hi + 0.005
  assert not np.any((offsets[oos == 1] > lo + 0.005) & (offsets[oos == 1] < hi - 0.005))
  assert abs(offsets[oos == 1]).max() > 1.9


def test_syncability_offsets_are_grid_or_disjoint_half_and_half():
  plans = _plans(STAGE_III)
  sync = np.array([p.targets['sync_target'] for p in plans])
  offsets = np.array([float(p.targets['offset_sec']) for p in plans])
  assert abs(sync.mean() - 0.5) < 0.05
  assert set(np.round(offsets[sync == 0], 2)) == {-4.48, 4.48}
  assert set(np.round(offsets[sync == 1], 2)) <= set(np.round(OFFSET_GRID.astype(float), 2))
  assert all(p.video_frame_index.shape == (13, 16) and p.sample_window[1] <= 160_000 for p in plans)


def test_random_crop_positions_cover_the_frame_and_upscale_rate():
  plans = _plans(STAGE_I)
  small = np.array([p.crop_size == 192 for p in plans])
  assert abs(small.mean() - 0.2) < 0.03
  for size in (224, 192):
    tops = np.array([p.crop_top for p in plans if p.crop_size == size])
    lefts = np.array([p.crop_left for p in plans if p.crop_size == size])
    assert tops.min() == 0 and tops.max() == 256 - size
    assert lefts.min() <= 2 and lefts.max() >= 454 - size - 2 and lefts.max() <= 454 - size


def test_stage1_audio_jitter_shifts_all_segments_together():
  plans = _plans(STAGE_I)
  shift = np.array([p.audio_sample_start[0] - 640 * p.video_frame_index[0, 0] for p in plans])
  assert all(np.array_equal(np.diff(p.audio_sample_start), np.full(13, 10_240)) for p in plans)
  assert shift.min() >= -800 and shift.max() <= 800 and shift.min() < -700 and shift.max() > 700
  v0 = np.array([p.video_frame_index[0, 0] for p in plans])
  assert set(v0) == set(range(27))


# ---------------------------------------------------------------------------------------------------
# Video augmentation


def test_flip_rate_and_flip():
  frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
  rng = np.random.default_rng(1)
  flipped = [np.array_equal(augment_frames(frames, rng, STAGE_II), frames[:, :, ::-1]) for _ in range(N_DRAWS)]
  assert abs(np.mean(flipped) - 0.5) < 0.04


def test_color_distortion_and_grayscale_rates():
  frames = np.random.default_rng(0).integers(0, 256, size=(1, 8, 8, 3), dtype=np.uint8)
  no_flip = dataclasses.replace(STAGE_I, flip_p=0.0)  # Stage I: jitter 0.2, then grayscale 0.2
  rng = np.random.default_rng(2)
  outs = [augment_frames(frames, rng, no_flip) for _ in range(N_DRAWS)]
  gray = np.mean([np.ptp(out, axis=-1).max() == 0 for out in outs])
  changed = np.mean([not np.array_equal(out, frames) for out in outs])
  assert abs(gray - 0.2) < 0.03
  assert abs(changed - (1 - 0.8 * 0.8)) < 0.04


class _FixedJitter:
  """Stands in for color_jitter's rng: a fixed order of the four ops and fixed factors."""

  def __init__(self, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0):
    self.factors = (brightness, contrast, saturation, hue)

  def permutation(self, n):
    return np.arange(n)

  def uniform(self, lo, hi, size=None):
    return np.array(self.factors[:3]) if size else self.factors[3]


def test_color_jitter_ops_follow_torchvision():
  frames = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
  # identity factors give the input back: torchvision's hue round trip through float is lossless
  np.testing.assert_array_equal(color_jitter(frames, _FixedJitter()), frames)
  np.testing.assert_array_equal(color_jitter(frames, _FixedJitter(brightness=1.5)),
                                np.clip(frames * 1.5, 0, 255).astype(np.uint8))
  gray = (frames.astype(np.float32) @ np.array([0.2989, 0.587, 0.114], np.float32)).astype(np.uint8)
  np.testing.assert_array_equal(color_jitter(frames, _FixedJitter(saturation=0.0)), np.repeat(gray[..., None], 3, -1))
  red = np.zeros((1, 2, 2, 3), np.uint8)
  red[..., 0] = 255
  np.testing.assert_array_equal(color_jitter(red, _FixedJitter(hue=0.5))[0, 0, 0], [0, 255, 255])
  means = [color_jitter(frames, np.random.default_rng(i)).mean() for i in range(100)]
  assert np.std(means) > 5


def test_bilinear_upscale_matches_interpolation():
  ramp = np.repeat(np.linspace(0, 190, 192)[None, :], 192, axis=0)
  frames = np.stack([ramp, ramp.T, np.full_like(ramp, 77)], axis=-1).astype(np.uint8)[None]
  out = resize_bilinear(frames, 224)
  assert out.shape == (1, 224, 224, 3) and out.dtype == np.uint8
  assert np.all(out[..., 2] == 77)
  src = np.clip((np.arange(224) + 0.5) * 192 / 224 - 0.5, 0, 191)
  np.testing.assert_allclose(out[0, 0, :, 0], np.interp(src, np.arange(192), frames[0, 0, :, 0]), atol=1)


@pytest.mark.parametrize('dtype', [np.float16, np.float32])
def test_rgb_normalisation_is_the_originals_arithmetic(dtype):
  values = np.arange(256, dtype=np.uint8)
  expected = ((values.astype(dtype) / dtype(255)) - dtype(0.5)) / dtype(0.5)
  out = normalise_rgb(np.stack([values, values[::-1]], axis=-1), dtype)
  assert out.dtype == dtype
  np.testing.assert_array_equal(out[:, 0], expected)
  np.testing.assert_array_equal(out[:, 1], expected[::-1])


# ---------------------------------------------------------------------------------------------------
# Audio augmentation


def test_volume_doubles_and_clips():
  x = np.array([0.1, -0.3, 0.7, -0.9])
  np.testing.assert_allclose(audio_lib.volume(x), [0.2, -0.6, 1.0, -1.0])


def test_gaussian_noise_std():
  noise = audio_lib.gaussian_noise(np.zeros(100_000), np.random.default_rng(0))
  assert abs(noise.std() - 0.01) < 2e-4 and abs(noise.mean()) < 2e-4


def _tone(freq, n=SEGMENT_SAMPLES, amplitude=0.5):
  return amplitude * np.sin(2 * np.pi * freq * np.arange(n) / 16000)


def test_lowpass_passes_lows_and_cuts_highs():
  low, high = audio_lib.lowpass_biquad(_tone(30)), audio_lib.lowpass_biquad(_tone(2000))
  assert 0.4 < np.abs(low[4000:]).max() < 0.6
  assert np.abs(high[4000:]).max() < 0.5 * 10 ** (-50 / 20)  # 12 dB/octave from 100 Hz: about -52 dB


def test_pitch_shift_raises_by_ten_semitones_and_keeps_length():
  out = audio_lib.pitch_shift(_tone(440))
  assert out.shape == (SEGMENT_SAMPLES,)
  peak_hz = np.argmax(np.abs(np.fft.rfft(out))) * 16000 / SEGMENT_SAMPLES
  assert abs(peak_hz - 440 * 2 ** (10 / 12)) < 3


def test_reverb_adds_a_decaying_tail():
  burst = np.zeros(SEGMENT_SAMPLES)
  burst[:800] = _tone(500, 800)
  out = audio_lib.reverb(burst)
  assert out.shape == burst.shape and np.abs(out).max() <= 1
  tail = np.abs(out[2000:4000]).mean(), np.abs(out[8000:]).mean()
  assert tail[0] > 1e-3 and tail[1] < tail[0]


def test_each_waveform_augmentation_fires_with_probability_p():
  x = _tone(440, n=2048, amplitude=0.3)
  rng = np.random.default_rng(4)
  unchanged = np.mean([np.array_equal(audio_lib.augment_waveform(x, rng, 0.2), x.astype(np.float32))
                       for _ in range(400)])
  assert abs(unchanged - 0.8**5) < 0.08


# ---------------------------------------------------------------------------------------------------
# End to end on a real clip


@pytest.mark.parametrize('stage, video_shape, audio_shape', [
  (STAGE_I, (14, 3, 16, 224, 224), (14, 66, 128)),
  (STAGE_II, (14, 16, 3, 224, 224), (14, 1, 128, 66)),
  (STAGE_III, (13, 16, 3, 224, 224), (13, 1, 128, 66)),
])
def test_train_and_test_examples_have_the_stage_layout(stage, video_shape, audio_shape):
  clip = require_fixture(VGGSOUND_CLIP, 'sample clip')
  train = build_train_example(clip.read_bytes(), np.random.default_rng(5), stage, name='record')
  test = build_test_example(clip, stage, rng=np.random.default_rng(6))
  for example, video_dtype in ((train, np.float16), (test, stage.test_video_dtype)):
    assert example['video'].shape == video_shape and example['video'].dtype == video_dtype
    assert example['audio'].shape == audio_shape and example['audio'].dtype == np.float32
    assert np.isfinite(example['audio']).all() and np.abs(example['video']).max() <= 1
  pad_column = test['audio'][:, 65, :] if stage is STAGE_I else test['audio'][:, 0, :, 65]
  np.testing.assert_allclose(pad_column, (0 + 4.2677393) / (2 * 4.5689974), rtol=1e-6)
