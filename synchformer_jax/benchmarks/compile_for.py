"""The real train and eval steps of a config, compiled ahead of time for a TPU slice that is not here.

`jax.experimental.topologies` gives the devices of a slice (e.g. 'v5p:4x4x4'); the train state is built
abstractly (shapes and shardings only: no parameter memory), the config's mesh is laid over the slice's
devices, and XLA's TPU compiler reports per-chip memory and its cost model. Everything here is a
compile-time estimate, not a measurement: `optimal_seconds` is XLA's lower bound for the step.

XLA's cost analysis sees the body of a loop once, so with remat (blocks run as a `lax.scan`) its FLOPs
undercount; the analytic count (`train.mfu.train_step_flops`) is what the MFU estimate uses.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from synchformer_jax import sharding
from synchformer_jax.benchmarks.harness import batch_shapes
from synchformer_jax.constants import TARGET_KEY
from synchformer_jax.train import input_pipeline, mfu, trainer
from synchformer_jax.train.config import model_config, validate

# High-bandwidth memory per chip, GiB (public specifications), by the topology's chip name.
HBM_GIB = {'v4': 32, 'v5e': 16, 'v5p': 95, 'v6e': 32}
PEAK_BF16_FLOPS = {'v4': 275e12, 'v5e': 197e12, 'v5p': 459e12, 'v6e': 918e12}
_COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')


def chip_of(topology: str) -> str:
  """'v5p:4x4x4' → 'v5p'."""
  chip = topology.split(':')[0]
  if chip not in HBM_GIB:
    raise ValueError(f'topology {topology!r}: expected a chip among {sorted(HBM_GIB)}, e.g. v5p:2x2x1')
  return chip


def topology_devices(topology: str) -> list:
  """The devices of a TPU slice, from libtpu's topology description (no TPU needed)."""
  from jax.experimental import topologies
  chip_of(topology)
  return list(topologies.get_topology_desc(topology_name=topology, platform='tpu').devices)


def abstract_batch(config: ConfigDict, cfg, batch: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The training batch the loader yields for `config` (float16 frames, as every training pipeline makes them),
  as abstract arrays split over the mesh's batch axes."""
  split = sharding.batch_sharding(mesh)
  if input_pipeline.uses_features(config):
    s = cfg.transformer.n_segments
    shapes = {'vfeat': ((batch, s, cfg.video.time_tokens, cfg.video.dim), jnp.float32),
              'afeat': ((batch, s, cfg.audio.time_tokens, cfg.audio.dim), jnp.float32),
              TARGET_KEY[cfg.kind]: ((batch,), jnp.int32)}
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=split) for k, (shape, dtype) in shapes.items()}
  shapes = batch_shapes(cfg, batch)
  dtypes = {'video': jnp.float16}
  return {k: jax.ShapeDtypeStruct(v.shape, dtypes.get(k, v.dtype), sharding=split) for k, v in shapes.items()}


def _bytes_per_device(abstract: Any) -> int:
  """Bytes of one device's shards of every array of an abstract pytree."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract))


def _total_bytes(abstract: Any) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract))


def collectives(hlo_text: str) -> dict[str, int]:
  """How many of each collective op the compiled program has (its async '-start' halves counted once)."""
  counts = {}
  for op in _COLLECTIVES:
    pattern = rf'= [^=]*? {op}(?:-start)?\('
    counts[op] = len(re.findall(pattern, hlo_text))
  return counts


@dataclasses.dataclass
class CompiledStep:
  """What XLA says of one compiled step on one chip."""
  compile_s: float
  memory: dict[str, float]
  flops: float | None
  bytes_accessed: float | None
  optimal_seconds: float | None
  collectives: dict[str, int]


def _compile(jitted, *args) -> CompiledStep:
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  gib = 2 ** 30
  memory = {'argument_gib': analysis.argument_size_in_bytes / gib, 'temp_gib': analysis.temp_size_in_bytes / gib,
            'output_gib': analysis.output_size_in_bytes / gib, 'alias_gib': analysis.alias_size_in_bytes / gib,
            'code_gib': analysis.generated_code_size_in_bytes / gib}
  # Donated outputs reuse their arguments' buffers.
  memory['peak_gib'] = (memory['argument_gib'] + memory['output_gib'] - memory['alias_gib'] + memory['temp_gib']
                        + memory['code_gib'])
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  get = lambda key: float(cost[key]) if key in cost else None
  return CompiledStep(compile_s, memory, get('flops'), get('bytes accessed'), get('optimal_seconds'),
                      collectives(compiled.as_text()))


def compile_steps(config: ConfigDict, topology: str, batch_per_chip: int | None = None) -> dict[str, Any]:
  """Compiles the config's train and eval steps for `topology`; `batch_per_chip` (clips per data shard) sets the
  global batch, else the config's. Raises what XLA raises when the step does not fit."""
  devices = topology_devices(topology)
  chip = chip_of(topology)
  mesh = sharding.make_mesh(dict(config.mesh), devices)
  data_parallel = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
  if batch_per_chip is not None:
    config.batch_size = batch_per_chip * data_parallel
  validate(config, len(devices))
  cfg = model_config(config)
  graphdef, state, shardings = trainer.abstract_state(cfg, config.optim, config.total_steps, mesh, config.seed)
  steps = trainer.make_trainer(cfg, mesh, graphdef, shardings, grad_accum=config.optim.grad_accum)
  batch = abstract_batch(config, cfg, config.batch_size, mesh)
  train = _compile(steps.train_step, state, batch)
  eval_batch = {k: v for k, v in batch.items() if k not in TARGET_KEY.values()}
  evaluation = _compile(steps.eval_step, state, eval_batch)
  params = trainer.model_params(state)
  analytic = mfu.train_step_flops(cfg, config.batch_size)
  hbm = HBM_GIB[chip]
  result = {
      'topology': topology, 'chips': len(devices), 'mesh': dict(mesh.shape), 'stage': config.stage,
      'size': config.model.size, 'dtype': cfg.dtype, 'remat': cfg.remat and cfg.remat_policy,
      'global_batch': config.batch_size, 'batch_per_chip': config.batch_size / data_parallel,
      'hbm_gib_per_chip': hbm, 'fits': train.memory['peak_gib'] <= hbm,
      'param_gib_total': _total_bytes(params) / 2 ** 30, 'param_gib_per_chip': _bytes_per_device(params) / 2 ** 30,
      'state_gib_per_chip': _bytes_per_device(state) / 2 ** 30,
      'train': dataclasses.asdict(train), 'eval': dataclasses.asdict(evaluation),
      'analytic_train_flops': float(analytic),
  }
  if train.optimal_seconds:
    # An estimate from the cost model's lower bound on the step time, not a measurement.
    result['estimated_step_s'] = train.optimal_seconds
    result['estimated_mfu'] = analytic / train.optimal_seconds / (len(devices) * PEAK_BF16_FLOPS[chip])
  return result


def fits(config: ConfigDict, topology: str, batch_per_chip: int) -> tuple[bool, dict[str, Any] | str]:
  """Whether the train step compiles and fits in HBM at `batch_per_chip`: (fits, result or XLA's error)."""
  try:
    result = compile_steps(config.copy_and_resolve_references(), topology, batch_per_chip)
  except (jax.errors.JaxRuntimeError, ValueError) as error:  # XLA refuses programs that exceed HBM
    message = str(error).splitlines()[0]
    if 'RESOURCE_EXHAUSTED' in message or 'memory' in message.lower():
      return False, message
    raise
  return result['fits'], result


def find_max_batch(config: ConfigDict, topology: str, start: int = 1, limit: int = 4096) -> dict[str, Any]:
  """The largest clips per chip whose train step fits: doubling from `start`, then bisecting."""
  low, result = 0, None
  high = start
  while high <= limit:
    ok, outcome = fits(config, topology, high)
    if not ok:
      break
    low, result = high, outcome
    high *= 2
  else:
    return {'max_batch_per_chip': low, 'at_max': result, 'note': f'fits up to the search limit {limit}'}
  while high - low > 1:
    mid = (low + high) // 2
    ok, outcome = fits(config, topology, mid)
    if ok:
      low, result = mid, outcome
    else:
      high = mid
  return {'max_batch_per_chip': low, 'at_max': result}
