"""Evaluation reports from logits (no model): per-class accuracies from the confusion matrix, the ROC curve."""
import numpy as np

from synchformer_jax.inference import evaluation


def test_offset_report_per_class_rows_match_the_metrics():
  rng = np.random.default_rng(0)
  targets = rng.integers(0, 21, 300)
  logits = rng.normal(size=(300, 21))
  logits[np.arange(300), np.clip(targets + rng.integers(-1, 2, 300), 0, 20)] += 3  # mostly within one class
  report = evaluation.offset_report(logits, targets)
  rows = report['per_class']
  assert sum(r['count'] for r in rows) == 300 == np.sum(report['confusion_matrix'])
  weighted = lambda key: sum(r[key] * r['count'] for r in rows) / 300
  np.testing.assert_allclose(weighted('accuracy_1'), report['metrics']['accuracy_1'])
  np.testing.assert_allclose(weighted('accuracy_1_tol1'), report['metrics']['accuracy_1_tol1'])
  assert rows[0]['offset_sec'] == -2.0 and rows[-1]['offset_sec'] == 2.0


def test_synchronizability_report_area_under_its_roc_is_its_auc():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 200)
  scores = np.round(rng.random(200) * 0.6 + 0.4 * labels, 1)
  logits = np.stack([np.zeros(200), np.log(scores + 1e-3) - np.log1p(-scores + 1e-3)], axis=-1)
  report = evaluation.synchronizability_report(logits, labels)
  np.testing.assert_allclose(report['metrics']['roc_auc'], np.trapezoid(report['roc']['tpr'], report['roc']['fpr']))
