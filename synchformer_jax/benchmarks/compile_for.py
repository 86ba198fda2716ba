"""The real train and eval steps of a config, compiled ahead of time for a TPU slice that is not here.

`jax.experimental.topologies` gives the devices of a slice (e.g. 'v5p:4x4x4'); the train state is built
abstractly (shapes and shardings only: no parameter memory), the config's mesh is laid over the slice's
devices, and XLA's TPU compiler reports per-chip memory and its cost model. Everything here is a
compile-time estimate, not a measurement: `optimal_seconds` is XLA's lower bound for the step.

XLA's cost analysis sees the body of a loop once, so with remat (blocks run as a `lax.scan`) its FLOPs and
`optimal_seconds` undercount the step. The step-time estimate therefore scales `optimal_seconds` by the FLOPs the
step executes (the analytic count, plus the recomputed forward of rematerialised towers) over XLA's count, and
the MFU estimate divides the analytic model FLOPs (`train.mfu.train_step_flops`) by it.

libtpu reads its environment when JAX first asks for a TPU: `topology_devices` sets what a host without TPUs
needs before that (several processes may then load libtpu, and it does not look for TPU hardware).
"""
from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from synchformer_jax import sharding
from synchformer_jax.benchmarks.harness import batch_shapes
from synchformer_jax.constants import TARGET_KEY
from synchformer_jax.models.flops import forward_flops
from synchformer_jax.train import input_pipeline, mfu, trainer
from synchformer_jax.train.config import model_config, validate

# High-bandwidth memory per chip, GiB (public specifications), by the topology's chip name.
HBM_GIB = {'v4': 32, 'v5e': 16, 'v5p': 95, 'v6e': 32}
_COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')


def chip_of(topology: str) -> str:
  """'v5p:4x4x4' → 'v5p'."""
  chip = topology.split(':')[0]
  if chip not in HBM_GIB:
    raise ValueError(f'topology {topology!r}: expected a chip among {sorted(HBM_GIB)}, e.g. v5p:2x2x1')
  return chip


def _simulating_environment() -> None:
  """On a host without TPUs: lets every process load libtpu (pytest workers) and quiets its hardware probes."""
  if glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'):
    return  # a TPU VM: libtpu's own settings are right
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5p-8')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')


def topology_devices(topology: str) -> list:
  """The devices of a TPU slice, from libtpu's topology description (no TPU needed)."""
  from jax.experimental import topologies
  chip_of(topology)
  _simulating_environment()
  try:
    return list(topologies.get_topology_desc(topology_name=topology, platform='tpu').devices)
  except (RuntimeError, jax.errors.JaxRuntimeError) as error:
    raise ValueError(f'topology {topology!r}: libtpu cannot describe it ({str(error).splitlines()[0]}); '
                     "is libtpu installed (pip install -e '.[test]')?") from None


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


def _arrays(abstract: Any) -> list:
  """The numeric arrays of a pytree (random keys, a few bytes each, left out)."""
  return [x for x in jax.tree.leaves(abstract) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.extended)]


def _bytes_per_device(abstract: Any) -> int:
  """Bytes of one device's shards of every array of an abstract pytree."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in _arrays(abstract))


def _total_bytes(abstract: Any) -> int:
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in _arrays(abstract))


def collectives(hlo_text: str) -> dict[str, int]:
  """How many of each collective op the compiled program has (its async '-start' halves counted once)."""
  counts = {}
  for op in _COLLECTIVES:
    pattern = rf'= [^=]*? {op}(?:-start)?\('
    counts[op] = len(re.findall(pattern, hlo_text))
  return counts


_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4, 's32': 4, 'u32': 4,
                'f64': 8, 's64': 8, 'u64': 8}


def all_gather_bytes(hlo_text: str) -> list[int]:
  """The result size of every all-gather of a compiled program (what one device holds after it)."""
  sizes = []
  for dtype, dims in re.findall(r'= (\w+)\[([\d,]*)\][^=]*? all-gather(?:-start)?\(', hlo_text):
    sizes.append(math.prod(int(d) for d in dims.split(',') if d) * _DTYPE_BYTES.get(dtype, 4))
  return sizes


@dataclasses.dataclass
class CompiledStep:
  """What XLA says of one compiled step on one chip."""
  compile_s: float
  memory: dict[str, float]
  flops: float | None
  bytes_accessed: float | None
  optimal_seconds: float | None
  collectives: dict[str, int]
  largest_all_gather_mib: float  # gathered parameters, unless the step gathers activations


def executed_train_flops(cfg, batch: int, frozen_towers_run: bool = True) -> int:
  """The FLOPs a train step executes: the model FLOPs, plus one more forward of every rematerialised block that
  is trained (frozen towers keep no activations for a backward, and recompute nothing)."""
  flops = mfu.train_step_flops(cfg, batch, frozen_towers_run=frozen_towers_run)
  if cfg.remat:
    parts = forward_flops(cfg)
    flops += (parts['total'] if cfg.kind == 'avclip' else parts['head']) * batch
  return flops


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
  get = lambda key: float(cost[key]) if cost.get(key, -1) > 0 else None  # -1: not estimated
  hlo = compiled.as_text()
  return CompiledStep(compile_s, memory, get('flops'), get('bytes accessed'), get('optimal_seconds'),
                      collectives(hlo), max(all_gather_bytes(hlo), default=0) / 2 ** 20)


def compile_steps(config: ConfigDict, topology: str, batch_per_chip: int | None = None,
                  with_eval: bool = True) -> dict[str, Any]:
  """Compiles the config's train (and eval) step for `topology`; `batch_per_chip` (clips per data shard) sets the
  global batch, else the config's. Raises what XLA raises when the step does not fit."""
  devices = topology_devices(topology)
  chip = chip_of(topology)
  mesh = sharding.make_mesh(dict(config.mesh), devices)
  data_parallel = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
  if batch_per_chip is not None:
    config.batch_size = batch_per_chip * data_parallel
  validate(config, len(devices))
  cfg = model_config(config)
  graphdef, state = trainer.abstract_state(cfg, config.optim, config.total_steps, mesh, config.seed)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  steps = trainer.make_trainer(cfg, mesh, graphdef, shardings, grad_accum=config.optim.grad_accum)
  batch = abstract_batch(config, cfg, config.batch_size, mesh)
  train = _compile(steps.train_step, state, batch)
  eval_batch = {k: v for k, v in batch.items() if k not in TARGET_KEY.values()}
  evaluation = _compile(steps.eval_step, state, eval_batch) if with_eval else None
  params = trainer.model_variables(state)
  towers_run = not input_pipeline.uses_features(config)
  analytic = mfu.train_step_flops(cfg, config.batch_size, frozen_towers_run=towers_run)
  executed = executed_train_flops(cfg, config.batch_size, towers_run)
  hbm = HBM_GIB[chip]
  result = {
      'topology': topology, 'chips': len(devices), 'mesh': dict(mesh.shape), 'stage': config.stage,
      'size': config.model.size, 'dtype': cfg.dtype, 'remat': cfg.remat and cfg.remat_policy,
      'global_batch': config.batch_size, 'batch_per_chip': config.batch_size / data_parallel,
      'hbm_gib_per_chip': hbm, 'fits': train.memory['peak_gib'] <= hbm,
      'largest_param_mib': max(math.prod(x.shape) * x.dtype.itemsize for x in _arrays(params)) / 2 ** 20,
      'param_gib_total': _total_bytes(params) / 2 ** 30, 'param_gib_per_chip': _bytes_per_device(params) / 2 ** 30,
      'state_gib_per_chip': _bytes_per_device(state) / 2 ** 30,
      'train': dataclasses.asdict(train), 'eval': evaluation and dataclasses.asdict(evaluation),
      'analytic_train_flops': float(analytic), 'executed_train_flops': float(executed),
      'xla_flops_all_chips': train.flops * len(devices) if train.flops else None,
  }
  if train.optimal_seconds and train.flops:
    # Compile-time estimates, not measurements: the cost model's bound, scaled to the FLOPs a scanned loop hides.
    scale = max(1.0, executed / (train.flops * len(devices)))
    result['estimated_step_s'] = train.optimal_seconds * scale
    peak = mfu.peak_flops_per_device(devices[0])
    result['estimated_mfu'] = analytic / result['estimated_step_s'] / (len(devices) * peak)
  return result


def fits(config: ConfigDict, topology: str, batch_per_chip: int) -> tuple[bool, dict[str, Any] | str]:
  """Whether the train step compiles and fits in HBM at `batch_per_chip`: (fits, result or XLA's error)."""
  try:
    result = compile_steps(config.copy_and_resolve_references(), topology, batch_per_chip, with_eval=False)
  except (jax.errors.JaxRuntimeError, ValueError) as error:  # XLA refuses programs that exceed HBM
    message = str(error).splitlines()[0]
    if 'RESOURCE_EXHAUSTED' in message or 'memory' in message.lower():
      return False, message
    raise
  return result['fits'], result


def _peak(outcome: dict[str, Any] | str) -> float | None:
  return outcome['train']['memory']['peak_gib'] if isinstance(outcome, dict) else None


def find_max_batch(config: ConfigDict, topology: str, limit: int = 4096, start: int = 1) -> dict[str, Any]:
  """The largest clips per chip whose train step fits in HBM, in few compiles (minutes each at full size).

  A step's memory grows linearly with its batch: compiles at `start` (1) and twice it fix a line, and each next
  probe is the largest batch that the line through the two largest fitting batches puts under HBM, kept below
  the smallest batch known not to fit; once the line has overshot, a prediction at or past that bound bisects.
  A larger `start` (a batch an earlier search found to fit) saves the compiles below it; it is compiled again, and
  if it does not fit the search runs below it.
  """
  hbm = HBM_GIB[chip_of(topology)]
  probes = []

  def probe(batch: int) -> tuple[bool, dict[str, Any] | str]:
    ok, outcome = fits(config, topology, batch)
    probes.append({'batch_per_chip': batch, 'fits': ok, 'peak_gib': _peak(outcome)})
    return ok, outcome

  start = min(start, limit)
  ok, first = probe(start)
  if not ok and start > 1:
    below = find_max_batch(config, topology, limit=start - 1)
    return {**below, 'probes': probes + below['probes']}
  if not ok:
    return {'max_batch_per_chip': 0, 'at_max': None, 'probes': probes, 'refused': first}
  fitting = [(start, first)]  # (batch, result), ascending
  high, guess, overshot = limit + 1, 2 * start, False  # `high` does not fit (or is past the limit)
  while high - fitting[-1][0] > 1:
    low = fitting[-1][0]
    batch = guess if guess < high else ((low + high) // 2 if overshot else high - 1)
    ok, outcome = probe(batch)
    if ok:
      fitting.append((batch, outcome))
    else:
      high, overshot = batch, True
    (b0, r0), (b1, r1) = fitting[-2:] if len(fitting) > 1 else (fitting[0], fitting[0])
    slope = (_peak(r1) - _peak(r0)) / (b1 - b0) if b1 > b0 else 0.0
    guess = b1 + max(1, int((hbm - _peak(r1)) // slope)) if slope > 0 else 2 * b1
  low, at_low = fitting[-1]
  return {'max_batch_per_chip': low, 'at_max': at_low, 'probes': probes,
          **({'note': f'fits up to the search limit {limit}'} if low == limit else {})}


def summary(result: dict[str, Any]) -> str:
  """A few lines for the terminal: memory per chip against HBM, FLOPs, the labelled estimates, compile time."""
  train, gib = result['train'], lambda x: f'{x:.3g} GiB'
  memory = train['memory']
  lines = [
      f"{result['stage']} {result['size']} {result['dtype']} remat={result['remat']} on {result['topology']} "
      f"({result['chips']} chips, mesh {result['mesh']}): global batch {result['global_batch']}, "
      f"{result['batch_per_chip']:g} clips per chip",
      f"  memory per chip: peak {gib(memory['peak_gib'])} of {result['hbm_gib_per_chip']} GiB HBM "
      f"({'fits' if result['fits'] else 'does NOT fit'}); arguments {gib(memory['argument_gib'])}, temporaries "
      f"{gib(memory['temp_gib'])}, outputs {gib(memory['output_gib'])} (aliased {gib(memory['alias_gib'])}), "
      f"code {gib(memory['code_gib'])}; parameters {gib(result['param_gib_per_chip'])} of "
      f"{gib(result['param_gib_total'])}",
      f"  FLOPs per step: XLA {result['xla_flops_all_chips'] or float('nan'):.4g} (a scanned block counted once), "
      f"analytic model {result['analytic_train_flops']:.4g}, executed with recomputation "
      f"{result['executed_train_flops']:.4g}",
      f"  collectives per train step: {train['collectives']}; largest all-gather "
      f"{train['largest_all_gather_mib']:.3g} MiB (largest parameter {result['largest_param_mib']:.3g} MiB)",
  ]
  if 'estimated_step_s' in result:
    lines.append(f"  compile-time ESTIMATE (not a measurement): step {result['estimated_step_s']:.3g} s, "
                 f"MFU {result['estimated_mfu']:.1%}")
  eval_s = f", eval step {result['eval']['compile_s']:.1f} s" if result['eval'] else ''
  lines.append(f"  compile time: train step {train['compile_s']:.1f} s{eval_s}")
  return '\n'.join(lines)
