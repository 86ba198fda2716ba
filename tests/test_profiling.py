"""Measurement helpers: FLOP counts (analytic against XLA's), the AOT timing record, the train-step benchmark."""
import jax
import jax.numpy as jnp
import pytest

from synchformer_jax import flops, profiling
from synchformer_jax.models.config import config_for_size


def test_step_flops_counts_a_matmul():
  f = jax.jit(lambda a, b: a @ b)
  assert profiling.step_flops(f, jnp.ones((64, 128)), jnp.ones((128, 32))) == 2 * 64 * 128 * 32


def test_matmul_flops_reads_dots_and_convolutions_from_hlo():
  def f(a, b, image, kernel):
    conv = jax.lax.conv_general_dilated(image, kernel, (2, 2), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.einsum('bij,bjk->bik', a, b), conv

  args = jnp.ones((3, 8, 4)), jnp.ones((3, 4, 5)), jnp.ones((2, 9, 9, 4)), jnp.ones((3, 3, 4, 6))
  hlo = jax.jit(f).lower(*args).as_text(dialect='hlo')
  assert profiling.matmul_flops(hlo) == 2 * 3 * 8 * 4 * 5 + 2 * (2 * 4 * 4 * 6) * (3 * 3 * 4)


def test_full_size_forward_is_5_7_tflop_and_mostly_video():
  counts = flops.forward_flops(config_for_size('sync', 'full'))
  assert counts['total'] == pytest.approx(5.72e12, rel=0.01)
  assert counts['video'] / counts['total'] == pytest.approx(0.96, abs=0.01)


@pytest.mark.parametrize('kind', ['sync', 'synchability', 'avclip'])
def test_analytic_flops_match_the_matmuls_xla_is_given(kind):
  check = profiling.forward_flops_check(config_for_size(kind, 'tiny'), batch=2)
  # The CLS query's attention is a multiply-reduce, not a dot, and the tiny model's position-grid resize
  # is an extra dot: together well under 1 %.
  assert check['xla_matmul_over_analytic'] == pytest.approx(1.0, abs=0.01)
  # XLA's own count adds the elementwise work (GELU, softmax, norms): a larger share at width 64.
  assert 1.0 < check['xla_over_analytic'] < 1.15


def test_train_step_flops_count_frozen_towers_once():
  cfg = config_for_size('sync', 'tiny')
  parts = flops.forward_flops(cfg)
  assert profiling.train_step_flops(cfg, 2) == 2 * (parts['video'] + parts['audio'] + 3 * parts['head'])
  avclip = config_for_size('avclip', 'tiny')
  assert profiling.train_step_flops(avclip, 2) == 2 * 3 * flops.forward_flops(avclip)['total']


def test_time_compiled_reports_compile_steady_state_and_memory():
  result = profiling.time_compiled(lambda a: jnp.tanh(a @ a.T).sum(), jnp.ones((256, 256)), repeats=2)
  assert result['compile_s'] > 0 and len(result['steady_s_all']) == 2
  assert result['xla_flops'] >= 2 * 256 ** 3 and result['xla_argument_gib'] > 0
  assert len(result['load_average_1min']) == 2


def test_train_step_benchmark_runs_the_real_step():
  result = profiling.train_step(config_for_size('avclip', 'tiny'), batch=2, repeats=1)
  assert result['clips_per_s'] > 0 and result['mfu'] is None  # no known peak on CPU
  assert result['analytic_flops'] == profiling.train_step_flops(config_for_size('avclip', 'tiny'), 2)
  # The state is donated: its buffers are reused for the updated state.
  assert result['xla_alias_gib'] > 0 and result['xla_peak_gib'] > 0


def test_markdown_row_names_the_command_and_machine():
  result = {'benchmark': 'flops', 'stage': 'sync', 'size': 'tiny', 'batch': 1, 'dtype': 'float32',
            'machine': profiling.machine_description(), 'command': 'python scripts/benchmark.py flops',
            **profiling.forward_flops_check(config_for_size('sync', 'tiny'))}
  row = profiling.markdown_row(result)
  assert row.startswith('| flops | sync tiny B=1 float32 |') and '`python scripts/benchmark.py flops`' in row
  assert 'analytic' in row and jax.__version__ in row


def test_no_mfu_on_cpu():
  assert profiling.peak_flops_per_device() is None
