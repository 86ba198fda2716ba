"""The real train and eval steps compiled for a TPU slice from this host (libtpu, no TPU), and the batch search."""
import json
import subprocess
import sys

import jax
import pytest

from synchformer_jax import sharding
from synchformer_jax.benchmarks import compile_for
from synchformer_jax.models.config import config_for_size
from synchformer_jax.train import mfu, trainer
from synchformer_jax.train.config import base_config, model_config
from tests.conftest import REPO_ROOT, require_optional


def _tiny(stage: str, **mesh):
  require_optional('libtpu', 'test')
  config = base_config(stage)
  config.mesh = mesh
  return config


def _param_bytes_per_chip(config, topology: str) -> tuple[float, float]:
  """(per chip, total) GiB of the model's parameters under the config's mesh, from the abstract state."""
  mesh = sharding.make_mesh(dict(config.mesh), compile_for.topology_devices(topology))
  _, state = trainer.abstract_state(model_config(config), config.optim, 10, mesh)
  params = trainer.model_variables(state)
  return compile_for._bytes_per_device(params) / 2 ** 30, compile_for._total_bytes(params) / 2 ** 30


@pytest.mark.slow
def test_stage1_with_fsdp_keeps_a_quarter_of_the_parameters_on_each_of_four_chips():
  result = compile_for.compile_steps(_tiny('avclip', data=1, fsdp=4, tensor=1), 'v5e:2x2', batch_per_chip=2,
                                     with_eval=False)
  assert result['chips'] == 4 and result['global_batch'] == 8
  total = result['param_gib_total']
  # Vectors too short to split four ways (the norms and biases of the tiny widths) stay whole.
  assert total / 4 <= result['param_gib_per_chip'] < 0.3 * total
  assert _param_bytes_per_chip(_tiny('avclip', data=4, fsdp=1, tensor=1), 'v5e:2x2') == (total, total)
  assert result['fits'] and 0 < result['train']['memory']['peak_gib'] < result['hbm_gib_per_chip'] == 16
  # Unscanned blocks: XLA's FLOPs (per chip, times the chips) cover the executed matmuls, and a little elementwise
  # work besides (measured: 0.2 % more).
  assert 0.99 <= result['xla_flops_all_chips'] / result['executed_train_flops'] < 1.02
  # fsdp gathers its split parameters for the forward and backward; never a whole activation: the blocks' outputs
  # of all 8 clips (8 × 14 segments × 65 tokens × 64 wide, float32: 1.8 MiB) would exceed the largest parameter
  # (the 1536 × 64 patch embedding, 0.375 MiB); the segment embeddings (112 × 64), which the contrastive loss
  # compares across the batch, do not.
  assert result['train']['collectives']['all-gather'] > 0
  assert 0 < result['train']['largest_all_gather_mib'] <= result['largest_param_mib']


@pytest.mark.slow
def test_a_data_fsdp_tensor_step_gathers_parameters_never_whole_activations():
  result = compile_for.compile_steps(_tiny('avclip', data=2, fsdp=2, tensor=2), 'v5p:2x2x2', batch_per_chip=2,
                                     with_eval=False)
  assert result['chips'] == 8 and result['global_batch'] == 8
  assert 0 < result['train']['largest_all_gather_mib'] <= result['largest_param_mib']


def test_the_model_pins_each_block_output_under_the_activation_rules():
  require_optional('libtpu', 'test')
  config = base_config('avclip')
  cfg = model_config(config)
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2}, compile_for.topology_devices('v5p:2x2x2'))
  graphdef, state = trainer.abstract_state(cfg, config.optim, 10, mesh)
  steps = trainer.make_trainer(cfg, mesh, graphdef, jax.tree.map(lambda x: x.sharding, state))
  lowered = steps.eval_step.lower(state, compile_for.abstract_batch(config, cfg, 8, mesh))
  pinned = lowered.as_text().count('sdy.sharding_constraint')
  assert pinned >= cfg.video.depth + cfg.audio.depth


@pytest.mark.slow
def test_the_script_compiles_stage2_data_parallel_and_writes_the_json(tmp_path):
  require_optional('libtpu', 'test')
  out = tmp_path / 'compile.json'
  run = subprocess.run([sys.executable, 'scripts/compile_for.py', '--config', 'configs/sync.py',
                        '--topology', 'v5e:2x2', '--config.mesh.data=4', '--batch_per_chip=1', '--out', str(out)],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'of 16 GiB HBM' in run.stdout and 'compile time: train step' in run.stdout
  result = json.loads(out.read_text())
  assert result['command'].startswith('python scripts/compile_for.py --config configs/sync.py')
  assert result['global_batch'] == 4 and result['eval']['compile_s'] > 0 and result['train']['compile_s'] > 0
  # Data parallelism keeps every parameter on every chip, reduces the gradients and gathers nothing.
  assert result['param_gib_per_chip'] == result['param_gib_total']
  assert result['train']['collectives']['all-gather'] == 0 and result['train']['collectives']['all-reduce'] > 0
  # configs/sync.py trains on precomputed tower features: the step's model FLOPs are the head's alone.
  cfg = config_for_size('sync', 'tiny')
  assert result['analytic_train_flops'] == mfu.train_step_flops(cfg, 4, frozen_towers_run=False)
  assert result['xla_flops_all_chips'] > result['analytic_train_flops']  # and the elementwise work beside


def test_an_unknown_chip_is_named():
  with pytest.raises(ValueError, match=r"topology 'v9x:2x2'.*v5p:2x2x1"):
    compile_for.chip_of('v9x:2x2')


@pytest.mark.parametrize('fixed, per_clip, curvature', [(3.0, 8.0, 0.0), (3.0, 80.0, 0.0), (3.0, 100.0, 0.0),
                                                         (3.0, 2.2, 0.004), (2.0, 0.001, 0.0)])
def test_the_batch_search_finds_the_largest_fit_in_few_compiles(monkeypatch, fixed, per_clip, curvature):
  """A stand-in for the compiler: memory linear in the batch (or slightly curved); XLA refuses what exceeds HBM."""
  hbm = compile_for.HBM_GIB['v5p']
  peak = lambda batch: fixed + per_clip * batch + curvature * batch ** 2
  true_max = max([b for b in range(1, 5000) if peak(b) <= hbm] + [0])

  def fake_fits(config, topology, batch):
    if peak(batch) > hbm:
      return False, 'RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm'
    return True, {'train': {'memory': {'peak_gib': peak(batch)}}, 'batch_per_chip': batch}

  monkeypatch.setattr(compile_for, 'fits', fake_fits)
  search = compile_for.find_max_batch(None, 'v5p:2x2x1')
  assert search['max_batch_per_chip'] == min(true_max, 4096)
  assert len(search['probes']) <= (4 if not curvature else 8)  # a curve: bisection's log2(40) at worst
  if true_max:
    assert search['at_max']['batch_per_chip'] == min(true_max, 4096)
  # Started from a batch an earlier search found (compiled again), or from one that does not fit: the same answer.
  for start in (3, true_max, true_max + 5):
    resumed = compile_for.find_max_batch(None, 'v5p:2x2x1', start=max(start, 1))
    assert resumed['max_batch_per_chip'] == min(true_max, 4096)
    assert resumed['probes'][0]['batch_per_chip'] == min(max(start, 1), 4096)
