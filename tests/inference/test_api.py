"""The Python API on a tiny untrained model: features equal the model's own on the test pipeline, chunking and
frame formats do not change results, DeSync and p(sync) follow their definitions, the file-level modes."""
import numpy as np
import pytest

import synchformer_jax
from synchformer_jax import inference
from synchformer_jax.data.decode import DecodeError, MediaFile
from synchformer_jax.data.transforms import CROP_SIZE, OFFSET_GRID, center_crop_box
from synchformer_jax.inference.compiled import jitted_call, model_logits
from synchformer_jax.inference.windows import build_file_example
from synchformer_jax.inference.attribution import _explanation, _with_attention_sown, attention_rollout


@pytest.fixture(scope='module')
def window(tiny_sync, vgg_clip):
  """example.py's input at +1.6 s, and the decoded frames / waveform that it was cut from."""
  example, plan = build_file_example(tiny_sync, vgg_clip, offset_sec=1.6)
  clip = MediaFile(vgg_clip).read()
  frames = clip.frames[plan.video_frame_index[0, 0]:plan.video_frame_index[-1, -1] + 1]
  wav = clip.audio[plan.audio_sample_start[0]:plan.audio_sample_start[-1] + 10240]
  return example, frames, wav


def _extract_features(model, video, audio):
  return model.extract_features(video, audio)


def test_features_and_logits_match_the_model_on_example_inputs(tiny_sync, window):
  example, frames, wav = window
  vfeat, afeat = jitted_call(_extract_features, tiny_sync, example['video'][None], example['audio'][None])
  video = np.asarray(inference.encode_video_sync(tiny_sync, frames[None]))
  audio = np.asarray(inference.encode_audio_sync(tiny_sync, wav[None]))
  assert video.shape == (1, 14, 8, 64) and audio.shape == (1, 14, 6, 64)
  # Both streams go through the test pipeline's own functions (log-mel; crop, resize and float16 normalisation),
  # so the features are the model's on example.py's input, up to the order of float operations.
  np.testing.assert_allclose(audio, afeat, atol=1e-5)
  np.testing.assert_allclose(video, vfeat, atol=1e-5)
  logits = np.asarray(inference.sync_logits(tiny_sync, video, audio))
  expected = np.asarray(model_logits(tiny_sync, example['video'][None], example['audio'][None]))
  np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_chunking_batching_and_frame_formats_do_not_change_features(tiny_sync, window):
  _, frames, wav = window
  frames = frames[:40]  # 4 segments
  batch = np.stack([frames, frames[::-1]])
  reference = np.asarray(inference.encode_video_sync(tiny_sync, batch))
  np.testing.assert_allclose(np.asarray(inference.encode_video_sync(tiny_sync, batch, chunk_size=3)), reference,
                             atol=1e-6)
  as_float = np.asarray(inference.encode_video_sync(tiny_sync, batch.astype(np.float32) / 255))
  np.testing.assert_allclose(as_float, reference, atol=1e-6)
  top, left = center_crop_box(*frames.shape[1:3])
  cropped = batch[:, :, top:top + CROP_SIZE, left:left + CROP_SIZE]  # already the 224-px crop: taken as is
  np.testing.assert_allclose(np.asarray(inference.encode_video_sync(tiny_sync, cropped)), reference, atol=1e-6)
  waves = np.stack([wav, wav[::-1]])
  np.testing.assert_allclose(np.asarray(inference.encode_audio_sync(tiny_sync, waves, chunk_size=5)),
                             np.asarray(inference.encode_audio_sync(tiny_sync, waves)), atol=1e-6)


def test_desync_is_av_benchmarks_mean_of_first_and_last_window(tiny_sync, vgg_clip):
  clip = MediaFile(vgg_clip).read()
  video, audio = clip.frames[None, :200], clip.audio[None, :128_000]  # av-benchmark's 8-s clips
  vfeat = inference.encode_video_sync(tiny_sync, video)
  afeat = inference.encode_audio_sync(tiny_sync, audio)
  assert vfeat.shape[1] == afeat.shape[1] == 24
  first = np.argmax(inference.sync_logits(tiny_sync, vfeat[:, :14], afeat[:, :14]), axis=-1)
  last = np.argmax(inference.sync_logits(tiny_sync, vfeat[:, -14:], afeat[:, -14:]), axis=-1)
  expected = (np.abs(OFFSET_GRID[first]) + np.abs(OFFSET_GRID[last])) / 2
  np.testing.assert_allclose(inference.desync(tiny_sync, video, audio), expected, atol=1e-6)
  with pytest.raises(ValueError, match='shorter than one 4.80-s window'):
    inference.desync(tiny_sync, video[:, :100], audio[:, :64_000])


def test_p_in_sync_needs_a_synchronizability_model(tiny_sync, tiny_synchability_dir, vgg_clip):
  clip = MediaFile(vgg_clip).read()
  video, audio = clip.frames[None, :120], clip.audio[None, :76_800]
  model = synchformer_jax.load(str(tiny_synchability_dir))
  p = inference.p_in_sync(model, video, audio)
  vfeat, afeat = inference.encode_video_sync(model, video), inference.encode_audio_sync(model, audio)
  logits = np.asarray(inference.sync_logits(model, vfeat[:, :13], afeat[:, :13]))
  np.testing.assert_allclose(p, np.exp(logits[:, 1]) / np.exp(logits).sum(-1), atol=1e-6)
  with pytest.raises(ValueError, match="p_in_sync needs a 'synchability' model, got 'sync'"):
    inference.p_in_sync(tiny_sync, video, audio)
  with pytest.raises(ValueError, match="needs a 'sync' model"):
    inference.predict_offsets(model, vgg_clip)


@pytest.mark.slow
def test_bfloat16_model_predicts_close_to_float32(tiny_sync, tiny_sync_dir, vgg_clip):
  bf16 = synchformer_jax.load(str(tiny_sync_dir), dtype='bfloat16')
  low = inference.predict_offsets(bf16, vgg_clip, offset_sec=-0.4, v_start_sec=1.0)
  high = inference.predict_offsets(tiny_sync, vgg_clip, offset_sec=-0.4, v_start_sec=1.0)
  np.testing.assert_allclose(low.probs, high.probs, atol=0.01)
  assert low.applied_offset_sec == -0.4 and abs(low.probs.sum() - 1) < 1e-5


def test_sliding_windows_need_audio_at_the_applied_offset(tiny_sync, vgg_clip):
  curve = inference.offset_curve(tiny_sync, vgg_clip, hop_sec=1.0)
  # 30 segments of 0.32 s in 10 s; windows of 14 segments every 3 segments (0.96 s).
  np.testing.assert_allclose(curve.start_sec, [0.0, 0.96, 1.92, 2.88, 3.84, 4.8])
  assert curve.probs.shape == (6, 21) and abs(curve.consensus.probs.sum() - 1) < 1e-5
  late = inference.offset_curve(tiny_sync, vgg_clip, offset_sec=3.0, hop_sec=0.32)
  audio_sec = MediaFile(vgg_clip).info.n_samples / 16_000  # 10.048 s
  np.testing.assert_allclose(late.start_sec, 0.32 * np.arange(8))  # the next would end past the audio
  assert late.start_sec[-1] + 3.0 + late.window_sec <= audio_sec < late.start_sec[-1] + 0.32 + 3.0 + late.window_sec
  # Window 1 sees what example.py sees from 0.24 s: its centred segments start at frame 6 + 2 = 8, and their
  # audio 3 s later. So both paths put the audio on the same side of the video.
  window = inference.predict_offsets(tiny_sync, vgg_clip, offset_sec=3.0, v_start_sec=0.24)
  np.testing.assert_allclose(late.logits[1], window.logits, atol=1e-5)
  with pytest.raises(DecodeError, match='too short for one 4.80-s window'):
    inference.offset_curve(tiny_sync, vgg_clip, offset_sec=6.0)


def test_search_steps_must_leave_no_offset_out_of_reach(tiny_sync, vgg_clip):
  with pytest.raises(ValueError, match='search step'):
    inference.search_offset(tiny_sync, vgg_clip, search_range_sec=6, step_sec=5)


@pytest.mark.slow
def test_sown_attention_leaves_the_logits_and_rolls_out_rows_of_a_distribution(tiny_sync, window):
  example, _, _ = window
  video, audio = example['video'][None], example['audio'][None]
  logits, _, weights = jitted_call(_explanation, _with_attention_sown(tiny_sync), video, audio, np.int32(0))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(model_logits(tiny_sync, video, audio)), atol=1e-5)
  assert [w.shape for w in weights] == [(1, 4, 198, 198)]  # one layer: [OFF, 14 × 8 video, MOD, 14 × 6 audio]
  assert not tiny_sync.transformer.blocks[0].attn.sow_attention  # the given model keeps the fused path
  weights = np.random.default_rng(0).random((2, 4, 5, 5))
  rollout = attention_rollout(list(weights / weights.sum(-1, keepdims=True)))
  np.testing.assert_allclose(rollout.sum(-1), 1.0)
