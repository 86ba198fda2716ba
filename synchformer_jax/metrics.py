"""Evaluation metrics as the original computes them (numpy, on gathered outputs): what training's
evaluation and the inference tools report."""
from __future__ import annotations

import numpy as np

from synchformer_jax.constants import NUM_OFFSET_CLASSES


def offset_metrics(logits: np.ndarray, targets: np.ndarray, num_classes: int = NUM_OFFSET_CLASSES) -> dict[str, float]:
  """acc@1, acc@5 and acc@1 ±1 class (the original's `calc_cls_metrics`), plus per-class accuracy."""
  logits, targets = np.asarray(logits, np.float64), np.asarray(targets)
  order = np.argsort(-logits, axis=-1, kind='stable')
  top1 = order[:, 0]
  metrics = {'accuracy_1': float(np.mean(top1 == targets)),
             'accuracy_5': float(np.mean(np.any(order[:, :5] == targets[:, None], axis=-1))),
             'accuracy_1_tol1': float(np.mean(np.abs(top1 - targets) <= 1))}
  per_class = [float(np.mean(top1[targets == c] == c)) for c in range(num_classes) if np.any(targets == c)]
  metrics['accuracy_1_median'] = float(np.median(per_class)) if per_class else float('nan')
  return metrics


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
  """Mean softmax cross-entropy of integer targets (the classification stages' training loss)."""
  logits = np.asarray(logits, np.float64)
  log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  return float(-np.mean(np.take_along_axis(log_probs, np.asarray(targets)[:, None], axis=-1)))


def confusion_matrix(predictions: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(targets), np.asarray(predictions)), 1)
  return matrix


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve (Mann–Whitney U with tied scores counted half); NaN with one class only."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  n_pos, n_neg = int(labels.sum()), int((~labels).sum())
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  order = np.argsort(scores, kind='stable')
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  start = 0
  for end in range(1, len(scores) + 1):  # average ranks over ties
    if end == len(scores) or sorted_scores[end] != sorted_scores[start]:
      ranks[order[start:end]] = (start + end + 1) / 2
      start = end
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> dict[str, list[float]]:
  """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  order = np.argsort(-scores, kind='stable')
  scores, labels = scores[order], labels[order]
  last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
  tp, fp = np.cumsum(labels)[last_of_tie], np.cumsum(~labels)[last_of_tie]
  tpr = np.r_[0.0, tp / max(labels.sum(), 1)]
  fpr = np.r_[0.0, fp / max((~labels).sum(), 1)]
  return {'fpr': fpr.tolist(), 'tpr': tpr.tolist(), 'thresholds': np.r_[np.inf, scores[last_of_tie]].tolist()}


def synchronizability_metrics(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
  """Accuracy of p(sync) > 0.5 and the ROC AUC of p(sync); class 1 is 'synchronizable'."""
  logits = np.asarray(logits, np.float64)
  p_sync = np.exp(logits[:, 1] - np.logaddexp(logits[:, 0], logits[:, 1]))
  return {'accuracy': float(np.mean((p_sync > 0.5) == (np.asarray(targets) == 1))),
          'roc_auc': roc_auc(p_sync, np.asarray(targets) == 1)}


def shifted_window_precision(vfeat: np.ndarray, afeat: np.ndarray, window: int = 8) -> dict[str, float]:
  """Stage I zero-shot validation: can windows of `window` segments be matched to their own shift?

  vfeat, afeat: (B, S, D) L2-normalised segment embeddings. Windows of consecutive segments are
  concatenated, and each visual (audio) window must find its own audio (visual) window among the clip's
  S − window + 1 shifts.
  """
  b, s, d = vfeat.shape
  n = s - window + 1
  if n < 1:
    raise ValueError(f'shifted_window_precision: {s} segments are fewer than the window of {window}')
  idx = np.arange(n)[:, None] + np.arange(window)[None, :]
  v_win = vfeat[:, idx].reshape(b, n, window * d)
  a_win = afeat[:, idx].reshape(b, n, window * d)
  sim = np.einsum('bid,bjd->bij', a_win, v_win)  # M[i, j] = <audio window i, visual window j>
  precision_a = np.mean(np.argmax(sim, axis=1) == np.arange(n), axis=-1)
  precision_v = np.mean(np.argmax(sim, axis=2) == np.arange(n), axis=-1)
  return {'precision': float(np.mean((precision_a + precision_v) / 2)), 'precision_a': float(np.mean(precision_a)),
          'precision_v': float(np.mean(precision_v))}


def segment_contrastive_loss(vfeat: np.ndarray, afeat: np.ndarray, temperature: float,
                             group_clips: int = 4) -> dict[str, float]:
  """Stage I's training loss on held-out clips: the symmetric InfoNCE over the segments of groups of
  `group_clips` consecutive clips (the negatives a training batch of that size has), averaged over the groups.

  vfeat, afeat: (B, S, D) L2-normalised segment embeddings. A trailing incomplete group is left out (its chance
  level, ln of its segment count, differs), unless there is no complete one.
  """
  b, s, d = vfeat.shape
  groups = max(b // group_clips, 1)
  size = min(group_clips, b)
  losses = []
  for g in range(groups):
    v = vfeat[g * size:(g + 1) * size].reshape(-1, d).astype(np.float64)
    a = afeat[g * size:(g + 1) * size].reshape(-1, d).astype(np.float64)
    sim = v @ a.T / temperature
    diag = np.diagonal(sim)
    v2a = np.logaddexp.reduce(sim, axis=1) - diag
    a2v = np.logaddexp.reduce(sim, axis=0) - diag
    losses.append(0.5 * (v2a.mean() + a2v.mean()))
  return {'contrastive_loss': float(np.mean(losses))}


def segment_retrieval(vfeat: np.ndarray, afeat: np.ndarray) -> dict[str, float]:
  """Recall@1 of segment-to-segment retrieval among all segments of the batch, both directions."""
  v, a = vfeat.reshape(-1, vfeat.shape[-1]), afeat.reshape(-1, afeat.shape[-1])
  sim = v @ a.T
  target = np.arange(len(v))
  return {'v2a_recall_1': float(np.mean(np.argmax(sim, axis=1) == target)),
          'a2v_recall_1': float(np.mean(np.argmax(sim, axis=0) == target))}
