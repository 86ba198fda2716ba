"""SparseSync's model beyond parity: torch's BatchNorm in train and eval mode, a tiny model's outputs, bf16 compute,
rematerialisation, and BatchNorm statistics over the global batch under data parallelism."""
import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

import synchformer_jax
from synchformer_jax import pretrained, sharding
from synchformer_jax.models import build_model, config_for_size, stored_variables
from synchformer_jax.models.sparsesync import RESNET_BN, S3D_BN, BatchNorm, RunningStat
from tests.conftest import REPO_ROOT, random_model_dir

TINY = config_for_size('sparsesync', 'tiny')
# Train mode without dropout: a run on one device and one split over devices then differ only in how the batch
# statistics are reduced.
NO_DROPOUT = TINY.replace(transformer=dataclasses.replace(TINY.transformer, embd_dropout=0.0, attn_dropout=0.0,
                                                          resid_dropout=0.0))


def _values(module) -> dict[str, np.ndarray]:
  return {k: np.asarray(v.get_value()) for k, v in stored_variables(module).items()}


def _flat(state) -> dict[str, np.ndarray]:
  return {'.'.join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _close(got, want, rel: float, err_msg: str = ''):
  """Equal up to float32 noise: `rel` of each value, or of the reference's largest magnitude for values near 0. The
  same sums in another order (recomputed, or reduced across devices) differ in their last bits, and deep stacks of
  train-mode BatchNorm carry such differences on."""
  want = np.asarray(want)
  np.testing.assert_allclose(got, want, rtol=rel, atol=rel * max(1.0, float(np.abs(want).max(initial=0))),
                             err_msg=err_msg)


def _set(bn: BatchNorm, rng: np.random.Generator, count: int):
  """Affine weights and running statistics unlike a fresh layer's."""
  c = bn.scale.shape[0]
  bn.scale.set_value(jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32))
  bn.bias.set_value(jnp.asarray(rng.normal(size=c), jnp.float32))
  bn.mean.set_value(jnp.asarray(rng.normal(size=c), jnp.float32))
  bn.var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32))
  bn.num_batches_tracked.set_value(jnp.asarray(count, jnp.int32))


@pytest.mark.parametrize('settings, shape', [(S3D_BN, (2, 3, 4, 5, 6)), (RESNET_BN, (3, 4, 5, 6))],
                         ids=['s3d', 'resnet'])
def test_batch_norm_is_torchs_in_train_and_eval_mode(settings, shape):
  """Train mode: normalised with the batch mean and biased variance over every axis but the channels; the running
  mean and the running UNBIASED variance move by `momentum` towards the batch's, the counter adds 1 (S3D: eps 1e-3,
  momentum 1e-3; ResNet: eps 1e-5, momentum 0.1). Eval mode: normalised with the running statistics, which stay."""
  eps, m = settings['eps'], settings['momentum']
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, shape).astype(np.float32)  # channels last: (B, T, H, W, C) video, (B, F, T, C) audio
  bn = BatchNorm(6, **settings)
  _set(bn, rng, count=5)
  before = _values(bn)
  y = np.asarray(bn(jnp.asarray(x)))

  xd, n, axes = x.astype(np.float64), x.size // 6, tuple(range(x.ndim - 1))
  mean, var = xd.mean(axis=axes), xd.var(axis=axes)
  expected = (xd - mean) / np.sqrt(var + eps) * before['scale'] + before['bias']
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(bn.mean[...], (1 - m) * before['mean'] + m * mean, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(bn.var[...], (1 - m) * before['var'] + m * var * n / (n - 1), rtol=1e-6)
  assert int(bn.num_batches_tracked[...]) == 6

  bn.eval()
  after_train = _values(bn)
  y = np.asarray(bn(jnp.asarray(x)))
  expected = (xd - after_train['mean']) / np.sqrt(after_train['var'] + eps) * after_train['scale'] + after_train['bias']
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  for name, value in _values(bn).items():
    np.testing.assert_array_equal(value, after_train[name], err_msg=name)


# ---- a tiny model -----------------------------------------------------------------------------------------------

def inputs(batch: int, seed: int = 0):
  """Video (B, 125, 3, 64, 64), audio (B, 1, 257, 626) and offset targets, as the tiny size takes them."""
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.uniform(-1, 1, (batch, TINY.frames, 3, TINY.crop, TINY.crop)), jnp.float32),
          jnp.asarray(rng.uniform(-1, 1, (batch, 1, TINY.audio_freq, TINY.audio_frames)), jnp.float32),
          jnp.asarray(rng.integers(0, TINY.num_classes, batch), jnp.int32))


@nnx.jit
def forward(model, video, audio):
  return model(video, audio)


@pytest.fixture(scope='module')
def float32_run(tmp_path_factory):
  """(model directory, the model after the forward, logits, aux) of a float32 eval-mode forward on 2 clips."""
  directory = random_model_dir(tmp_path_factory.mktemp('float32') / 'model', 'sparsesync', TINY)
  model = synchformer_jax.load(directory)
  logits, aux = forward(model, *inputs(2)[:2])
  return directory, model, np.asarray(logits), jax.device_get(aux)


def test_outputs_in_the_originals_layouts(float32_run):
  """Logits (B, 21) or, with a 3-class head, (B, 3); the trunks' outputs as the original returns them: video
  (B, T, C, H, W), audio (B, C, F, T), here with the tiny widths (128 and 64 channels). Eval mode (as loaded) moves
  no running statistic."""
  directory, model, logits, aux = float32_run
  params = pretrained.read_params(directory)
  assert _values(model).keys() == params.keys()
  for name, value in _values(model).items():
    np.testing.assert_array_equal(value, params[name], err_msg=name)
  assert logits.shape == (2, 21) and np.isfinite(logits).all()
  assert {k: v.shape for k, v in aux.items()} == {'vfeat_extractor': (2, 16, 128, 2, 2),
                                                  'afeat_extractor': (2, 64, 9, 20)}
  three = nnx.eval_shape(lambda: build_model(TINY.replace(num_classes=3)))
  features = (jax.ShapeDtypeStruct((3, 16, 2, 2, 128), jnp.float32), jax.ShapeDtypeStruct((3, 9, 20, 64), jnp.float32))
  assert nnx.eval_shape(lambda m, *xs: m.classify(*xs), three, *features).shape == (3, 3)


def test_bf16_compute_keeps_float32_params_and_logits_close(float32_run):
  """Parameters stay float32 under bf16 compute; the logits are float32 and near float32 compute's."""
  directory, _, logits32, _ = float32_run
  model = synchformer_jax.load(directory, dtype='bfloat16')
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype('float32')}
  logits16 = np.asarray(forward(model, *inputs(2)[:2])[0])
  assert logits16.dtype == np.float32
  assert np.abs(logits16 - logits32).max() < 0.05 * np.abs(logits32).max()


@pytest.mark.slow
def test_remat_gives_the_same_loss_gradients_and_statistics(tmp_path):
  """Rematerialised residual blocks and selector blocks, in train mode (dropout on, BatchNorm on batch statistics):
  the loss, every gradient and the running statistics' updates are those without remat. The audio trunk and a
  selector stack cover both forms of the one checkpointing call (`sparsesync.checkpointed`, with and without a
  context); the S3D mixed blocks make the first form's call too, and compiling all of S3D twice would double the
  test's time without testing another line."""
  _, audio, _ = inputs(2)

  @nnx.jit
  def loss_and_grads(model):
    def loss(m):
      afeat = m.afeat_extractor(jnp.transpose(audio, (0, 2, 3, 1)))
      selected = m.transformer.a_selector(afeat.reshape(afeat.shape[0], -1, afeat.shape[-1]))
      return jnp.mean(jnp.square(selected))
    return nnx.value_and_grad(loss)(model)

  results = []
  for remat in (False, True):
    model = synchformer_jax.load(random_model_dir(tmp_path / f'remat_{remat}', 'sparsesync', TINY.replace(remat=remat)))
    model.train()
    before = _values(model)
    loss, grads = loss_and_grads(model)
    results.append((float(loss), nnx.to_flat_state(grads), _values(model)))
  (loss, grads, after), (loss_remat, grads_remat, after_remat) = results
  assert loss == pytest.approx(loss_remat, rel=1e-6)
  for (path, g), (_, g_remat) in zip(grads, grads_remat, strict=True):
    _close(g_remat.get_value(), g.get_value(), 1e-4, err_msg=str(path))
  assert any(not np.array_equal(after[k], before[k]) for k in after if k.endswith('.var'))  # train mode moved them
  for name, value in after.items():
    _close(after_remat[name], value, 1e-6, err_msg=name)


# ---- data parallel ------------------------------------------------------------------------------------------------

def check_global_batch_statistics(directory: str) -> None:
  """In a process with 8 CPU devices: a train-mode forward of 8 clips, once on one device and once with the batch
  split over the 8, gives the same logits, trunk outputs and running statistics (each moved once)."""
  mesh = sharding.make_mesh({'data': 8})
  runs = []
  for split in (False, True):
    model = synchformer_jax.load(directory)
    model.train()
    before = _flat(nnx.state(model, RunningStat))
    graphdef, state = nnx.split(model)
    video, audio, _ = inputs(8)
    if split:
      state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
      video, audio = jax.device_put((video, audio), sharding.batch_sharding(mesh))
      assert len(video.sharding.device_set) == 8

    @jax.jit
    def step(state, video, audio):
      model = nnx.merge(graphdef, state)
      return model(video, audio), nnx.state(model, RunningStat)

    (logits, aux), stats = step(state, video, audio)
    runs.append((jax.device_get((logits, aux)), _flat(stats)))
  (outputs, stats), (outputs_split, stats_split) = runs
  for a, b in zip(jax.tree.leaves(outputs), jax.tree.leaves(outputs_split), strict=True):
    _close(b, a, 1e-4)
  assert stats.keys() == stats_split.keys() == before.keys()
  for name, value in stats.items():
    if name.endswith('num_batches_tracked'):
      assert int(stats_split[name]) == int(value) == int(before[name]) + 1, name
    else:
      assert not np.array_equal(value, before[name]), name
      _close(stats_split[name], value, 1e-6, err_msg=name)


@pytest.mark.slow
def test_batch_statistics_are_over_the_global_batch(tmp_path):
  """As the original's SyncBatchNorm: a batch split over devices moves the running statistics as one device does
  on the whole batch (a fresh process with 8 fake CPU devices; dropout off, so the runs differ in nothing else)."""
  directory = random_model_dir(tmp_path / 'model', 'sparsesync', NO_DROPOUT)
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'}
  code = f'import tests.test_sparsesync_model as t; t.check_global_batch_statistics({directory!r})'
  result = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
