"""Candidate Stage II head recipes (issue 16): initial values and training-only losses that keep the parameters."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from synchformer_jax.benchmarks import head_probe, head_recipes
from synchformer_jax.benchmarks.head_recipes import HeadRecipe
from synchformer_jax.models import build_model
from synchformer_jax.models.config import config_for_size
from synchformer_jax.train.config import base_config

CFG = config_for_size('sync', 'tiny')
CFG3 = CFG.replace(transformer=dataclasses.replace(CFG.transformer, layers=3))


def test_a_recipe_is_parsed_from_field_value_pairs():
  recipe = head_recipes.parse('position_init=token_time, shift_attention_weight=1,event_rate_steps=200,dropout=0')
  assert recipe == HeadRecipe(position_init='token_time', shift_attention_weight=1.0, event_rate_steps=200,
                              dropout=0.0)
  assert head_recipes.parse('') == HeadRecipe()
  for bad in ('no_such_field=1', 'shift_attention_weight', 'position_init=random'):
    with pytest.raises(ValueError, match='head recipe|position_init'):
      head_recipes.parse(bad)


def _params(model):
  return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_the_original_recipe_changes_nothing_and_the_others_keep_every_parameters_shape():
  reference = _params(build_model(CFG3, 0))
  untouched = build_model(CFG3, 0)
  head_recipes.initialise(untouched, CFG3, HeadRecipe())
  for path, value in _params(untouched).items():
    np.testing.assert_array_equal(value, reference[path])
  changed = build_model(CFG3, 0)
  head_recipes.initialise(changed, CFG3, HeadRecipe(position_init='token_time', special_token_scale=0.5,
                                                    kernel_init='lecun'))
  params = _params(changed)
  assert {p: v.shape for p, v in params.items()} == {p: v.shape for p, v in reference.items()}
  video_times, audio_times = (t.ravel() for t in head_recipes.token_times(CFG3))
  pos = params[('transformer', 'pos_emb')][0]
  np.testing.assert_allclose(pos[1:113], head_recipes.time_code(video_times, 64), rtol=1e-6)
  np.testing.assert_allclose(pos[114:], head_recipes.time_code(audio_times, 64), rtol=1e-6)
  np.testing.assert_allclose(pos[[0, 113]], 0.5 * reference[('transformer', 'pos_emb')][0, [0, 113]], rtol=1e-6)
  # One code for both streams: a video and an audio token at the same time share their row.
  assert np.allclose(head_recipes.time_code(np.array([0.5]), 64), head_recipes.time_code(np.array([0.5]), 64))
  kernel = params[('transformer', 'blocks', 0, 'mlp', 'fc1', 'kernel')]
  assert abs(kernel.std() - 1 / math.sqrt(64)) < 0.01  # N(0, 1/fan_in), was 0.02


def test_the_auxiliary_targets_are_distributions_over_the_right_tokens():
  aux = head_recipes.AuxiliaryLosses(CFG3, HeadRecipe(shift_attention_weight=1.0))
  np.testing.assert_allclose(np.asarray(aux.lag_pairs).sum((1, 2)), 1.0, rtol=1e-6)
  targets, valid = np.asarray(aux.shift_targets), np.asarray(aux.shift_valid)
  assert targets.shape == (2, 4, 84, 198)  # blocks 0-1, 4 heads each, audio queries, all keys
  np.testing.assert_allclose(targets.sum(-1)[valid], 1.0, rtol=1e-5)
  assert targets[..., 1:113].sum() == pytest.approx(targets.sum())  # only video keys
  # Head h's target sits at the audio token's time plus its lag.
  video_times, audio_times = (t.ravel() for t in head_recipes.token_times(CFG3))
  mean_lag = (targets[0, 0, :, 1:113] * (video_times[None] - audio_times[:, None])).sum(-1)[valid[0, 0]]
  assert abs(np.median(mean_lag) - aux.shift_lags[0]) < 0.01
  assert np.all(np.abs(mean_lag - aux.shift_lags[0]) < 0.25)  # the Gaussian (σ 0.25 s) is cut at the span's ends


def test_a_recipe_with_every_loss_trains_and_reports_the_plain_cross_entropy():
  recipe = HeadRecipe(position_init='token_time', label_smoothing=1.0, lag_score_weight=1.0,
                      shift_attention_weight=1.0, token_offset_weight=1.0, event_rate_from=0.3, event_rate_steps=2)
  curve = head_probe.train_head(CFG3, base_config('sync').optim, steps=3, batch_size=4, eval_every=3,
                                eval_windows=16, recipe=recipe)
  assert len(curve) == 1 and np.isfinite(curve[0]['loss'])
  run = head_probe.fresh_head(CFG3, base_config('sync').optim, steps=3, recipe=recipe)
  batch = jax.tree.map(jnp.asarray, run.windows.batch(4))
  (total, cross_entropy), _ = run.value_and_grad(run.model, batch)
  assert float(total) > float(cross_entropy) > 0  # the training-only losses add to what is minimised only
