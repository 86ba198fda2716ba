"""The benchmark harness: XLA's FLOP counts of HLO, the AOT timing record, the train-step benchmark, Markdown rows,
and `scripts/benchmark.py` itself."""
import importlib.util
import json

import jax
import jax.numpy as jnp
import pytest

from synchformer_jax import cpu
from synchformer_jax.benchmarks import harness, report, suites
from synchformer_jax.errors import InputError
from synchformer_jax.benchmarks.hlo_flops import matmul_flops
from synchformer_jax.models import flops
from synchformer_jax.models.config import config_for_size
from synchformer_jax.train import mfu
from synchformer_jax.inference import executor
from tests.conftest import REPO_ROOT, require_torch


@pytest.fixture(autouse=True)
def _restore_executor_setting(monkeypatch):
  # scripts/benchmark.py sets the engine for its process; here it runs in pytest's, so undo it after each test
  monkeypatch.setenv(executor.EXECUTOR_ENV, 'auto')


def test_step_flops_counts_a_matmul():
  f = jax.jit(lambda a, b: a @ b)
  assert mfu.step_flops(f, jnp.ones((64, 128)), jnp.ones((128, 32))) == 2 * 64 * 128 * 32


def test_matmul_flops_reads_dots_and_convolutions_from_hlo():
  def f(a, b, image, kernel):
    conv = jax.lax.conv_general_dilated(image, kernel, (2, 2), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.einsum('bij,bjk->bik', a, b), conv

  args = jnp.ones((3, 8, 4)), jnp.ones((3, 4, 5)), jnp.ones((2, 9, 9, 4)), jnp.ones((3, 3, 4, 6))
  hlo = jax.jit(f).lower(*args).as_text(dialect='hlo')
  assert matmul_flops(hlo) == 2 * 3 * 8 * 4 * 5 + 2 * (2 * 4 * 4 * 6) * (3 * 3 * 4)


def test_time_compiled_reports_compile_steady_state_and_memory():
  result = harness.time_compiled(lambda a: jnp.tanh(a @ a.T).sum(), jnp.ones((256, 256)), repeats=2)
  assert result['compile_s'] > 0 and len(result['steady_s_all']) == 2
  assert result['xla_flops'] >= 2 * 256 ** 3 and result['xla_argument_gib'] > 0
  assert len(result['load_average_1min']) == 2


def test_train_step_benchmark_runs_the_real_step():
  result = suites.train_step(config_for_size('avclip', 'tiny'), batch=2, repeats=1)
  assert result['clips_per_s'] > 0
  assert result['achieved_tflops_per_s'] == result['analytic_flops'] / result['steady_s_median'] / 1e12
  # The state is donated: its buffers are reused for the updated state.
  assert result['xla_alias_gib'] > 0 and result['xla_peak_gib'] > 0


def test_markdown_row_names_the_command_and_machine(monkeypatch):
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')  # an emulated older CPU is named in the row
  result = {'benchmark': 'flops', 'stage': 'sync', 'size': 'tiny', 'batch': 1, 'dtype': 'float32',
            'machine': harness.machine_description(), 'command': 'python scripts/benchmark.py flops',
            **suites.forward_flops_check(config_for_size('sync', 'tiny'))}
  row = report.markdown_row(result)
  assert row.startswith('| flops | sync tiny B=1 float32 |') and '`python scripts/benchmark.py flops`' in row
  assert 'analytic' in row and jax.__version__ in row
  assert result['machine']['cpu'] in row and ' '.join(cpu.cpu_isa()) in row  # the ISA names, AMX included
  assert 'ONEDNN_MAX_CPU_ISA=AVX2' in row


def _benchmark_script():
  spec = importlib.util.spec_from_file_location('benchmark_script', REPO_ROOT / 'scripts' / 'benchmark.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_sparsesync_forward_benchmark_runs(capsys):
  argv = ['stage2-forward', '--stage', 'sparsesync', '--size', 'tiny', '--repeats', '1']
  assert _benchmark_script().main(argv) == 0
  text = capsys.readouterr().out
  result = json.loads(text[:text.rindex('\n|')])
  assert result['stage'] == 'sparsesync' and result['frames'] == 125 and len(result['steady_s_all']) == 1
  assert result['compile_s'] > 0 and result['xla_peak_gib'] > 0 and result['peak_rss_gib'] > 0
  assert result['analytic_flops'] == flops.forward_flops(config_for_size('sparsesync', 'tiny'))['total']
  row = text.splitlines()[-1]
  assert row.startswith('| stage2-forward | sparsesync tiny B=1 float32 | engine xla; compile ') and result['machine']['cpu'] in row


def test_the_forward_benchmarks_run_on_one_stored_model_each_on_its_own_side(tmp_path, capsys):
  """stage2-forward on a model directory and original-forward on the same model as an original checkpoint, both
  profiled (torch's top operations); a directory of another architecture is refused by name, and so is a
  profile of the XLA engine."""
  require_torch()
  import synchformer_jax
  from synchformer_jax.conversion import export_torch_checkpoint
  from synchformer_jax.models import build_model
  cfg = config_for_size('sync', 'tiny')
  synchformer_jax.save(build_model(cfg, 0), str(tmp_path / 'model'), cfg)
  export_torch_checkpoint(str(tmp_path / 'model'), str(tmp_path / 'sync.pt'))
  model_dir = ['stage2-forward', '--model_dir', str(tmp_path / 'model')]
  for argv in ([*model_dir, '--executor', 'torch'], ['original-forward', '--checkpoint', str(tmp_path / 'sync.pt')]):
    assert _benchmark_script().main([*argv, '--size', 'tiny', '--repeats', '1', '--profile']) == 0
    text = capsys.readouterr().out
    result = json.loads(text[:text.rindex('\n|')])
    assert result['steady_s_median'] > 0 and 0 < sum(p['share'] for p in result['profile']) <= 1 + 1e-9
    assert 'most time in aten::' in text.splitlines()[-1]
  with pytest.raises(InputError, match='--model_dir .*model: its model is not the sync model'):
    _benchmark_script().main([*model_dir, '--size', 'small'])
  with pytest.raises(InputError, match='--profile: only the torch engine'):
    _benchmark_script().main([*model_dir, '--size', 'tiny', '--executor', 'xla', '--profile'])
