"""Measuring models: compile time, steady-state time, memory and FLOPs of a jitted step.

Compilation is done ahead of time (`lower().compile()`), so compile time is reported on its own and
XLA's memory and cost analyses come from the same executable that is timed.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import resource
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from flax import nnx

from synchformer_jax import sharding
from synchformer_jax.flops import forward_flops
from synchformer_jax.models import build_model
from synchformer_jax.models.config import ModelConfig, config_for_size
from synchformer_jax.train import head_probe as head_probe_lib
from synchformer_jax.train import input_pipeline, trainer
from synchformer_jax.train.config import base_config
from synchformer_jax.train.trainer import TARGET_KEY


def peak_rss_gib() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def machine_description() -> dict[str, Any]:
  device = jax.devices()[0]
  return {'platform': device.platform, 'device': device.device_kind, 'n_devices': jax.device_count(),
          'cpu': _cpu_model(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'flax': flax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', '')}


def _time_calls(call: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, Any]:
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
  return {'compile_s': compile_s, **_time_calls(lambda: compiled(*args), repeats), **xla_analyses(compiled)}


def batch_shapes(cfg: ModelConfig, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
  """A stage's model inputs (and class targets), in its layouts."""
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


def stage2_forward(cfg: ModelConfig, batch: int = 1, repeats: int = 3, seed: int = 0) -> dict[str, Any]:
  """Times a Stage II (or synchronizability) eval forward on random inputs of the config's shapes.

  At batch 1 this is the inference latency of one window (14 segments: 4.8 s of video).
  """
  model = build_model(cfg, seed)
  model.eval()
  graphdef, state = nnx.split(model)
  inputs = random_batch(cfg, batch, seed)

  def forward(state, video, audio):
    return nnx.merge(graphdef, state)(video, audio)[0]

  result = time_compiled(forward, state, jnp.asarray(inputs['video']), jnp.asarray(inputs['audio']), repeats=repeats)
  return {**result, **_flops_and_mfu(forward_flops(cfg)['total'] * batch, result['steady_s_median']),
          'peak_rss_gib': peak_rss_gib()}


def train_step_flops(cfg: ModelConfig, batch: int) -> int:
  """Model FLOPs of one training step, analytically: 3× the forward of what is trained (forward, and a
  backward of twice its cost), 1× the forward of frozen towers (Stage II / III). Rematerialisation's
  recomputed forward is not model work and is not counted."""
  parts = forward_flops(cfg)
  if cfg.kind == 'avclip':
    return 3 * parts['total'] * batch
  return (parts['video'] + parts['audio'] + 3 * parts['head']) * batch


def train_step(cfg: ModelConfig, batch: int, repeats: int = 3, seed: int = 0, warmup: int = 1) -> dict[str, Any]:
  """Times the real jitted train step (optimiser update, donated state) on one device, random data.

  With `warmup=0` the first step is timed too (it adds first-call allocations): for steps of minutes.
  """
  config = base_config(cfg.kind)
  mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  graphdef, state, state_shardings = trainer.create_state(cfg, config.optim, config.total_steps, mesh, seed)
  steps = trainer.make_trainer(cfg, mesh, graphdef, state_shardings)
  data = jax.device_put(random_batch(cfg, batch, seed), sharding.batch_sharding(mesh))
  start = time.perf_counter()
  compiled = steps.train_step.lower(state, data).compile()
  compile_s = time.perf_counter() - start

  def step():
    nonlocal state
    state, metrics = compiled(state, data)
    return state, metrics

  result = {'compile_s': compile_s, **xla_analyses(compiled)}
  try:
    timing = _time_calls(step, repeats, warmup)
  except jax.errors.JaxRuntimeError as error:  # e.g. out of memory: the analyses above still say why
    return {**result, 'error': str(error).splitlines()[0], 'peak_rss_gib': peak_rss_gib()}
  return {**result, **timing, 'clips_per_s': batch / timing['steady_s_median'],
          **_flops_and_mfu(train_step_flops(cfg, batch), timing['steady_s_median']), 'peak_rss_gib': peak_rss_gib()}


# Dense bf16 peak FLOP/s per device, for MFU. CPUs have no entry: MFU is not reported there.
PEAK_BF16_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'TPU v4': 275e12, 'TPU v5 lite': 197e12,
                   'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v6 lite': 918e12, 'TPU v6e': 918e12}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  kind = (device or jax.devices()[0]).device_kind
  return next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in kind), None)


def _flops_and_mfu(model_flops: float, step_s: float) -> dict[str, Any]:
  """Analytic model FLOPs of a step, the FLOP/s achieved, and MFU where the device's peak is known."""
  peak = peak_flops_per_device()
  achieved = model_flops / step_s
  return {'analytic_flops': float(model_flops), 'achieved_tflops_per_s': achieved / 1e12,
          'mfu': achieved / peak if peak else None}


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
          'load_average_1min': os.getloadavg()[0], 'peak_rss_gib': peak_rss_gib()}


def loader_benchmark(stage: str, size: str, batch: int, workers: int, n_batches: int, data_dir: str) -> dict[str, Any]:
  """`loader_throughput` of a stage's training pipeline on synthetic_sync (built under `data_dir` if absent)."""
  config = base_config(stage)
  config.update(batch_size=batch)
  config.model.size = size
  config.data.update(dir=data_dir, workers=workers)
  sources = input_pipeline.open_sources(config)
  batches = input_pipeline.train_batches(config, config_for_size(stage, size), sources['train'])
  return loader_throughput(batches, n_batches, batch)


def head_probe(cfg: ModelConfig, batch: int, steps: int, learning_rate: float, layers: int | None,
               beacon_period_sec: float = 0.0) -> dict[str, Any]:
  """Trains the Stage II head alone on simulated event features (`train.head_probe`) with Stage II's optimiser."""
  if layers is not None:
    cfg = cfg.replace(transformer=dataclasses.replace(cfg.transformer, layers=layers))
  optim = base_config('sync').optim
  optim.learning_rate = learning_rate
  curve = head_probe_lib.train_head(cfg, optim, steps=steps, batch_size=batch, eval_every=max(1, steps // 12),
                                    beacon_period_sec=beacon_period_sec)
  return {'layers': cfg.transformer.layers, 'learning_rate': learning_rate, 'beacon_period_sec': beacon_period_sec,
          'steps': steps, 'curve': curve,
          'final': curve[-1] if curve else None,
          'cross_correlation_accuracy_1': head_probe_lib.cross_correlation_accuracy(cfg), 'peak_rss_gib': peak_rss_gib()}


# One HLO instruction: `name = type[dims]{layout} op(operands), attributes`.
_HLO_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?([\w.\-]+) = \w+\[([\d,]*)\]\S* (\w+)\((.*?)\)(.*)$')


def matmul_flops(hlo_text: str) -> int:
  """FLOPs of the dots and convolutions of an HLO module (2 per multiply-add): XLA's own program counted
  the way `synchformer_jax.flops` counts, without elementwise work. Needs every computation called at
  most once, as in an unoptimised forward without loops."""
  shapes, total = {}, 0
  for line in hlo_text.splitlines():
    match = _HLO_INSTRUCTION.match(line)
    if not match:
      continue
    name, dims, op, operands, attributes = match.groups()
    shapes[name] = [int(d) for d in dims.split(',') if d]
    if op == 'dot':
      lhs = shapes[operands.split(',')[0].strip()]
      contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', attributes).group(1)
      total += 2 * math.prod(shapes[name]) * math.prod(lhs[int(i)] for i in contracting.split(',') if i)
    elif op == 'convolution':
      kernel = shapes[operands.split(',')[1].strip()]
      kernel_labels = re.search(r'dim_labels=\w+_(\w+)->', attributes).group(1)
      total += 2 * math.prod(shapes[name]) * math.prod(kernel) // kernel[kernel_labels.index('o')]
  return total


def forward_flops_check(cfg: ModelConfig, batch: int = 1) -> dict[str, Any]:
  """The analytic forward FLOPs by part next to XLA's count of the same forward (lowered from abstract
  parameters: nothing is allocated or compiled, so this is cheap at full size)."""
  model = nnx.eval_shape(lambda: build_model(cfg))
  model.eval()
  graphdef, state = nnx.split(model)
  inputs = batch_shapes(cfg, batch)
  lowered = jax.jit(lambda state, video, audio: nnx.merge(graphdef, state)(video, audio)[0]).lower(
      state, inputs['video'], inputs['audio'])
  cost = lowered.cost_analysis()
  xla = float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])
  xla_matmul = matmul_flops(lowered.as_text(dialect='hlo'))
  analytic = {part: flops * batch for part, flops in forward_flops(cfg).items()}
  return {'analytic_flops': analytic, 'xla_flops': xla, 'xla_matmul_flops': xla_matmul,
          'xla_over_analytic': xla / analytic['total'], 'xla_matmul_over_analytic': xla_matmul / analytic['total'],
          'video_share': analytic['video'] / analytic['total']}


def _gib(value) -> str:
  return f'{value:.2f} GiB' if value is not None else '—'


def markdown_row(result: dict[str, Any]) -> str:
  """A BENCHMARKS.md table row: | benchmark | setting | numbers | machine | load | command |."""
  r, m = result, result['machine']
  setting = f"{r.get('stage')} {r.get('size')} B={r.get('batch')} {r.get('dtype')}"
  if r.get('remat'):
    setting += f" remat={r['remat']}"
  numbers = []
  if 'error' in r:
    numbers.append(f"failed: {r['error']}")
  if 'compile_s' in r:
    numbers.append(f"compile {r['compile_s']:.1f} s")
  if 'steady_s_median' in r:
    numbers.append(f"steady {r['steady_s_median']:.2f} s ({', '.join(f'{t:.2f}' for t in r['steady_s_all'])}), "
                   f"CPU {100 * r['cpu_utilisation']:.0f} %")
  if 'clips_per_s' in r:
    numbers.append(f"{r['clips_per_s']:.3g} clips/s")
  if 'xla_flops' in r:
    analytic = r['analytic_flops']['total'] if isinstance(r.get('analytic_flops'), dict) else r.get('analytic_flops')
    numbers.append(f"XLA {r['xla_flops'] / 1e12:.4g} TFLOP, analytic {analytic / 1e12:.4g} TFLOP")
  if r.get('final'):
    f = r['final']
    cue = f", beacon {r['beacon_period_sec']:g} s" if r.get('beacon_period_sec') else ''
    numbers.append(f"{r['layers']} layers, lr {r['learning_rate']:g}{cue}: after {f['step']} steps ({f['seconds']:.0f} s) "
                   f"loss {f['loss']:.3f}, held-out acc@1 {100 * f['accuracy_1']:.1f} %, ±1 {100 * f['accuracy_1_tol1']:.1f} %; "
                   f"cross-correlation acc@1 {100 * r['cross_correlation_accuracy_1']:.1f} %")
  if r.get('mfu') is not None:
    numbers.append(f"MFU {100 * r['mfu']:.1f} %")
  if 'xla_peak_gib' in r:
    numbers.append(f"XLA peak {_gib(r['xla_peak_gib'])} (temp {_gib(r['xla_temp_gib'])})")
  if 'peak_rss_gib' in r:
    numbers.append(f"peak RSS {_gib(r['peak_rss_gib'])}")
  load = r.get('load_average_1min')
  load = '–'.join(f'{x:.1f}' for x in load) if isinstance(load, list) else (f'{load:.1f}' if load else '—')
  machine = f"{m['cpu']} ×{m['cpu_count']} ({m['device']}), jax {m['jax']}"
  if m['xla_flags']:
    machine += f", XLA_FLAGS={m['xla_flags']}"
  return f"| {r['benchmark']} | {setting} | {'; '.join(numbers)} | {machine} | {load} | `{r['command']}` |"
