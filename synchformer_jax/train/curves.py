"""Training curves from a run's `metrics.jsonl`: the loss per step and the evaluations, as one PNG."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from synchformer_jax.inference.plots import plt, save_figure
from synchformer_jax.train.metrics import METRICS_FILE


def read_metrics(workdir: str) -> tuple[list[dict], list[dict]]:
  """(training records, evaluation records) of a run; evaluation keys start with 'eval/'."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no {METRICS_FILE} (is {workdir} a training workdir?)')
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  train = [r for r in records if 'loss' in r]
  evals = [r for r in records if any(k.startswith('eval/') for k in r)]
  return train, evals


def smooth(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing mean over up to `window` values (shorter at the start)."""
  sums = np.cumsum(np.concatenate([[0.0], values]))
  ends = np.arange(1, len(values) + 1)
  starts = np.maximum(ends - window, 0)
  return (sums[ends] - sums[starts]) / (ends - starts)


def plot_training_curves(runs: Mapping[str, str], path: str, *, chance_loss: Mapping[str, float] | None = None) -> None:
  """One row per run (label → workdir): training loss (raw and smoothed) and the evaluation metrics."""
  fig, axes = plt.subplots(len(runs), 2, figsize=(12, 3.6 * len(runs)), squeeze=False)
  for (label, workdir), (loss_ax, eval_ax) in zip(runs.items(), axes):
    train, evals = read_metrics(workdir)
    steps = np.array([r['step'] for r in train])
    loss = np.array([r['loss'] for r in train])
    loss_ax.plot(steps, loss, color='0.8', lw=0.6, label='loss')
    loss_ax.plot(steps, smooth(loss, max(len(loss) // 30, 1)), color='tab:blue', label='smoothed')
    if chance_loss and label in chance_loss:
      loss_ax.axhline(chance_loss[label], color='tab:red', ls=':', label=f'chance {chance_loss[label]:.3f}')
    loss_ax.set(title=f'{label}: training loss', xlabel='step')
    loss_ax.legend(fontsize=8)
    for key in sorted({k for r in evals for k in r if k.startswith('eval/')}):
      points = [(r['step'], r[key]) for r in evals if key in r]
      eval_ax.plot(*zip(*points), 'o-', label=key.removeprefix('eval/'))
    eval_ax.set(title=f'{label}: evaluation', xlabel='step', ylim=(0, 1.02))
    eval_ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path)
