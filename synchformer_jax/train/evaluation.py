"""Evaluation during training: one pass over the eval split, the stage's metrics, and visualisations."""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from synchformer_jax import metrics, plots, sharding
from synchformer_jax.constants import TARGET_KEY, TARGET_KEYS
from synchformer_jax.data import loader
from synchformer_jax.models.config import ModelConfig
from synchformer_jax.train import input_pipeline

# The metric that picks the best checkpoint (maximised), as in the original.
BEST_METRIC = {'avclip': 'precision', 'sync': 'accuracy_1', 'synchability': 'accuracy', 'sparsesync': 'accuracy_1'}


def collect_outputs(config: ConfigDict, cfg: ModelConfig, steps, state, source, mesh) -> dict[str, np.ndarray]:
  """Model outputs and targets over the eval split, padding removed."""
  collected: dict[str, list[np.ndarray]] = {}
  for batch in input_pipeline.eval_batches(config, cfg, source):
    local = {k: np.asarray(batch.pop(k)) for k in (loader.MASK_KEY, *TARGET_KEYS[config.stage])}
    outputs = steps.eval_step(state, sharding.to_global_batch(batch, mesh))
    # Outputs cover the global batch (every process's rows, in process order): so must the masks and targets.
    if jax.process_count() > 1:
      local = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in local.items()}
    mask = local.pop(loader.MASK_KEY)
    for name, value in {**jax.device_get(outputs), **local}.items():
      value = np.asarray(value)
      if config.stage == 'avclip':  # (B·S, ...) → (B, S, ...), so padding clips can be dropped
        value = value.reshape(len(mask), -1, *value.shape[1:])
      collected.setdefault(name, []).append(value[mask])
  return {k: np.concatenate(v) for k, v in collected.items()}


def stage_metrics(stage: str, outputs: dict[str, np.ndarray]) -> dict[str, float]:
  if stage == 'avclip':
    vfeat, afeat = outputs['segment_vfeat'], outputs['segment_afeat']
    return {**metrics.shifted_window_precision(vfeat, afeat), **metrics.segment_retrieval(vfeat, afeat),
            **metrics.segment_contrastive_loss(vfeat, afeat, float(outputs['temperature'].flat[0]))}
  logits, targets = outputs['logits'], outputs[TARGET_KEY[stage]]
  per_stage = metrics.synchronizability_metrics if stage == 'synchability' else metrics.offset_metrics
  return {**per_stage(logits, targets), 'loss': metrics.cross_entropy(logits, targets)}


def evaluate(config: ConfigDict, cfg: ModelConfig, steps, state, source, mesh, workdir: str, step: int) -> dict[str, Any]:
  outputs = collect_outputs(config, cfg, steps, state, source, mesh)
  result = stage_metrics(config.stage, outputs)
  if config.stage == 'avclip' and jax.process_index() == 0:
    plots.plot_segment_similarity(outputs['segment_vfeat'], outputs['segment_afeat'],
                                  os.path.join(workdir, 'viz', f'segment_similarity_{step:07d}.png'))
  return result

