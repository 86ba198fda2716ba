"""Which engine runs a model call: XLA (`jax.jit`), or on CPUs with bfloat16 matrix units, PyTorch's kernels.

XLA:CPU widens bfloat16 products to float32, so a bfloat16 model gains nothing from AMX or AVX512-BF16 there;
`synchformer_jax.torch_exec` runs the same jaxpr with torch's oneDNN kernels, which use them (BENCHMARKS.md,
issue 18). The choice is made once per input signature, at its first call:
- `SYNCHFORMER_CPU_EXECUTOR=xla` or `torch` forces one (torch still falls back to XLA for a computation it
  cannot run); the default `auto` takes torch for CPU calls whose jaxpr has bfloat16 matrix products, on a CPU
  with AMX or AVX512-BF16, when torch is installed; everything else runs on XLA.
- Float32 stays on XLA, which with `cpu.INFERENCE_FLAGS` is the faster engine there.
torch is imported only when a call takes it (its libraries add about 0.2 GiB to a process's memory).
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

from synchformer_jax import cpu
from synchformer_jax.errors import InputError

EXECUTOR_ENV = 'SYNCHFORMER_CPU_EXECUTOR'
EXECUTORS = ('auto', 'xla', 'torch')
_log = logging.getLogger(__name__)


def executor_setting() -> str:
  setting = os.environ.get(EXECUTOR_ENV, 'auto')
  if setting not in EXECUTORS:
    raise InputError(f'{EXECUTOR_ENV}: expected one of {EXECUTORS}, got {setting!r}')
  return setting


def has_bf16_products(jaxpr) -> bool:
  """Whether `jaxpr` (inner jaxprs included) has a bfloat16 dot or convolution."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ('dot_general', 'conv_general_dilated') and \
        any(getattr(v.aval, 'dtype', None) == jnp.bfloat16 for v in eqn.invars):
      return True
    inner = [v.jaxpr if isinstance(v, jax_core.ClosedJaxpr) else v for v in eqn.params.values()
             if isinstance(v, (jax_core.ClosedJaxpr, jax_core.Jaxpr))]
    if any(has_bf16_products(j) for j in inner):
      return True
  return False


def _torch_exec():
  """The torch engine's module, or None where torch is not installed (it is optional)."""
  try:
    from synchformer_jax import torch_exec
  except ImportError:
    return None
  return torch_exec


class ModelCall:
  """`fn(*arrays)` run by the engine chosen for each input signature (see the module docstring)."""

  def __init__(self, fn: Callable):
    self.fn = fn
    self.jitted = jax.jit(fn)
    self.torch = None  # a torch_exec.TorchFunction, made when a signature first takes torch
    self.engines: dict = {}

  def engine(self, *args) -> str:
    """'xla' or 'torch' for these arguments' signature (chosen, and the torch trace made, at the first call)."""
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves))
    if key not in self.engines:
      self.engines[key] = self._choose(args)
      cpu.release_free_memory()  # what tracing the function freed
    return self.engines[key]

  def _choose(self, args) -> str:
    setting = executor_setting()
    if setting == 'xla' or jax.default_backend() != 'cpu':
      return 'xla'
    if setting == 'auto' and not cpu.has_bf16_matmul_units():
      return 'xla'
    # The jit's own trace: JAX reuses it when it compiles this signature, and so does the torch engine.
    traced = self.jitted.trace(*args)
    if setting == 'auto' and not has_bf16_products(traced.jaxpr.jaxpr):
      return 'xla'
    torch_exec = _torch_exec()
    if torch_exec is None:
      return 'xla'
    self.torch = self.torch or torch_exec.TorchFunction(self.fn)
    try:
      self.torch.trace(*args, traced=traced)
    except torch_exec.UnsupportedPrimitive as e:
      _log.info('running on XLA: %s', e)
      return 'xla'
    return 'torch'

  def __call__(self, *args):
    return (self.torch if self.engine(*args) == 'torch' else self.jitted)(*args)
