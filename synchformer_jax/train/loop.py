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
from ml_collections import ConfigDict

from synchformer_jax import checkpointing, pretrained, sharding
from synchformer_jax.models import SPARSESYNC_TOWERS, Buffer, target_of
from synchformer_jax.models.config import ModelConfig
from synchformer_jax.train import evaluation, features, input_pipeline, mfu, trainer
from synchformer_jax.train.config import model_config, validate
from synchformer_jax.train.metric_log import MetricWriter

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite."""


class _Preemption:
  """Whether to save and stop after a step: SIGTERM was received, by any process of the run.

  One process: a SIGTERM handler sets a flag. Several: JAX's preemption sync point (the coordination service
  catches SIGTERM on whichever host gets it), so that every process saves at one and the same step.
  """

  def __init__(self):
    self._requested = False
    self._across_hosts = jax.process_count() > 1
    self._previous = None if self._across_hosts else signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    log.warning('SIGTERM received: saving a checkpoint and exiting after this step')
    self._requested = True

  @property
  def received(self) -> bool:
    """A SIGTERM reached this process (also one after the last step, during the final evaluation or export)."""
    return self._requested

  def reached(self, step: int) -> bool:
    """Called by every process after every step."""
    if self._across_hosts:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _MetricsWindow:
  """The metrics of the steps since the last read, kept on device: reading them is the loop's only host sync.

  `read` returns each step's metrics as floats, with the mean step time over the window.
  """

  def __init__(self):
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []
    self._start = time.perf_counter()

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self._pending.append((step, metrics))

  def read(self) -> tuple[list[tuple[int, dict[str, float]]], float]:
    values = jax.device_get([m for _, m in self._pending])
    now = time.perf_counter()
    step_s = (now - self._start) / max(len(values), 1)
    rows = [(step, {k: float(np.mean(v)) for k, v in m.items()}) for (step, _), m in zip(self._pending, values)]
    self._pending, self._start = [], now
    return rows, step_s


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


def _init_sources(config: ConfigDict) -> list[tuple[str, str, str | None]]:
  """(config field, model directory, the prefix its variables take in the new model) of each initialisation."""
  sources = [('model.init', config.model.init, None)]
  if config.stage == 'sparsesync':  # the trunks' converted checkpoints, each a tower alone
    sources += [('model.init_s3d', config.model.init_s3d, 'vfeat_extractor'),
                ('model.init_resnet', config.model.init_resnet, 'afeat_extractor')]
  return [source for source in sources if source[1]]


def _initialiser(config: ConfigDict, cfg: ModelConfig):
  """Copies the variables of the initialisation directories that the new model shares (the towers, or all of
  Stage II; SparseSync's trunks with their BatchNorm statistics)."""
  sources = _init_sources(config)
  if not sources:
    return None
  renames = {('avclip', 'sync'): {'v_encoder': 'vfeat_extractor', 'a_encoder': 'afeat_extractor'},
             ('avclip', 'synchability'): {'v_encoder': 'vfeat_extractor', 'a_encoder': 'afeat_extractor'}}
  source_values = {}
  for field, directory, prefix in sources:
    source = pretrained.load(directory)
    if prefix is not None and target_of(source) not in SPARSESYNC_TOWERS:
      raise ValueError(f'config.{field}: {directory} holds a {target_of(source)!r} model, expected a converted '
                       f'SparseSync trunk ({" or ".join(SPARSESYNC_TOWERS)})')
    rename = renames.get((getattr(getattr(source, 'cfg', None), 'kind', None), cfg.kind), {})
    for path, var in nnx.to_flat_state(nnx.state(source, (nnx.Param, Buffer))):
      path = (prefix, *path) if prefix else (rename.get(path[0], path[0]),) + tuple(path[1:])
      source_values[path] = (field, directory, var.get_value())

  def init_params(model):
    copied = 0
    for path, var in nnx.to_flat_state(nnx.state(model, (nnx.Param, Buffer))):
      field, directory, value = source_values.get(tuple(path), (None, None, None))
      if value is None:
        continue
      if path[-1] == 'pos_emb' and value.shape[1] > var.shape[1]:
        value = value[:, :var.shape[1]]  # Stage II → synchronizability: keep the leading rows, as the original
      if value.shape != var.shape:
        raise ValueError(f'config.{field}: {".".join(map(str, path))} has shape {value.shape} in {directory}, '
                         f'the model needs {var.shape}')
      var.set_value(value)
      copied += 1
    if copied == 0:
      fields = ', '.join(f'{f} ({d})' for f, d, _ in sources)
      raise ValueError(f'{fields}: shares no parameter with a {cfg.kind} model')
  return init_params


def fingerprint(config: ConfigDict, cfg: ModelConfig) -> dict[str, Any]:
  """What a checkpoint must agree with to be resumed: the model and the optimiser (as JSON would store them)."""
  return json.loads(json.dumps({'model': cfg.to_dict(), 'optim': config.optim.to_dict()}))


def _peak_flops(config: ConfigDict) -> float | None:
  return config.peak_flops_per_device or mfu.peak_flops_per_device()


def train(config: ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the final metrics."""
  validate(config, jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  cfg = model_config(config)
  mesh = sharding.make_mesh(dict(config.mesh))
  graphdef, state, state_shardings = trainer.create_state(cfg, config.optim, config.total_steps, mesh, config.seed,
                                                          _initialiser(config, cfg))
  steps = trainer.make_trainer(cfg, mesh, graphdef, state_shardings, grad_accum=config.optim.grad_accum)
  run_fingerprint = fingerprint(config, cfg)
  checkpointer = checkpointing.TrainCheckpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints)
  # Before anything in the workdir is written: a checkpoint of another model or optimiser stops the run here.
  restored = checkpointer.restore_latest(
      jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings),
      run_fingerprint, accept_changes=config.accept_config_change)

  sources = input_pipeline.open_sources(config)
  if input_pipeline.uses_features(config):
    sources = features.prepare(config, cfg, steps, state, sources, mesh, workdir)
  train_iter = input_pipeline.train_batches(config, cfg, sources['train'])
  writer = MetricWriter(workdir, enabled=_is_lead_process())
  if _is_lead_process():
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=1))

  step = 0
  best = {'value': -np.inf, 'step': None}
  if restored is not None:
    step, state, data_state, meta = restored
    # Every process's iterator is at the same position of its shard; the stored state is process 0's.
    train_iter.set_state(data_state)
    best = meta.get('best', best)
    log.info('resumed from step %d', step)
  writer.truncate_after(step)

  peak_flops = _peak_flops(config)
  flops_per_step = (mfu.train_step_flops(cfg, config.batch_size,
                                         frozen_towers_run=not input_pipeline.uses_features(config))
                    if peak_flops else None)
  preemption = _Preemption()
  progress = _ProgressBar(step, config.total_steps, enabled=_is_lead_process())
  window = _MetricsWindow()
  metrics = {}
  preempted = False

  def read_metrics() -> dict[str, float]:
    """Fetches the window's metrics and logs its `log_every` steps; a non-finite loss raises, naming its step,
    after the rows of the steps before it are written."""
    rows, step_s = window.read()
    for row_step, row in rows:
      if not np.isfinite(row['loss']):
        last = checkpointer.steps()[-1] if checkpointer.steps() else 'none'
        raise NonFiniteLossError(f'loss is {row["loss"]} at step {row_step}; nothing of it is saved, the last '
                                 f'good checkpoint (step {last}) is kept')
      row.update(step_time_s=step_s, clips_per_s=config.batch_size / step_s)
      if flops_per_step:
        row['mfu'] = flops_per_step / step_s / (peak_flops * jax.device_count())
      if row_step % config.log_every == 0 or row_step == config.total_steps:
        writer.write(row_step, row)
    if rows:
      progress.update(rows[-1][0], rows[-1][1])
    return rows[-1][1] if rows else metrics

  try:
    while step < config.total_steps:
      state, step_metrics = steps.train_step(state, sharding.to_global_batch(next(train_iter), mesh))
      step += 1
      window.add(step, step_metrics)
      is_last = step == config.total_steps
      is_eval = step % config.eval_every == 0 or is_last
      preempted = preemption.reached(step)
      is_checkpoint = step % config.checkpoint_every == 0 or is_last or preempted
      if step % config.log_every == 0 or is_eval or is_checkpoint:
        metrics = read_metrics()
      if is_eval:
        eval_metrics = evaluation.evaluate(config, cfg, steps, state, sources['eval'], mesh, workdir, step)
        writer.write(step, eval_metrics, prefix='eval/')
        value = eval_metrics[evaluation.BEST_METRIC[config.stage]]
        if value > best['value']:
          best = {'value': float(value), 'step': step}
          _export(steps, state, cfg, os.path.join(workdir, 'best'), config, step)
      if is_checkpoint:
        checkpointer.save(step, state, train_iter.get_state(), {'best': best, 'fingerprint': run_fingerprint})
      if preempted:
        log.warning('preempted: saved step %d, exiting', step)
        break
  finally:
    preemption.restore()
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    progress.close()
  if step == config.total_steps:
    _export(steps, state, cfg, os.path.join(workdir, 'model'), config, step)
  return {'step': step, **metrics, 'best': best, 'preempted': preempted or preemption.received}


def _host_copy(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host) array on this host, gathered one array at a time."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _export(steps: trainer.Trainer, state, cfg: ModelConfig, directory: str, config: ConfigDict, step: int) -> None:
  """Writes the model as a model directory (what the next stage and predict.py load).

  Only the model's variables are gathered, one array at a time, to the host (not the optimiser state, and not
  onto every device); every process takes part, as they may be split over hosts; process 0 writes.
  """
  variables = {'.'.join(map(str, path)): _host_copy(v.get_value())
               for path, v in nnx.to_flat_state(trainer.model_variables(state))}
  if _is_lead_process():
    pretrained.save_variables(variables, directory, cfg.kind, cfg,
                              provenance={'step': step, 'config': json.loads(config.to_json_best_effort())},
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
