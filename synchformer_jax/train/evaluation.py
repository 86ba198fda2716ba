"""Evaluation during training: one pass over the eval split, the stage's metrics, and visualisations."""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from synchformer_jax import sharding
from synchformer_jax.data import loader
from synchformer_jax.models.config import ModelConfig
from synchformer_jax.train import input_pipeline, metrics

# The metric that picks the best checkpoint (maximised), as in the original.
BEST_METRIC = {'avclip': 'precision', 'sync': 'accuracy_1', 'synchability': 'accuracy'}


def collect_outputs(config: ConfigDict, cfg: ModelConfig, steps, state, source, mesh) -> dict[str, np.ndarray]:
  """Model outputs and targets over the eval split, padding removed."""
  collected: dict[str, list[np.ndarray]] = {}
  for batch in input_pipeline.eval_batches(config, cfg, source):
    local = {k: np.asarray(batch.pop(k)) for k in (loader.MASK_KEY, *input_pipeline.TARGET_KEYS[config.stage])}
    outputs = steps.eval_step(state, loader.to_global_batch(batch, mesh, sharding.BATCH_AXES))
    # Outputs cover the global batch (every process's rows, in process order): so must the masks and targets.
    if jax.process_count() > 1:
      local = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in local.items()}
    mask = local.pop(loader.MASK_KEY)
    for name, value in {**jax.device_get(outputs), **local}.items():
      value = np.asarray(value)
      if config.stage == 'avclip':  # (B·S, D) → (B, S, D), so padding clips can be dropped
        value = value.reshape(len(mask), -1, value.shape[-1])
      collected.setdefault(name, []).append(value[mask])
  return {k: np.concatenate(v) for k, v in collected.items()}


def stage_metrics(stage: str, outputs: dict[str, np.ndarray]) -> dict[str, float]:
  if stage == 'avclip':
    return {**metrics.shifted_window_precision(outputs['segment_vfeat'], outputs['segment_afeat']),
            **metrics.segment_retrieval(outputs['segment_vfeat'], outputs['segment_afeat'])}
  if stage == 'sync':
    return metrics.offset_metrics(outputs['logits'], outputs['offset_target'])
  return metrics.synchronizability_metrics(outputs['logits'], outputs['sync_target'])


def evaluate(config: ConfigDict, cfg: ModelConfig, steps, state, source, mesh, workdir: str, step: int) -> dict[str, Any]:
  outputs = collect_outputs(config, cfg, steps, state, source, mesh)
  result = stage_metrics(config.stage, outputs)
  if config.stage == 'avclip' and jax.process_index() == 0:
    write_similarity_images(outputs['segment_vfeat'], outputs['segment_afeat'],
                            os.path.join(workdir, 'viz', f'segment_similarity_{step:07d}.png'))
  return result


def write_similarity_images(vfeat: np.ndarray, afeat: np.ndarray, path: str, max_clips: int = 4) -> None:
  """The v2a and a2v segment similarity matrices of the first clips, row-min-max scaled, as one PNG."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  v = vfeat[:max_clips].reshape(-1, vfeat.shape[-1])
  a = afeat[:max_clips].reshape(-1, afeat.shape[-1])
  fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
  for ax, (title, sim) in zip(axes, (('v2a', v @ a.T), ('a2v', a @ v.T))):
    lo, hi = sim.min(axis=1, keepdims=True), sim.max(axis=1, keepdims=True)
    ax.imshow((sim - lo) / np.maximum(hi - lo, 1e-12), cmap='viridis')
    ax.set_title(f'{title} similarity ({len(v)} segments)')
    ax.set_xlabel('audio segment' if title == 'v2a' else 'video segment')
    ax.set_ylabel('video segment' if title == 'v2a' else 'audio segment')
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
