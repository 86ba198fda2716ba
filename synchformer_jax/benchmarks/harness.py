"""The benchmark harness: AOT compile and timing of a jitted call, XLA's analyses, the machine it ran on.

Compilation is done ahead of time (`lower().compile()`), so compile time is reported on its own and
XLA's memory and cost analyses come from the same executable that is timed.
"""
from __future__ import annotations

import os
import platform
import resource
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from synchformer_jax import cpu
from synchformer_jax.constants import TARGET_KEY
from synchformer_jax.models.config import ModelConfig


def peak_rss_gib() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _cpu_model() -> str:
  """The CPU's model name with its vector ISA ('AMD EPYC, AVX2 AVX-512 AVX512-BF16'), so that a row says both."""
  model = cpu.cpu_info('model name') or platform.processor() or platform.machine()
  isa = ' '.join(cpu.cpu_isa())
  return f'{model}, {isa}' if isa else model


# Variables that cap the ISA of torch's kernel libraries below the CPU's (oneDNN, MKL, ATen's own vector kernels);
# with XLA_FLAGS=--xla_cpu_max_isa=... they emulate an older CPU, so a row run under them says so.
ISA_CAP_VARIABLES = ('ONEDNN_MAX_CPU_ISA', 'MKL_ENABLE_INSTRUCTIONS', 'ATEN_CPU_CAPABILITY')


def machine_description() -> dict[str, Any]:
  device = jax.devices()[0]
  return {'platform': device.platform, 'device': device.device_kind, 'n_devices': jax.device_count(),
          'cpu': _cpu_model(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'flax': flax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'isa_caps': {name: os.environ[name] for name in ISA_CAP_VARIABLES if name in os.environ}}


def time_calls(call: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, Any]:
  """Wall times of `repeats` calls after `warmup` calls (first-call allocations), with the load average
  (other processes on the host) at the start and end and this process's CPU use."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  load_before, cpu_before = os.getloadavg(), os.times()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  cpu_after = os.times()
  cpu_s = cpu_after.user - cpu_before.user + cpu_after.system - cpu_before.system
  return {'steady_s_median': float(np.median(times)), 'steady_s_all': times,
          'cpu_utilisation': cpu_s / sum(times), 'load_average_1min': [load_before[0], os.getloadavg()[0]]}


def torch_op_profile(call: Callable[[], Any], top: int = 10) -> list[dict[str, Any]]:
  """One more call under torch's profiler: the `top` operations by self CPU time, with their share of it (for the
  torch engines: the original's mirror and `torch_exec`)."""
  import torch  # optional dependency: only the torch engines are profiled this way
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
    jax.block_until_ready(call())
  events = sorted(profile.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
  total = sum(e.self_cpu_time_total for e in events)
  return [{'op': e.key, 'calls': e.count, 'self_s': e.self_cpu_time_total / 1e6,
           'share': e.self_cpu_time_total / total} for e in events[:top]]


def xla_analyses(compiled) -> dict[str, Any]:
  """FLOPs and memory of a compiled executable, from XLA's cost and memory analyses."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  result = {'xla_flops': float(cost.get('flops', float('nan'))) if cost else float('nan')}
  memory = compiled.memory_analysis()
  if memory is not None:
    sizes = {'temp': memory.temp_size_in_bytes, 'argument': memory.argument_size_in_bytes,
             'output': memory.output_size_in_bytes, 'alias': memory.alias_size_in_bytes}
    result.update({f'xla_{name}_gib': size / 2 ** 30 for name, size in sizes.items()})
    # Donated (aliased) outputs reuse their arguments' buffers.
    result['xla_peak_gib'] = (sizes['argument'] + sizes['output'] - sizes['alias'] + sizes['temp']) / 2 ** 30
  return result


def time_compiled(fn: Callable, *args, repeats: int = 3) -> dict[str, Any]:
  """AOT-compiles `fn(*args)`, then times `repeats` calls after one warm-up call."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  return {'compile_s': compile_s, **time_calls(lambda: compiled(*args), repeats), **xla_analyses(compiled)}


def batch_shapes(cfg: ModelConfig, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
  """A stage's model inputs (and class targets), in its layouts (SparseSync: one clip, not segments)."""
  if cfg.kind == 'sparsesync':
    video, audio = (batch, cfg.frames, 3, cfg.crop, cfg.crop), (batch, 1, cfg.audio_freq, cfg.audio_frames)
  else:
    s, crop, frames = cfg.transformer.n_segments, cfg.video.crop, cfg.video.frames
    if cfg.kind == 'avclip':
      video, audio = (batch, s, 3, frames, crop, crop), (batch, s, cfg.audio.n_frames, cfg.audio.n_mels)
    else:
      video, audio = (batch, s, frames, 3, crop, crop), (batch, s, 1, cfg.audio.n_mels, cfg.audio.n_frames)
  shapes = {'video': jax.ShapeDtypeStruct(video, jnp.float32), 'audio': jax.ShapeDtypeStruct(audio, jnp.float32)}
  if cfg.kind != 'avclip':
    shapes[TARGET_KEY[cfg.kind]] = jax.ShapeDtypeStruct((batch,), jnp.int32)
  return shapes


def random_batch(cfg: ModelConfig, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Uniform random inputs in [-1, 1] and random class targets of `batch_shapes`."""
  rng = np.random.default_rng(seed)
  return {name: (rng.integers(0, cfg.num_classes, x.shape) if x.dtype == jnp.int32
                 else rng.uniform(-1, 1, x.shape)).astype(x.dtype)
          for name, x in batch_shapes(cfg, batch).items()}
