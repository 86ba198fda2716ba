"""Measurement helpers: XLA's FLOP count of a known matmul, and the AOT timing record."""
import jax
import jax.numpy as jnp

from synchformer_jax import profiling


def test_step_flops_counts_a_matmul():
  f = jax.jit(lambda a, b: a @ b)
  assert profiling.step_flops(f, jnp.ones((64, 128)), jnp.ones((128, 32))) == 2 * 64 * 128 * 32


def test_time_compiled_reports_compile_steady_state_and_memory():
  result = profiling.time_compiled(lambda a: jnp.tanh(a @ a.T).sum(), jnp.ones((256, 256)), repeats=2)
  assert result['compile_s'] > 0 and len(result['steady_s_all']) == 2
  assert result['xla_flops'] >= 2 * 256 ** 3 and result['xla_argument_gib'] > 0


def test_no_mfu_on_cpu():
  assert profiling.peak_flops_per_device() is None
