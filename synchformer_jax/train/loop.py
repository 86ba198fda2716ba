"""The training loop: resumable, sharded, checkpointed, evaluated.

Re-running the same command on the same workdir resumes from the newest readable checkpoint (train
state, RNG state, data-iterator position), so a run killed at any point and resumed logs the same
per-step losses as one that was never interrupted. SIGTERM (preemption) saves and exits cleanly. A
non-finite loss stops the run naming the step, before anything of that step is saved.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from synchformer_jax import checkpointing, pretrained, sharding
from synchformer_jax.models.config import ModelConfig
from synchformer_jax.train import evaluation, features, input_pipeline, mfu, trainer
from synchformer_jax.train.config import model_config, validate
from synchformer_jax.train.metric_log import MetricWriter

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite."""


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    log.warning('SIGTERM received: saving a checkpoint and exiting after this step')
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def initialize_multihost(coordinator_address: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> None:
  """Joins the processes of a multi-host run (`jax.distributed`); call before any other JAX work.

  With no arguments the cluster is detected (TPU slices, SLURM, ...). On CPU the processes exchange
  collectives through gloo, which lets a multi-host run be tested on one machine.
  """
  if jax.config.jax_platforms in (None, '', 'cpu') and coordinator_address:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def _is_lead_process() -> bool:
  """Whether this process writes the run's shared files (metrics, config, exported models, figures)."""
  return jax.process_index() == 0


def _initialiser(config: ConfigDict, cfg: ModelConfig):
  """Copies the parameters of `config.model.init` that the new model shares (the towers, or all of Stage II)."""
  if not config.model.init:
    return None
  source = pretrained.load(config.model.init)
  source_kind = getattr(getattr(source, 'cfg', None), 'kind', None)
  renames = {('avclip', 'sync'): {'v_encoder': 'vfeat_extractor', 'a_encoder': 'afeat_extractor'},
             ('avclip', 'synchability'): {'v_encoder': 'vfeat_extractor', 'a_encoder': 'afeat_extractor'}}
  rename = renames.get((source_kind, cfg.kind), {})
  source_params = {}
  for path, var in nnx.to_flat_state(nnx.state(source, nnx.Param)):
    path = (rename.get(path[0], path[0]),) + tuple(path[1:])
    source_params[path] = var.get_value()

  def init_params(model):
    copied = 0
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
      value = source_params.get(tuple(path))
      if value is None:
        continue
      if path[-1] == 'pos_emb' and value.shape[1] > var.shape[1]:
        value = value[:, :var.shape[1]]  # Stage II → synchronizability: keep the leading rows, as the original
      if value.shape != var.shape:
        raise ValueError(f'model.init: {".".join(map(str, path))} has shape {value.shape} in {config.model.init}, '
                         f'the model needs {var.shape}')
      var.set_value(value)
      copied += 1
    if copied == 0:
      raise ValueError(f'model.init: {config.model.init} shares no parameter with a {cfg.kind} model')
  return init_params


def train(config: ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the final metrics."""
  validate(config, jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  cfg = model_config(config)
  mesh = sharding.make_mesh(dict(config.mesh))
  sources = input_pipeline.open_sources(config)
  graphdef, state, state_shardings = trainer.create_state(cfg, config.optim, config.total_steps, mesh, config.seed,
                                                          _initialiser(config, cfg))
  steps = trainer.make_trainer(cfg, mesh, graphdef, state_shardings)
  if input_pipeline.uses_features(config):
    sources = features.prepare(config, cfg, steps, state, sources, mesh, workdir)
  train_iter = input_pipeline.train_batches(config, cfg, sources['train'])
  checkpointer = checkpointing.TrainCheckpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints)
  writer = MetricWriter(workdir, enabled=_is_lead_process())
  if _is_lead_process():
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=1))

  step = 0
  best = {'value': -np.inf, 'step': None}
  restored = checkpointer.restore_latest(jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings))
  if restored is not None:
    step, state, data_state, meta = restored
    # Every process's iterator is at the same position of its shard; the stored state is process 0's.
    train_iter.set_state(data_state)
    best = meta.get('best', best)
    log.info('resumed from step %d', step)
  writer.truncate_after(step)

  accum = config.optim.grad_accum
  clips_per_step = config.batch_size
  peak_flops = mfu.peak_flops_per_device()
  flops_per_step = None
  preemption = _Preemption()
  progress = _ProgressBar(step, config.total_steps, enabled=_is_lead_process())
  metrics = {}
  try:
    while step < config.total_steps:
      start = time.perf_counter()
      step_metrics = []
      for _ in range(accum):
        batch = sharding.to_global_batch(next(train_iter), mesh)
        if peak_flops and flops_per_step is None:
          flops_per_step = accum * mfu.step_flops(steps.train_step, state, batch)
        state, m = steps.train_step(state, batch)
        step_metrics.append(m)
      metrics = {k: float(np.mean([jax.device_get(m[k]) for m in step_metrics])) for k in step_metrics[0]}
      if not np.isfinite(metrics['loss']):
        raise NonFiniteLossError(f'loss is {metrics["loss"]} at step {step + 1}; the last good checkpoint '
                                 f'(step {checkpointer.steps()[-1] if checkpointer.steps() else "none"}) is kept')
      step += 1
      elapsed = time.perf_counter() - start
      metrics.update(step_time_s=elapsed, clips_per_s=clips_per_step / elapsed)
      if flops_per_step:
        metrics['mfu'] = flops_per_step / elapsed / (peak_flops * jax.device_count())
      if step % config.log_every == 0 or step == config.total_steps:
        writer.write(step, metrics)
      progress.update(step, metrics)
      is_last = step == config.total_steps
      if step % config.eval_every == 0 or is_last:
        eval_metrics = evaluation.evaluate(config, cfg, steps, state, sources['eval'], mesh, workdir, step)
        writer.write(step, eval_metrics, prefix='eval/')
        value = eval_metrics[evaluation.BEST_METRIC[config.stage]]
        if value > best['value']:
          best = {'value': float(value), 'step': step}
          _export(steps, state, cfg, os.path.join(workdir, 'best'), config, step)
      if step % config.checkpoint_every == 0 or is_last or preemption.requested:
        checkpointer.save(step, state, train_iter.get_state(), {'best': best})
      if preemption.requested:
        break
  finally:
    preemption.restore()
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    progress.close()
  if step == config.total_steps:
    _export(steps, state, cfg, os.path.join(workdir, 'model'), config, step)
  return {'step': step, **metrics, 'best': best}


def _export(steps: trainer.Trainer, state, cfg: ModelConfig, directory: str, config: ConfigDict, step: int) -> None:
  """Writes the model as a model directory (what the next stage and predict.py load).

  Every process takes part in gathering the parameters (they may be split over hosts); process 0 writes.
  """
  gathered = jax.jit(lambda x: x, out_shardings=NamedSharding(steps.mesh, PartitionSpec()))(state)
  if _is_lead_process():
    model, _ = steps.merge(gathered)
    pretrained.save(model, directory, cfg, provenance={'step': step, 'config': json.loads(config.to_json_best_effort())},
                    overwrite=True)
  multihost_utils.sync_global_devices(f'exported {directory} at step {step}')


class _ProgressBar:
  """A tqdm bar showing step time and clips/s (and MFU where the FLOPs of a step are known)."""

  def __init__(self, start: int, total: int, enabled: bool = True):
    from tqdm import tqdm
    self._bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True, disable=not enabled)

  def update(self, step: int, metrics: dict[str, float]) -> None:
    self._bar.n = step
    shown = {'loss': f'{metrics["loss"]:.4f}', 'step_s': f'{metrics["step_time_s"]:.2f}',
             'clips_s': f'{metrics["clips_per_s"]:.1f}'}
    if 'mfu' in metrics:
      shown['mfu'] = f'{metrics["mfu"]:.1%}'
    self._bar.set_postfix(shown, refresh=False)
    self._bar.refresh()

  def close(self) -> None:
    self._bar.close()
