"""The CPU torch executor (a jaxpr run by torch kernels), the engine choice of inference, XLA:CPU's inference
settings, and the PyTorch mirror of the original forward that the CPU benchmarks compare against."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from synchformer_jax import cpu
from synchformer_jax.errors import InputError
from synchformer_jax.models import layers
from tests.conftest import REPO_ROOT, SHARED_DIR, require_fixture, require_optional

torch = require_optional('torch', 'torch')
from synchformer_jax import torch_exec  # noqa: E402 - needs torch
from synchformer_jax.inference import executor  # noqa: E402


def _many_primitives(x, w, kernel):
  """A function that reaches most of the primitive table: products, convolution, reductions, shapes, control."""
  y = jnp.einsum('bld,de->ble', x, w)                                     # dot_general
  z = jnp.einsum('ble,bme->blm', y, y)                                    # batched dot_general
  image = x[:, None, :, :]                                                # (B, 1, L, D)
  conv = jax.lax.conv_general_dilated(image, kernel, (1, 2), ((1, 1), (0, 1)))
  s = jax.nn.softmax(z, axis=-1)                                          # custom_jvp, reduce_max, exp, div
  idx = jax.lax.broadcasted_iota(jnp.int32, y.shape, 1) // 2 % 3          # iota, integer div and rem
  chosen = jnp.where(idx > 0, jnp.tanh(y), jax.nn.gelu(y, approximate=False))
  padded = jnp.pad(chosen, ((0, 0), (1, 2), (0, 0)))[:, 1:-2:1]
  carry, stacked = jax.lax.scan(lambda c, row: (c + row.sum(), row * 2.0), 0.0, jnp.moveaxis(padded, 1, 0))
  parts = jnp.split(y, 2, axis=-1)
  return {'mix': s @ chosen + stacked.transpose(1, 0, 2), 'carry': carry, 'conv': conv.mean(axis=(2, 3)),
          'stats': jnp.stack([y.max(), y.min(), jnp.sqrt(jnp.abs(y)).sum(), jnp.argmax(y.sum(-1), axis=-1).sum()]),
          'parts': jnp.concatenate(parts[::-1], axis=-1), 'flag': jnp.all(jnp.isfinite(y)), 'half': y.astype(
              jnp.bfloat16) * 2}


def test_a_jaxpr_on_torch_gives_what_xla_gives():
  rng = np.random.default_rng(0)
  args = (jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32), jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
          jnp.asarray(rng.normal(size=(4, 1, 3, 3)), jnp.float32))
  expected = jax.jit(_many_primitives)(*args)
  got = torch_exec.TorchFunction(_many_primitives)(*args)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for name in expected:
    assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape, name
    np.testing.assert_allclose(np.asarray(got[name], np.float32), np.asarray(expected[name], np.float32),
                               rtol=1e-5, atol=1e-5, err_msg=name)


def test_gathers_of_every_form_give_what_xla_gives():
  """take_along_axis (batching dims), fancy and mixed indexing, dynamic slices, out-of-bounds fill and clip."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  idx = jnp.asarray(rng.integers(-6, 6, size=(3, 5, 2)), jnp.int32)
  row = jnp.asarray([4, 0, 2, 7], jnp.int32)
  ints = jnp.arange(20, dtype=jnp.int32).reshape(4, 5)

  def fn(x, idx, row, ints):
    return {'along': jnp.take_along_axis(x, idx % 4, axis=2),
            'along_fill': jnp.take_along_axis(x, idx, axis=2, mode='fill'),
            'rows': x[:, row % 5], 'mixed': x[row % 3, :, row % 4], 'clip': jnp.take(x, row, axis=1, mode='clip'),
            'fill': jnp.take(x, row, axis=1, mode='fill', fill_value=-1.0),
            'ints_fill': jnp.take(ints, row, axis=0, mode='fill'),
            'window': jax.lax.dynamic_slice(x, (row[0] % 2, row[2], 1), (2, 3, 2))}

  expected = jax.jit(fn)(x, idx, row, ints)
  got = torch_exec.TorchFunction(fn)(x, idx, row, ints)
  for name in expected:
    assert got[name].shape == expected[name].shape and got[name].dtype == expected[name].dtype, name
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]), err_msg=name)


def test_max_pools_give_what_xla_gives():
  """Max pooling as SparseSync's S3D and ResNet use it: 3-D and 2-D windows, strides, padding, channels last."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 5, 9, 8, 3)), jnp.float32)

  def fn(x):
    return {'3d': nnx.max_pool(x, (3, 3, 3), (2, 2, 2), padding='SAME'),
            '2d': nnx.max_pool(x[:, 0], (3, 3), (2, 2), padding=((1, 1), (1, 1))),
            '1x3x3': nnx.max_pool(x, (1, 3, 3), (1, 2, 2), padding='VALID'),
            'dilated': jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1, 1), (1, 1, 1, 1, 1), 'VALID',
                                             window_dilation=(1, 2, 1, 1, 1))}

  expected, got = jax.jit(fn)(x), torch_exec.TorchFunction(fn)(x)
  for name in expected:
    assert got[name].shape == expected[name].shape, name
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]), err_msg=name)


@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_named_kernels_match_their_jax_definitions(dtype, tol):
  """Attention, exact GELU and LayerNorm run as one torch kernel each (SDPA, F.gelu, F.layer_norm)."""
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 5, 3, 8)), dtype) for _ in range(3))
  scale_bias = jnp.asarray(1 + 0.1 * rng.normal(size=(8,)), jnp.float32)

  def fn(q, k, v, scale):
    norm = layers._layer_norm(1e-6)(q, scale, scale - 1)
    return layers.gelu(layers.attend(q, k, v, scale=0.3)), norm

  names = {e.params.get('name', '').partition(':')[0] for e in jax.make_jaxpr(fn)(q, k, v, scale_bias).jaxpr.eqns}
  assert {layers.ATTENTION_NAME, layers.GELU_NAME, layers.LAYER_NORM_NAME} <= names
  expected, got = jax.jit(fn)(q, k, v, scale_bias), torch_exec.TorchFunction(fn)(q, k, v, scale_bias)
  for e, g in zip(expected, got):
    assert e.dtype == g.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32), rtol=tol, atol=tol)


def test_an_unmapped_primitive_is_refused_and_inference_falls_back_to_xla(monkeypatch):
  fn = lambda x: jnp.sort(x.astype(jnp.bfloat16) @ x.astype(jnp.bfloat16), axis=0)  # noqa: E731 - sort: unmapped
  x = jnp.arange(4.0).reshape(2, 2)
  with pytest.raises(torch_exec.UnsupportedPrimitive, match='sort'):
    torch_exec.TorchFunction(fn)(x)
  monkeypatch.setenv(executor.EXECUTOR_ENV, 'torch')
  call = executor.ModelCall(fn)
  assert call.engine(x) == 'xla'
  np.testing.assert_array_equal(np.asarray(call(x), np.float32), np.asarray(jax.jit(fn)(x), np.float32))


def test_the_engine_is_torch_only_for_bf16_products_on_cpus_with_bf16_units(monkeypatch):
  f32 = lambda x: x @ x  # noqa: E731
  bf16 = lambda x: x.astype(jnp.bfloat16) @ x.astype(jnp.bfloat16)  # noqa: E731
  x = jnp.ones((4, 4))
  on_cpu = jax.default_backend() == 'cpu'
  monkeypatch.setattr(cpu, 'has_bf16_matmul_units', lambda: True)
  assert executor.ModelCall(f32).engine(x) == 'xla'
  assert executor.ModelCall(bf16).engine(x) == ('torch' if on_cpu else 'xla')
  monkeypatch.setattr(cpu, 'has_bf16_matmul_units', lambda: False)
  assert executor.ModelCall(bf16).engine(x) == 'xla'
  monkeypatch.setenv(executor.EXECUTOR_ENV, 'torch')  # forced: taken for float32 too (on a CPU backend)
  assert executor.ModelCall(f32).engine(x) == ('torch' if on_cpu else 'xla')
  monkeypatch.setenv(executor.EXECUTOR_ENV, 'xla')
  monkeypatch.setattr(cpu, 'has_bf16_matmul_units', lambda: True)
  assert executor.ModelCall(bf16).engine(x) == 'xla'
  monkeypatch.setenv(executor.EXECUTOR_ENV, 'fast')
  with pytest.raises(InputError, match=executor.EXECUTOR_ENV):
    executor.ModelCall(bf16).engine(x)


def test_torch_is_imported_only_when_a_call_takes_the_torch_engine():
  """Float32 inference leaves torch unloaded (its libraries are 0.2 GiB of the process's memory)."""
  code = ('import sys, jax.numpy as jnp; from synchformer_jax import cpu; from synchformer_jax.inference import '
          'executor; cpu.has_bf16_matmul_units = lambda: True; x = jnp.ones((4, 4)); '
          'f32 = executor.ModelCall(lambda x: x @ x); f32(x); before = "torch" in sys.modules; '
          'bf16 = executor.ModelCall(lambda x: x.astype(jnp.bfloat16) @ x.astype(jnp.bfloat16)); '
          'print(f32.engine(x), before, bf16.engine(x), "torch" in sys.modules)')
  on_cpu = jax.default_backend() == 'cpu'
  assert _fresh_python(code).split() == ['xla', 'False', 'torch' if on_cpu else 'xla', str(on_cpu)]


def test_the_tiny_stage2_model_gives_the_same_logits_on_either_engine(monkeypatch):
  """A whole model through inference's call path (`compiled.model_logits`), forced onto each engine."""
  from synchformer_jax import sharding
  from synchformer_jax.benchmarks.harness import random_batch
  from synchformer_jax.inference import compiled
  from synchformer_jax.models import build_model
  from synchformer_jax.models.config import config_for_size
  logits = {}
  for dtype in ('float32', 'bfloat16'):
    cfg = config_for_size('sync', 'tiny', dtype=dtype)
    model = sharding.create_sharded(lambda: build_model(cfg, 0), sharding.make_mesh({'data': 1}, jax.devices()[:1]))
    model.eval()
    batch = random_batch(cfg, 2, 0)
    for engine in ('xla', 'torch'):
      monkeypatch.setenv(executor.EXECUTOR_ENV, engine)
      compiled._compiled.cache_clear()
      logits[dtype, engine] = np.asarray(compiled.model_logits(model, batch['video'], batch['audio']), np.float32)
  np.testing.assert_allclose(logits['float32', 'torch'], logits['float32', 'xla'], rtol=1e-5, atol=1e-5)
  scale = max(1.0, float(np.abs(logits['float32', 'xla']).max()))
  assert np.abs(logits['bfloat16', 'torch'] - logits['float32', 'xla']).max() < 0.05 * scale
  np.testing.assert_array_equal(logits['bfloat16', 'torch'].argmax(-1), logits['float32', 'xla'].argmax(-1))


def _fresh_python(code: str, **env) -> str:
  full_env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', cpu.KEEP_DEFAULTS_ENV)}
  result = subprocess.run([sys.executable, '-c', code], env={**full_env, **env}, cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True)
  return result.stdout.strip()


def test_the_inference_flags_are_added_before_jax_starts_and_only_then():
  code = ('import os, jax; from synchformer_jax import cpu; before = cpu.use_inference_flags(); '
          'jax.numpy.zeros(1).block_until_ready(); print(len(before), len(cpu.use_inference_flags()), '
          'cpu.inference_flags_set(), os.environ.get("XLA_FLAGS", ""))')
  import platform
  x86 = platform.machine().lower() in ('x86_64', 'amd64')
  added, again, complete, flags = _fresh_python(code).split(' ', 3)
  assert (int(added), int(again), complete == 'True') == ((len(cpu.INFERENCE_FLAGS), 0, True) if x86 else (0, 0, False))
  if x86:
    assert all(f'--{name}=' in flags for name in cpu.INFERENCE_FLAGS)
  kept = _fresh_python(code, **{cpu.KEEP_DEFAULTS_ENV: '1'}).split(' ', 3)
  assert kept[:3] == ['0', '0', 'True'] and len(kept) == 3  # no flags: XLA's own defaults, on purpose
  mine = _fresh_python(code, XLA_FLAGS='--xla_cpu_use_onednn=false').split(' ', 3)
  assert '--xla_cpu_use_onednn=false' in mine[3] and '--xla_cpu_use_onednn=true' not in mine[3]


def test_the_pytorch_mirror_reproduces_the_original_on_a_parity_case():
  """The benchmarks' stand-in for the original code gives the case's reference outputs from its checkpoint."""
  from synchformer_jax.benchmarks.torch_mirror import MirrorSizes, SynchformerMirror
  case_dir = require_fixture(SHARED_DIR / 'parity' / 'cases' / 'sync_tiny', 'parity case sync_tiny')
  case = json.loads((case_dir / 'case.json').read_text())
  sizes = case['size_params']
  state_dict = torch.load(case_dir / 'checkpoint.pt', map_location='cpu', weights_only=False)['model']
  mirror = SynchformerMirror(state_dict, MirrorSizes(sizes['v_heads'], sizes['a_heads'], sizes['t_heads']))
  sys.path.insert(0, str(case_dir.parent.parent))
  try:
    import make_weights
  finally:
    sys.path.pop(0)
  inputs = make_weights.case_inputs(str(case_dir))
  out = mirror(torch.from_numpy(inputs['video']), torch.from_numpy(inputs['audio']))
  reference = np.load(case_dir / 'outputs.npz')
  for name in ('logits', 'vfeat_extractor', 'afeat_extractor'):
    np.testing.assert_allclose(out[name].numpy(), reference[name], rtol=1e-5, atol=1e-5, err_msg=name)
