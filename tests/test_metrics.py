"""Evaluation metrics against hand-computed values."""
import numpy as np
import pytest

from synchformer_jax import metrics


def test_offset_metrics_top1_top5_and_tolerance():
  logits = np.full((4, 21), -10.0)
  targets = np.array([3, 10, 20, 0])
  for row, predicted in enumerate([3, 11, 18, 0]):  # right, off by one, off by two, right
    logits[row, predicted] = 5.0
  logits[2, 20] = 4.0  # the target is second for row 2: inside top-5
  m = metrics.offset_metrics(logits, targets)
  assert m['accuracy_1'] == 0.5 and m['accuracy_1_tol1'] == 0.75 and m['accuracy_5'] == 0.75
  assert m['accuracy_1_median'] == pytest.approx(np.median([1.0, 0.0, 0.0, 1.0]))


def test_roc_auc_with_ties_and_one_class():
  assert metrics.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
  assert metrics.roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
  assert np.isnan(metrics.roc_auc(np.array([0.2, 0.3]), np.array([1, 1])))


def test_synchronizability_metrics_use_p_sync_of_class_1():
  logits = np.log(np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6], [0.7, 0.3]]))
  m = metrics.synchronizability_metrics(logits, np.array([1, 0, 0, 1]))
  assert m['accuracy'] == 0.5 and m['roc_auc'] == 0.75  # positives 0.8, 0.3 vs negatives 0.1, 0.6


def test_shifted_window_precision_is_1_for_matching_streams_and_low_for_shuffled():
  rng = np.random.default_rng(0)
  feats = rng.standard_normal((3, 14, 16))
  feats /= np.linalg.norm(feats, axis=-1, keepdims=True)
  assert metrics.shifted_window_precision(feats, feats)['precision'] == 1.0
  shuffled = metrics.shifted_window_precision(feats, feats[:, ::-1])
  assert shuffled['precision'] < 0.5
  assert metrics.segment_retrieval(feats, feats) == {'v2a_recall_1': 1.0, 'a2v_recall_1': 1.0}


def test_confusion_matrix_counts_target_rows_and_prediction_columns():
  m = metrics.confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2)
  assert m.tolist() == [[1, 1], [0, 1]]


def test_roc_curve_encloses_the_metrics_auc_also_with_ties():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 200)
  scores = np.round(rng.random(200) * 0.6 + 0.4 * labels, 1)  # coarse: many tied scores
  roc = metrics.roc_curve(scores, labels == 1)
  assert roc['fpr'][0] == roc['tpr'][0] == 0 and roc['fpr'][-1] == roc['tpr'][-1] == 1
  assert np.all(np.diff(roc['fpr']) >= 0) and np.all(np.diff(roc['tpr']) >= 0)
  np.testing.assert_allclose(np.trapezoid(roc['tpr'], roc['fpr']), metrics.roc_auc(scores, labels))


def test_the_held_out_contrastive_loss_is_the_training_loss_over_groups_of_clips():
  import jax.numpy as jnp
  from synchformer_jax.models.avclip import l2_normalize, segment_contrastive_loss
  rng = np.random.default_rng(0)
  vfeat = np.asarray(l2_normalize(jnp.asarray(rng.normal(size=(9, 3, 8)), jnp.float32)))
  afeat = np.asarray(l2_normalize(jnp.asarray(rng.normal(size=(9, 3, 8)), jnp.float32)))
  # Groups of 4 clips: clips 0-3 and 4-7; the ninth, an incomplete group, is left out.
  per_group = [float(segment_contrastive_loss(jnp.asarray(vfeat[g:g + 4].reshape(-1, 8)),
                                              jnp.asarray(afeat[g:g + 4].reshape(-1, 8)), 0.07)[0]) for g in (0, 4)]
  got = metrics.segment_contrastive_loss(vfeat, afeat, 0.07, group_clips=4)['contrastive_loss']
  assert got == pytest.approx(np.mean(per_group), rel=1e-5)
  # Fewer clips than a group: one group of all of them.
  alone = float(segment_contrastive_loss(jnp.asarray(vfeat[:2].reshape(-1, 8)), jnp.asarray(afeat[:2].reshape(-1, 8)),
                                         0.07)[0])
  assert metrics.segment_contrastive_loss(vfeat[:2], afeat[:2], 0.07)['contrastive_loss'] == pytest.approx(alone, rel=1e-5)


def test_cross_entropy_of_integer_targets():
  logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  expected = np.mean([-(2.0 - np.log(np.exp(2.0) + 1 + np.exp(-1.0))), np.log(3.0)])
  assert metrics.cross_entropy(logits, np.array([0, 2])) == pytest.approx(expected)
