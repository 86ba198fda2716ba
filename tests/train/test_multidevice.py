"""The loop's multi-device guarantees on this host: a resumed run must fit its checkpoint, metrics stay on device
between reads (a NaN still stops the run exactly), gradient accumulation inside the step, MFU from the analytic
FLOPs, and an export that gathers the model alone."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from synchformer_jax import pretrained, sharding
from synchformer_jax.benchmarks.compile_for import abstract_batch
from synchformer_jax.checkpointing import CheckpointMismatchError
from synchformer_jax.train import loop, mfu, trainer
from synchformer_jax.train.config import base_config, model_config
from synchformer_jax.train.loop import NonFiniteLossError, train


def _config(data_dir, **fields):
  config = base_config('sync')
  config.update({'total_steps': 2, 'batch_size': 2, 'checkpoint_every': 1, 'eval_every': 1000, 'log_every': 1,
                 **fields})
  config.data.update(dir=str(data_dir), build_if_missing=False, eval_max_clips=2)
  config.mesh = {'data': 1}
  return config


def _snapshot(workdir):
  """Every file under the workdir with its bytes."""
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob('*')) if p.is_file()}


@pytest.mark.slow
def test_a_checkpoint_of_another_model_stops_the_run_and_changes_nothing(tmp_path, synthetic_data):
  workdir = tmp_path / 'run'
  train(_config(synthetic_data), str(workdir))
  before = _snapshot(workdir)
  assert any(name.startswith('checkpoints/2/') for name in before) and 'metrics.jsonl' in before

  changed = _config(synthetic_data, total_steps=4)
  changed.model.transformer.mlp_dim = 128  # the tiny size has 256
  with pytest.raises(CheckpointMismatchError, match=r'changes model\.transformer\.mlp_dim from the checkpoint'):
    train(changed, str(workdir))
  assert _snapshot(workdir) == before

  # Accepted deliberately, the change must still fit the stored arrays: the first that does not is named.
  changed.accept_config_change = True
  with pytest.raises(CheckpointMismatchError,
                     match=r'transformer\.blocks\.0\.mlp\.fc1\.bias is \(256,\) float32 in the checkpoint, '
                           r'the run has \(128,\) float32'):
    train(changed, str(workdir))
  assert _snapshot(workdir) == before

  # A change that keeps every shape (the learning rate) resumes when accepted.
  retuned = _config(synthetic_data, total_steps=3, accept_config_change=True)
  retuned.optim.learning_rate = 5e-4
  assert train(retuned, str(workdir))['step'] == 3


@pytest.mark.slow
def test_metrics_are_read_at_log_steps_and_a_nan_inside_a_window_is_never_saved(tmp_path, synthetic_data,
                                                                                monkeypatch):
  reads = []
  original_read = loop._MetricsWindow.read
  monkeypatch.setattr(loop._MetricsWindow, 'read', lambda self: reads.append(len(self._pending)) or
                      original_read(self))
  config = _config(synthetic_data, total_steps=6, log_every=3, checkpoint_every=3)
  config.optim.update(learning_rate=1e30, warmup_steps=0, clip_norm=0.0)  # step 1's update overflows
  workdir = tmp_path / 'run'
  with pytest.raises(NonFiniteLossError, match=r'loss is nan at step 2; nothing of it is saved, the last good '
                                               r'checkpoint \(step none\) is kept'):
    train(config, str(workdir))
  assert reads == [3]  # one host read for the window of steps 1-3, before its checkpoint
  assert not list((workdir / 'checkpoints').glob('[0-9]*')) and not (workdir / 'model').exists()
  metrics = workdir / 'metrics.jsonl'  # step 1 is not a log step; 2 and 3 are not finite
  assert not metrics.exists() or metrics.read_text() == ''


@pytest.mark.slow
def test_mfu_from_the_analytic_flops_and_an_export_of_the_model_alone(tmp_path, synthetic_data, monkeypatch):
  copied = []
  original_copy = loop._host_copy
  monkeypatch.setattr(loop, '_host_copy', lambda x: copied.append(x.shape) or original_copy(x))
  config = _config(synthetic_data, total_steps=4, log_every=2, checkpoint_every=4, peak_flops_per_device=1e12)
  workdir = tmp_path / 'run'
  train(config, str(workdir))
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  trained = [row for row in rows if 'loss' in row]
  assert [row['step'] for row in trained] == [2, 4]
  flops = mfu.train_step_flops(model_config(config), config.batch_size)
  for row in trained:
    assert row['mfu'] == pytest.approx(flops / row['step_time_s'] / 1e12, rel=1e-9)

  cfg = model_config(config)
  mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  _, state = trainer.abstract_state(cfg, config.optim, config.total_steps, mesh)
  model_shapes = sorted(v.shape for _, v in nnx.to_flat_state(trainer.model_variables(state)))
  all_shapes = jax.tree.leaves(state)
  # Two exports (the best model at the final eval, and the model), each of the model's variables alone.
  assert sorted(copied) == sorted(model_shapes * 2) and len(all_shapes) > len(model_shapes) + 100  # + moments
  assert pretrained.load(str(workdir / 'model')).cfg.kind == 'sync'


def test_two_micro_batches_of_two_give_the_update_of_one_batch_of_four():
  config = base_config('sync')
  config.data.precomputed_windows = 1  # train on tower features: the accumulated part is the head
  for field in ('embd_dropout', 'attn_dropout', 'resid_dropout'):
    config.model.transformer[field] = 0.0
  config.optim.update(learning_rate=1e-2, warmup_steps=0)
  cfg = model_config(config)
  mesh = sharding.make_mesh({'data': 1}, jax.devices('cpu')[:1])
  rng = np.random.default_rng(0)
  batch = {k: (rng.integers(0, cfg.num_classes, v.shape) if v.dtype == np.int32 else rng.normal(size=v.shape)
               ).astype(v.dtype) for k, v in abstract_batch(config, cfg, 4, mesh).items()}
  results = {}
  for accum in (1, 2):
    graphdef, state, shardings = trainer.create_state(cfg, config.optim, 10, mesh, seed=0)
    steps = trainer.make_trainer(cfg, mesh, graphdef, shardings, grad_accum=accum)
    state, metrics = steps.train_step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
    results[accum] = (state, jax.device_get(metrics))
  (whole, whole_metrics), (accumulated, accumulated_metrics) = results[1], results[2]
  np.testing.assert_allclose(accumulated_metrics['loss'], whole_metrics['loss'], rtol=1e-5)
  np.testing.assert_allclose(accumulated_metrics['accuracy'], whole_metrics['accuracy'])
  params = lambda state: nnx.to_flat_state(nnx.filter_state(state[0], nnx.Param))
  for (path, got), (_, want) in zip(params(accumulated), params(whole), strict=True):
    np.testing.assert_allclose(got.get_value(), want.get_value(), rtol=1e-4, atol=1e-6, err_msg=str(path))
  # One optimiser step for the four clips: the schedule counts updates, not micro-batches.
  assert int(accumulated[1]['step'].get_value()) == int(whole[1]['step'].get_value()) == 1
