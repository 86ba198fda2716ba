"""Measuring models: compile time, steady-state time, memory and FLOPs of a jitted step.

Compilation is done ahead of time (`lower().compile()`), so compile time is reported on its own and
XLA's memory and cost analyses come from the same executable that is timed.
"""
from __future__ import annotations

import platform
import resource
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from synchformer_jax.models import build_model
from synchformer_jax.models.config import ModelConfig


def peak_rss_gib() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def machine_description() -> dict[str, Any]:
  device = jax.devices()[0]
  return {'platform': device.platform, 'device': device.device_kind, 'n_devices': jax.device_count(),
          'cpu': platform.processor() or platform.machine(), 'jax': jax.__version__}


def time_compiled(fn: Callable, *args, repeats: int = 3) -> dict[str, Any]:
  """AOT-compiles `fn(*args)`, then times `repeats` calls after one warm-up call."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))  # warm-up: first-call allocations
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  result = {'compile_s': compile_s, 'steady_s_median': float(np.median(times)), 'steady_s_all': times,
            'xla_flops': float(cost.get('flops', float('nan'))) if cost else float('nan')}
  if memory is not None:
    result.update({'xla_temp_gib': memory.temp_size_in_bytes / 2 ** 30,
                   'xla_argument_gib': memory.argument_size_in_bytes / 2 ** 30,
                   'xla_output_gib': memory.output_size_in_bytes / 2 ** 30})
  return result


def stage2_forward(cfg: ModelConfig, batch: int = 1, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
  """Times a Stage II (or synchronizability) eval forward on random inputs of the config's shapes."""
  model = build_model(cfg, seed)
  model.eval()
  graphdef, state = nnx.split(model)
  s, crop = cfg.transformer.n_segments, cfg.video.crop
  rng = np.random.default_rng(seed)
  video = jnp.asarray(rng.uniform(-1, 1, (batch, s, cfg.video.frames, 3, crop, crop)), jnp.float32)
  audio = jnp.asarray(rng.uniform(-1, 1, (batch, s, 1, cfg.audio.n_mels, cfg.audio.n_frames)), jnp.float32)

  def forward(state, video, audio):
    return nnx.merge(graphdef, state)(video, audio)[0]

  result = time_compiled(forward, state, video, audio, repeats=repeats)
  result['peak_rss_gib'] = peak_rss_gib()
  return result


# Dense bf16 peak FLOP/s per device, for MFU. CPUs have no entry: MFU is not reported there.
PEAK_BF16_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'TPU v4': 275e12, 'TPU v5 lite': 197e12,
                   'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v6 lite': 918e12, 'TPU v6e': 918e12}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  kind = (device or jax.devices()[0]).device_kind
  return next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in kind), None)


def step_flops(jitted: Callable, *args) -> float | None:
  """FLOPs of one call of a jitted function, from XLA's cost analysis of its lowering (no compile)."""
  cost = jitted.lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get('flops')
  return float(flops) if flops else None


def loader_throughput(batches, n_batches: int, batch_size: int) -> dict[str, Any]:
  """Clips/s of an iterator of batches, after its first batch (worker start-up) is taken."""
  iterator = iter(batches)
  start = time.perf_counter()
  next(iterator)
  first_batch_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(n_batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  return {'first_batch_s': first_batch_s, 'clips_per_s': n_batches * batch_size / elapsed,
          'peak_rss_gib': peak_rss_gib()}
