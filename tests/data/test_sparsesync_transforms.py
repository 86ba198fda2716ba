"""SparseSync's transforms: the original's crop arithmetic, and the training augmentations by their statistics."""
import dataclasses
import math

import numpy as np
import pytest

from synchformer_jax.data import synthetic
from synchformer_jax.data.decode import DecodedClip, DecodeError, MediaInfo
from synchformer_jax.data.sparsesync import (
  CLIP_SAMPLES, FREQ_MASK_BINS, SPARSESYNC, SPARSESYNC_FINETUNE, TIME_MASK_FRAMES, SparseSyncEvalExample,
  SparseSyncPipeline, SparseSyncTrainExample, build_sparsesync_test_example, build_sparsesync_train_example,
  crop_frames, log_spectrogram, make_sparsesync_example, mask_spectrogram, normalise_video, plan_sparsesync_clip,
  standardise_per_frequency,
)
from synchformer_jax.data.transforms import augment_frames, resize_bilinear

N_DRAWS = 2000
THREE_CLASSES = dataclasses.replace(SPARSESYNC, max_off_sec=1.0, num_offset_classes=3)


def _info(n_frames=250, n_samples=160_768, height=256, width=454):
  return MediaInfo(name='clip.mp4', n_frames=n_frames, n_samples=n_samples, height=height, width=width,
                   source_fps=25.0, source_rate=16000, source_channels=1, audio_start_sec=0.0)


def _plans(pipeline=SPARSESYNC, n=N_DRAWS, seed=0, train=True):
  rng = np.random.default_rng(seed)
  return [plan_sparsesync_clip(_info(), pipeline, train=train, rng=rng) for _ in range(n)]


def _nominal_audio_start(plan):
  """The audio start before jitter and the negative-start fix: from the snapped video start."""
  return int((plan.v_start_frame / 25 + round(float(plan.targets['offset_sec']), 2)) * 16000)


# ---------------------------------------------------------------------------------------------------
# Crop arithmetic (spec §1, corrected by the data-pipeline parity cases)


@pytest.mark.parametrize('offset_sec, vstart_sec, v_start_frame, audio_start, target', [
  (1.4, 0.88, 22, 36_480, 17),
  (-0.4, 1.16, 28, 12_159, 8),  # int(1.16 * 25) = int(28.999..) = 28; int(0.76 * 16000) = 12159
  (2.0, 2.28, 56, 68_479, 20),
  (-0.2, 0.6, 15, 6_399, 9),
])
def test_fixed_offset_truncates_like_the_original(offset_sec, vstart_sec, v_start_frame, audio_start, target):
  plan = plan_sparsesync_clip(_info(), offset_sec=offset_sec, vstart_sec=vstart_sec)
  assert (plan.v_start_frame, plan.audio_sample_start, plan.targets['offset_target']) == (
    v_start_frame, audio_start, target)
  assert plan.frame_window == (v_start_frame, v_start_frame + 125)
  assert plan.sample_window == (audio_start, audio_start + 80_000)
  assert (plan.crop_top, plan.crop_left, plan.crop_size) == (16, 115, 224)
  assert plan.targets['v_start_i_sec'] == np.float32(vstart_sec)  # the CSV's, unsnapped
  assert plan.targets['offset_label'] == SPARSESYNC.offset_grid[target]


def test_negative_audio_start_within_one_frame_moves_to_0_else_an_error():
  for offset_sec in (-0.02, -0.04):  # -320 and -640 samples
    assert plan_sparsesync_clip(_info(), offset_sec=offset_sec, vstart_sec=0.0).audio_sample_start == 0
  with pytest.raises(DecodeError, match='clip.mp4.*before the clip'):
    plan_sparsesync_clip(_info(), offset_sec=-0.05, vstart_sec=0.0)


def test_equalify_from_right_limits_the_crop():
  # 10-s cap: 250 frames and 160,000 samples of a longer clip
  plan_sparsesync_clip(_info(n_frames=400, n_samples=256_000), offset_sec=0.0, vstart_sec=5.0)
  with pytest.raises(DecodeError, match='clip.mp4: too short'):
    plan_sparsesync_clip(_info(n_frames=400, n_samples=256_000), offset_sec=0.2, vstart_sec=5.0)


@pytest.mark.parametrize('kwargs', [{'offset_sec': 0.0}, {'rng': np.random.default_rng(0)}])
def test_too_short_clip_is_a_clear_error(kwargs):
  with pytest.raises(DecodeError, match='clip.mp4: too short'):
    plan_sparsesync_clip(_info(n_frames=124), **kwargs)


def test_offset_grids():
  np.testing.assert_array_equal(SPARSESYNC.offset_grid, np.linspace(-2, 2, 21).astype(np.float32))
  assert SPARSESYNC.offset_grid.dtype == np.float32 and SPARSESYNC.offset_grid[10] == 0
  np.testing.assert_array_equal(THREE_CLASSES.offset_grid, [-1.0, 0.0, 1.0])
  targets = [plan_sparsesync_clip(_info(), THREE_CLASSES, offset_sec=off, vstart_sec=2.0).targets['offset_target']
             for off in (-1.0, -0.6, -0.4, 0.0, 0.4, 0.6, 1.0)]
  assert targets == [0, 0, 1, 1, 1, 2, 2]
  drawn = {float(p.targets['offset_sec']) for p in _plans(THREE_CLASSES, n=200)}
  assert drawn == {-1.0, 0.0, 1.0}


def test_pipeline_validation_and_presets():
  with pytest.raises(ValueError, match='half'):  # a 0.05-s grid step: the jitter would cross classes
    SparseSyncPipeline(max_off_sec=0.05, num_offset_classes=3)
  with pytest.raises(ValueError, match='at least 3'):
    SparseSyncPipeline(num_offset_classes=2)
  probabilities = ('color_jitter_p', 'grayscale_p', 'upscale_p', 'audio_aug_p')
  assert SPARSESYNC.flip_p == SPARSESYNC_FINETUNE.flip_p == 0.5
  assert all(getattr(SPARSESYNC, p) == 0.0 and getattr(SPARSESYNC_FINETUNE, p) == 0.2 for p in probabilities)


# ---------------------------------------------------------------------------------------------------
# Training draws, by their statistics


def test_training_offsets_cover_the_grid_and_windows_stay_inside_the_clip():
  plans = _plans()
  classes = np.bincount([p.targets['offset_target'] for p in plans], minlength=21)
  expected = N_DRAWS / 21
  assert classes.min() > expected - 4.5 * np.sqrt(expected) and classes.max() < expected + 4.5 * np.sqrt(expected)
  for p in plans:
    assert 0 <= p.v_start_frame and p.frame_window[1] <= 250
    assert 0 <= p.sample_window[0] and p.sample_window[1] <= 160_000
  starts = np.array([p.v_start_frame for p in plans])
  assert starts.min() == 0 and starts.max() >= 123  # 125 needs v_start exactly 5.0 s


def test_audio_jitter_is_uniform_within_800_samples_and_keeps_the_label():
  plans = _plans()
  jitter = np.array([p.audio_sample_start - _nominal_audio_start(p) for p in plans])
  assert jitter.min() >= -800 and jitter.max() <= 800 and jitter.min() < -700 and jitter.max() > 700
  assert abs(jitter.mean()) < 40 and abs(jitter.std() - 1600 / np.sqrt(12)) < 40
  grid = SPARSESYNC.offset_grid
  for p in plans:  # the label is the drawn grid offset, whatever the jitter
    assert p.targets['offset_label'] == grid[p.targets['offset_target']]
    assert p.targets['offset_sec'] == np.float32(round(float(grid[p.targets['offset_target']]), 2))
    assert p.targets['v_start_i_sec'] == np.float32(p.v_start_frame / 25)  # the snapped start


def test_random_offset_evaluation_has_no_jitter_and_a_centre_crop():
  for p in _plans(n=500, train=False):
    assert p.audio_sample_start == max(_nominal_audio_start(p), 0)
    assert (p.crop_top, p.crop_left, p.crop_size) == (16, 115, 224)


@pytest.mark.parametrize('pipeline, upscale_rate', [(SPARSESYNC, 0.0), (SPARSESYNC_FINETUNE, 0.2)])
def test_random_crop_positions_and_upscale_rate(pipeline, upscale_rate):
  plans = _plans(pipeline)
  small = np.array([p.crop_size == 192 for p in plans])
  assert abs(small.mean() - upscale_rate) < 0.03
  tops, lefts = np.array([p.crop_top for p in plans if p.crop_size == 224]), [p.crop_left for p in plans]
  assert tops.min() == 0 and tops.max() == 32 and min(lefts) <= 2 and max(lefts) >= 454 - 224 - 2


# ---------------------------------------------------------------------------------------------------
# Augmentations, and that the example applies them


def _grayscale_and_changed_rates(pipeline, n=N_DRAWS):
  frames = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
  rng = np.random.default_rng(2)
  outs = [augment_frames(frames, rng, dataclasses.replace(pipeline, flip_p=0.0)) for _ in range(n)]
  gray = np.mean([np.ptp(out, axis=-1).max() == 0 for out in outs])
  return gray, np.mean([not np.array_equal(out, frames) for out in outs])


def test_flip_rate():
  frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
  rng = np.random.default_rng(1)
  flipped = [np.array_equal(augment_frames(frames, rng, SPARSESYNC), frames[:, :, ::-1]) for _ in range(N_DRAWS)]
  assert abs(np.mean(flipped) - 0.5) < 0.04


@pytest.mark.parametrize('pipeline, p', [(SPARSESYNC, 0.0), (SPARSESYNC_FINETUNE, 0.2)])
def test_colour_jitter_and_grayscale_rates(pipeline, p):
  gray, changed = _grayscale_and_changed_rates(pipeline)
  assert abs(gray - p) < 0.03 and abs(changed - (1 - (1 - p) ** 2)) < 0.04


@pytest.mark.parametrize('pipeline, p', [(SPARSESYNC, 0.0), (SPARSESYNC_FINETUNE, 0.2)])
def test_spectrogram_mask_rates_and_widths(pipeline, p):
  spec = np.ones((257, 626))
  rng = np.random.default_rng(3)
  freq_widths, time_widths = [], []
  for _ in range(N_DRAWS):
    zero = mask_spectrogram(spec, rng, pipeline.audio_aug_p) == 0
    freq_widths.append(zero.all(axis=1).sum())
    time_widths.append(zero.all(axis=0).sum())
  freq_widths, time_widths = np.array(freq_widths), np.array(time_widths)
  assert freq_widths.max() < FREQ_MASK_BINS and time_widths.max() < TIME_MASK_FRAMES
  assert abs(np.mean(freq_widths > 0) - p * (1 - 1 / FREQ_MASK_BINS)) < 0.03
  assert abs(np.mean(time_widths > 0) - p * (1 - 1 / TIME_MASK_FRAMES)) < 0.03
  if p:  # a mask is a band: its width is uniform over [0, max)
    assert abs(freq_widths[freq_widths > 0].mean() - FREQ_MASK_BINS / 2) < 5


def test_spectrogram_shape_and_standardisation():
  noise = 0.01 * np.random.default_rng(0).standard_normal(CLIP_SAMPLES)
  tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(CLIP_SAMPLES) / 16000) + noise
  log_spec = log_spectrogram(tone.astype(np.float32))
  assert log_spec.shape == (257, 626)
  assert np.argmax(log_spec[:, 300]) == 1000 * 512 // 16000  # bin 32
  standard = standardise_per_frequency(log_spec)
  np.testing.assert_allclose(standard.mean(axis=1), 0, atol=1e-9)
  np.testing.assert_allclose(standard.std(axis=1, ddof=1), 1, atol=1e-4)
  silence = standardise_per_frequency(log_spectrogram(np.zeros(CLIP_SAMPLES, np.float32)))
  assert np.abs(silence).max() < 1e-6  # std 0: the eps on the std keeps it finite


def _decoded_clip(n_frames=250, seed=0):
  """An in-memory clip as MediaFile.read returns it: (T, 256, 454, 3) uint8 frames and mono float32 audio."""
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, size=(n_frames, 256, 454, 3), dtype=np.uint8)
  audio = (0.1 * rng.standard_normal(640 * n_frames + 768)).astype(np.float32)
  return DecodedClip(frames, audio, first_frame=0, first_sample=0, info=_info(n_frames, len(audio)))


def test_example_applies_the_pipelines_augmentations():
  clip = _decoded_clip(n_frames=130)
  plan = plan_sparsesync_clip(clip.info, offset_sec=0.0, vstart_sec=0.0)
  test = make_sparsesync_example(plan, clip)
  assert test['video'].shape == (125, 3, 224, 224) and test['video'].dtype == np.float32
  assert test['audio'].shape == (1, 257, 626) and test['audio'].dtype == np.float32
  flip_only = dataclasses.replace(SPARSESYNC, flip_p=1.0)
  flipped = make_sparsesync_example(plan, clip, flip_only, np.random.default_rng(0))
  np.testing.assert_array_equal(flipped['video'], test['video'][..., ::-1])
  np.testing.assert_array_equal(flipped['audio'], test['audio'])  # no audio augmentation at p = 0
  audio_aug = dataclasses.replace(SPARSESYNC, flip_p=0.0, audio_aug_p=1.0)
  augmented = make_sparsesync_example(plan, clip, audio_aug, np.random.default_rng(0))
  np.testing.assert_array_equal(augmented['video'], test['video'])
  assert not np.allclose(augmented['audio'], test['audio'], atol=0.1)


def test_reduced_output_size_resizes_the_224_crop():
  clip = _decoded_clip(n_frames=130)
  plan = plan_sparsesync_clip(clip.info, offset_sec=0.0, vstart_sec=0.0)
  small = make_sparsesync_example(plan, clip, dataclasses.replace(SPARSESYNC, output_size=112))
  assert small['video'].shape == (125, 3, 112, 112)
  np.testing.assert_array_equal(small['video'], normalise_video(resize_bilinear(crop_frames(plan, clip), 112)))


def test_imagenet_normalisation_is_the_originals_float32_arithmetic():
  values = np.arange(256, dtype=np.uint8)
  frames = np.stack([values, values[::-1], values], axis=-1)[None, None]  # (1, 1, 256, 3)
  video = normalise_video(frames)
  assert video.shape == (1, 3, 1, 256) and video.dtype == np.float32
  mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
  expected = (frames.astype(np.float32) / np.float32(255) - mean) / std
  np.testing.assert_array_equal(video, expected.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------------
# End to end on a synthetic mp4, and the grain per-record steps


@pytest.fixture(scope='module')
def clip_bytes():
  return synthetic.generate_clip(synthetic.SyntheticSpec(), seed=(11, 3))[0]


def test_train_and_test_examples_from_an_mp4(clip_bytes):
  train = build_sparsesync_train_example(clip_bytes, np.random.default_rng(5), name='record')
  fixed = build_sparsesync_test_example(clip_bytes, offset_sec=-0.4, vstart_sec=1.16)
  random_offset = build_sparsesync_test_example(clip_bytes, rng=np.random.default_rng(6))
  for example in (train, fixed, random_offset):
    assert example['video'].shape == (125, 3, 224, 224) and example['video'].dtype == np.float32
    assert example['audio'].shape == (1, 257, 626) and example['audio'].dtype == np.float32
    assert np.isfinite(example['audio']).all() and np.isfinite(example['video']).all()
    assert set(example) == {'video', 'audio', 'offset_sec', 'v_start_i_sec', 'offset_label', 'offset_target'}
  assert fixed['offset_target'] == 8 and fixed['v_start_i_sec'] == np.float32(1.16)


def test_per_record_steps(clip_bytes):
  # the datasets store the fixed offsets as float64, exactly as in their CSVs
  record = {'video': clip_bytes, 'offset_sec': np.float64(1.4), 'vstart_sec': np.float64(0.88), 'id': b'clip-7'}
  fixed = SparseSyncEvalExample()(record, np.random.default_rng(0))
  expected = build_sparsesync_test_example(clip_bytes, offset_sec=1.4, vstart_sec=0.88)
  np.testing.assert_array_equal(fixed['audio'], expected['audio'])
  assert fixed['offset_target'] == 17
  no_offsets = record | {'offset_sec': np.float64(math.nan), 'vstart_sec': np.float64(math.nan)}
  drawn = SparseSyncEvalExample()(no_offsets, np.random.default_rng(1))
  again = build_sparsesync_test_example(clip_bytes, rng=np.random.default_rng(1))
  np.testing.assert_array_equal(drawn['video'], again['video'])
  train = SparseSyncTrainExample(SPARSESYNC)(record, np.random.default_rng(2))
  assert train['video'].shape == (125, 3, 224, 224)
  short = synthetic.generate_clip(synthetic.SyntheticSpec(duration_sec=4.0), seed=0)[0]
  with pytest.raises(DecodeError, match='clip-7'):
    SparseSyncTrainExample()(record | {'video': short}, np.random.default_rng(3))
