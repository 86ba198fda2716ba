"""Model behaviour beyond parity: sizes, train/eval modes, bf16, remat, the resized position grid."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import synchformer_jax
from synchformer_jax.models import build_model, config_for_size
from synchformer_jax.models.avclip import LOGIT_SCALE_RANGE
from synchformer_jax.models.config import (REMAT_POLICY_NAMES, ModelConfig, ModelConfigError, SyncTransformerConfig,
                                           VideoTowerConfig)
from synchformer_jax.models.layers import Buffer, MultiHeadAttention
from synchformer_jax.models.motionformer import _torch_bicubic_matrix
from tests.conftest import require_torch
from tests.parity.test_models_vs_reference import case_params, convert_case, run_model


def _n_stored(model) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, (nnx.Param, Buffer))))


@pytest.mark.parametrize('kind, expected', [('sync', 237_460_245), ('synchability', 237_434_882),
                                            ('avclip', 214_841_089)])
def test_full_size_parameter_counts_match_the_original(kind, expected):
  model = nnx.eval_shape(lambda: build_model(config_for_size(kind, 'full')))
  assert _n_stored(model) == expected


def _inputs(cfg: ModelConfig, batch=2, seed=0):
  s = cfg.transformer.n_segments
  rng = np.random.default_rng(seed)
  c = cfg.video.crop
  if cfg.kind == 'avclip':
    return (jnp.asarray(rng.uniform(-1, 1, (batch, 3, 3, 16, c, c)), jnp.float32),
            jnp.asarray(rng.uniform(-1, 1, (batch, 3, 66, 128)), jnp.float32))
  return (jnp.asarray(rng.uniform(-1, 1, (batch, s, 16, 3, c, c)), jnp.float32),
          jnp.asarray(rng.uniform(-1, 1, (batch, s, 1, 128, 66)), jnp.float32))


@nnx.jit
def forward(model, video, audio):
  return model(video, audio)[0]


def test_eval_is_deterministic_and_train_mode_drops_out():
  cfg = config_for_size('sync', 'tiny')
  model = build_model(cfg)
  video, audio = _inputs(cfg)
  model.eval()
  a = forward(model, video, audio)
  b = forward(model, video, audio)
  np.testing.assert_array_equal(a, b)
  model.train()
  c = forward(model, video, audio)
  d = forward(model, video, audio)
  assert not np.allclose(c, a) and not np.allclose(c, d)


def test_drop_path_is_active_in_stage1_training_only_after_the_first_block():
  cfg = config_for_size('avclip', 'tiny')
  model = build_model(cfg)
  rates = [float(b.drop_path.rate) for b in model.v_encoder.blocks]
  assert rates == pytest.approx(np.linspace(0, 0.2, cfg.video.depth).tolist())
  video, audio = _inputs(cfg)
  model.train()
  first = forward(model, video, audio)
  second = forward(model, video, audio)
  assert float(first) != float(second)


def test_bf16_compute_keeps_float32_params_and_the_argmax():
  cfg = config_for_size('sync', 'tiny')
  fp32 = build_model(cfg)
  bf16 = build_model(cfg.replace(dtype='bfloat16'))
  nnx.update(bf16, nnx.state(fp32))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype('float32')}
  fp32.eval(), bf16.eval()
  video, audio = _inputs(cfg, batch=4)
  logits32 = forward(fp32, video, audio)
  logits16 = forward(bf16, video, audio)
  assert logits16.dtype == jnp.float32
  assert float(jnp.abs(logits32 - logits16).max()) < 0.1 * float(jnp.abs(logits32).max())
  np.testing.assert_array_equal(jnp.argmax(logits32, -1), jnp.argmax(logits16, -1))


@pytest.mark.parametrize('kind, policies', [('avclip', REMAT_POLICY_NAMES), ('sync', REMAT_POLICY_NAMES[:1])])
def test_every_remat_policy_gives_the_same_gradients(kind, policies):
  """Rematerialised blocks run as a scan (both towers; Stage II also the global transformer); the loss
  reaches every parameter. In train mode, so the scanned blocks must also draw the plain ones' drop-path and
  dropout masks. Stage I: 2 clips × 2 segments."""
  cfg = config_for_size(kind, 'tiny')
  if kind == 'avclip':
    rng = np.random.default_rng(0)
    inputs = (jnp.asarray(rng.uniform(-1, 1, (2, 2, 3, 16, cfg.video.crop, cfg.video.crop)), jnp.float32),
              jnp.asarray(rng.normal(size=(2, 2, 66, 128)), jnp.float32))
    loss_of = lambda m: m(*inputs)[0]
  else:
    inputs = (*_inputs(cfg), jnp.asarray([3, 17]))
    loss_of = lambda m: m(*inputs)[1]['loss']

  @nnx.jit
  def loss_and_grads(model):
    return nnx.value_and_grad(loss_of)(model)

  plain = build_model(cfg)
  remats = {policy: build_model(cfg.replace(remat=True, remat_policy=policy)) for policy in policies}
  for model in (plain, *remats.values()):
    nnx.update(model, nnx.state(plain))
    model.train()
  loss_plain, g_plain = loss_and_grads(plain)
  for policy, remat in remats.items():
    loss, grads = loss_and_grads(remat)
    np.testing.assert_allclose(loss, loss_plain, rtol=1e-6, err_msg=policy)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(grads)):
      # Recomputation may sum in another order; the temperature (0.07) scales such float32 noise up.
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=policy)
    # The random streams advance as they do unscanned (the next step draws new masks).
    for a, b in zip(jax.tree.leaves(nnx.state(plain, nnx.RngCount)), jax.tree.leaves(nnx.state(remat, nnx.RngCount))):
      np.testing.assert_array_equal(a, b, err_msg=policy)


@pytest.mark.parametrize('kind', ['sync', 'avclip'])
def test_attention_impl_reaches_every_attention(kind):
  model = build_model(config_for_size(kind, 'tiny', attention_impl='cudnn'))
  attentions = [m for _, m in nnx.iter_modules(model) if isinstance(m, MultiHeadAttention)]
  assert attentions and {a.attention_impl for a in attentions} == {'cudnn'}


def test_logit_scale_clamp():
  model = build_model(config_for_size('avclip', 'tiny'))
  model.logit_scale.set_value(jnp.asarray(3.0))
  model.clamp_logit_scale()
  assert float(model.logit_scale[...]) == LOGIT_SCALE_RANGE[1]


def test_wrong_input_shapes_are_named():
  cfg = config_for_size('sync', 'tiny')
  model = build_model(cfg)
  video, audio = _inputs(cfg)
  with pytest.raises(ValueError, match='Motionformer: expected video'):
    forward(model, video[..., :32, :32], audio)
  with pytest.raises(ValueError, match='positional table has 198 rows'):
    forward(model, video[:, :13], audio[:, :13])


@pytest.mark.parametrize('crop', [64, 112, 160])
def test_position_grid_resize_matches_torch_bicubic(crop):
  torch = require_torch()
  grid = torch.arange(14 * 14 * 3, dtype=torch.float32).reshape(1, 14, 14, 3).permute(0, 3, 1, 2) / 100
  scale = float(np.sqrt((crop // 16) ** 2 / 196))
  expected = torch.nn.functional.interpolate(grid, scale_factor=scale, mode='bicubic').numpy()[0]
  m = _torch_bicubic_matrix(14, scale)
  got = np.einsum('yi,xj,cij->cyx', m, m, grid.numpy()[0])
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_invalid_configs_name_the_field():
  with pytest.raises(ModelConfigError, match='model config video.heads: expected a divisor of dim 100, got 12'):
    ModelConfig(video=VideoTowerConfig(dim=100))
  with pytest.raises(ModelConfigError, match="model config dtype: expected one of \\('float32', 'bfloat16'\\)"):
    ModelConfig(dtype='float16')
  with pytest.raises(ModelConfigError, match='model config audio.depthh: expected a field of AudioTowerConfig, got 3'):
    ModelConfig.from_dict({'audio': {'depthh': 3}})
  with pytest.raises(ModelConfigError, match='model config remat_policy'):
    ModelConfig(remat_policy='everything')
  with pytest.raises(ModelConfigError, match='model config transformer.layers: expected a positive integer, got 0'):
    ModelConfig(transformer=SyncTransformerConfig(layers=0))
  with pytest.raises(ModelConfigError, match=r'model config video.drop_path: expected a rate in \[0, 1\), got 1.5'):
    ModelConfig(video=VideoTowerConfig(drop_path=1.5))
  with pytest.raises(ModelConfigError, match='model config size'):
    config_for_size('sync', 'huge')


# What a parity case's model is judged on: Stage II (and SparseSync) logits, Stage I segment similarities.
_SCORES = {'sync': 'logits', 'synchability': 'logits', 'sparsesync': 'logits', 'avclip': 'segment_sim_v2a'}


def _bf16_case_params():
  """The reduced-size parity cases; SYNCHFORMER_BF16_FULL=1 adds the full-size ones (minutes each, on top
  of their parity tests: a measurement for BENCHMARKS.md rather than part of the suite's budget)."""
  with_full = os.environ.get('SYNCHFORMER_BF16_FULL') == '1'
  return [p for p in case_params() if with_full or 'full' not in p.id]


@pytest.mark.parametrize('engine', ['xla', 'torch'])
@pytest.mark.parametrize('case_dir', _bf16_case_params())
def test_bf16_keeps_the_argmax_of_float32_on_the_parity_cases(case_dir, engine, tmp_path):
  """bf16 compute, on XLA and on the CPU torch engine (inference's bfloat16 path on CPUs with AMX), against
  float32 on XLA, on the parity cases' weights and inputs; `pytest -s` prints the worst difference
  (BENCHMARKS.md quotes them)."""
  if engine == 'torch':
    require_torch()
  case, make_weights, model_dir = convert_case(case_dir, tmp_path)
  kind, name = case['kind'], _SCORES[case['kind']]
  inputs = make_weights.case_inputs(str(case_dir))
  fp32 = run_model(synchformer_jax.load(model_dir), kind, inputs, None)[name]
  bf16 = run_model(synchformer_jax.load(model_dir, dtype='bfloat16'), kind, inputs, None, engine)[name]
  worst = float(np.abs(bf16.astype(np.float32) - fp32).max())
  print(f'{case_dir.name}: bf16 ({engine}) vs float32 {name}: worst |diff| {worst:.3e}, max |float32| '
        f'{float(np.abs(fp32).max()):.3e}')
  np.testing.assert_array_equal(bf16.argmax(-1), fp32.argmax(-1))
  assert worst < 0.05 * max(1.0, float(np.abs(fp32).max()))
