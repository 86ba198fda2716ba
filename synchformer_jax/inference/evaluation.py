"""Evaluating a model on a dataset split (spec §3.7, §4): logits over one or more passes, then the metrics.

Offset models (Stage II, and SparseSync through its own pipeline and 21- or 3-class grid) are scored on offsets
(acc@1, acc@1 ±1 class, per class, confusion matrix); synchronizability models on p(synchronizable) (accuracy,
ROC AUC, ROC curve). A split's fixed offsets are used where its records have them; `random_offsets` draws every
offset instead (from the model's grid), as the original's `load_fixed_offsets_on=[]`. Each of `iter_times` passes
draws from its own seed, and the metrics are computed once over all passes' predictions, as the original does for
VGGSound-Sparse (25 passes).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from synchformer_jax import metrics
from synchformer_jax.constants import OFFSET_GRID, TARGET_KEY
from synchformer_jax.data import loader
from synchformer_jax.errors import InputError
from synchformer_jax.inference.compiled import model_logits, softmax
from synchformer_jax.inference.kinds import OFFSET_KINDS, eval_example, offset_grid


def collect_logits(model: nnx.Module, source, *, iter_times: int = 1, batch_size: int = 8,
                   random_offsets: bool = False, original_decoder: bool = False, seed: int = 0,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(logits (N, C), targets (N,)) over `iter_times` passes of a split's records (N = passes × clips)."""
  if iter_times < 1:
    raise InputError(f'iter_times: expected a positive integer, got {iter_times}')
  kind = model.cfg.kind
  if kind not in TARGET_KEY:
    raise InputError(f"evaluation needs an offset ('sync', 'sparsesync') or synchronizability model, got {kind!r}")
  step = eval_example(model, fixed_offsets=not random_offsets, original_decoder=original_decoder)
  keys = ('video', 'audio', TARGET_KEY[kind])
  example = lambda record, rng: {k: v for k, v in step(record, rng).items() if k in keys}
  batches_per_pass = -(-len(source) // batch_size)
  logits, targets = [], []
  with tqdm(total=iter_times * batches_per_pass, desc='evaluating', unit='batch', disable=not progress) as bar:
    for pass_index in range(iter_times):
      # One RNG stream per pass (spec §3.7), so the passes differ and the whole evaluation is reproducible.
      for batch in loader.eval_dataset(source, example, batch_size=batch_size, seed=seed + pass_index,
                                       shard=loader.ProcessShard()):
        mask = np.asarray(batch[loader.MASK_KEY])
        out = jax.device_get(model_logits(model, batch['video'], batch['audio']))
        logits.append(np.asarray(out)[mask])
        targets.append(np.asarray(batch[keys[2]])[mask])
        bar.update()
  return np.concatenate(logits), np.concatenate(targets)


def offset_report(logits: np.ndarray, targets: np.ndarray, grid: np.ndarray = OFFSET_GRID) -> dict[str, Any]:
  """The original's offset metrics, accuracy per target class and the confusion matrix (rows: targets), on the
  model's class grid (`offset_grid`: the offset of each class)."""
  num_classes = len(grid)
  predictions = np.argmax(logits, axis=-1)
  matrix = metrics.confusion_matrix(predictions, targets, num_classes)
  per_class = []
  for c in range(num_classes):
    count = int(matrix[c].sum())
    if count:
      per_class.append({'class': c, 'offset_sec': round(float(grid[c]), 2), 'count': count,
                        'accuracy_1': float(matrix[c, c] / count),
                        'accuracy_1_tol1': float(matrix[c, max(c - 1, 0):c + 2].sum() / count)})
  return {'metrics': metrics.offset_metrics(logits, targets, num_classes), 'num_predictions': int(len(targets)),
          'offset_grid': [round(float(g), 2) for g in grid], 'per_class': per_class,
          'confusion_matrix': matrix.tolist()}


def synchronizability_report(logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
  """Accuracy of p(sync) > 0.5, ROC AUC and the ROC curve; class 1 is 'synchronizable'."""
  p_sync = softmax(logits)[:, 1]
  matrix = metrics.confusion_matrix((p_sync > 0.5).astype(np.int64), targets, 2)
  return {'metrics': metrics.synchronizability_metrics(logits, targets), 'num_predictions': int(len(targets)),
          'confusion_matrix': matrix.tolist(), 'roc': metrics.roc_curve(p_sync, np.asarray(targets) == 1)}


def evaluate(model: nnx.Module, name: str, split: str, data_dir: str, **options) -> dict[str, Any]:
  """The report of `model` on split `split` of dataset `name` built under `data_dir` (see `collect_logits`)."""
  source = loader.open_split(name, split, data_dir)
  logits, targets = collect_logits(model, source, **options)
  if model.cfg.kind in OFFSET_KINDS:
    report = offset_report(logits, targets, offset_grid(model))
  else:
    report = synchronizability_report(logits, targets)
  return {'dataset': name, 'split': split, 'kind': model.cfg.kind, **report}
