"""Figures show what they are given: each plot's artists are checked against the data drawn, and the PNG is read back."""
import matplotlib.image
import numpy as np

from synchformer_jax import plots
from synchformer_jax.inference.results import OffsetCurve


def _read_png(path) -> np.ndarray:
  image = matplotlib.image.imread(str(path))
  assert image.ndim == 3 and image[..., :3].std() > 0.02  # a picture, not a blank page
  return image


def test_confusion_matrix_shows_row_shares_and_counts(tmp_path):
  matrix = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 6]])
  fig = plots.plot_confusion_matrix(matrix, ['-0.2', '+0.0', '+0.2'], str(tmp_path / 'cm.png'), title='t')
  ax = fig.axes[0]
  np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0, 0.75]])
  assert sorted(t.get_text() for t in ax.texts) == ['1', '2', '3', '6']  # the non-zero counts, one per cell
  assert [t.get_text() for t in ax.get_xticklabels()] == ['-0.2', '+0.0', '+0.2']
  _read_png(tmp_path / 'cm.png')


def test_offset_curve_marks_each_window_the_applied_offset_and_the_consensus(tmp_path):
  grid = np.linspace(-2, 2, 21)
  logits = np.full((3, 21), -5.0)
  logits[[0, 1, 2], [12, 12, 15]] = 5.0  # windows predict +0.4, +0.4, +1.0 s
  curve = OffsetCurve(np.array([0.0, 0.96, 1.92]), 4.8, grid, logits, applied_offset_sec=0.4)
  fig = plots.plot_offset_curve(curve, str(tmp_path / 'curve.png'))
  ax = fig.axes[0]
  top, applied, consensus = ax.lines
  np.testing.assert_allclose(top.get_xdata(), [2.4, 3.36, 4.32])  # window centres
  np.testing.assert_allclose(top.get_ydata(), [0.4, 0.4, 1.0])
  np.testing.assert_allclose(applied.get_ydata(), [0.4, 0.4])
  np.testing.assert_allclose(consensus.get_ydata(), [0.4, 0.4])  # the mean distribution peaks at +0.4 s
  np.testing.assert_allclose(ax.images[0].get_array(), curve.probs.T)
  _read_png(tmp_path / 'curve.png')


def test_roc_draws_the_curve_against_chance(tmp_path):
  roc = {'fpr': [0.0, 0.0, 0.5, 1.0], 'tpr': [0.0, 0.5, 1.0, 1.0]}
  fig = plots.plot_roc(roc, 0.875, str(tmp_path / 'roc.png'))
  curve, chance = fig.axes[0].lines
  np.testing.assert_allclose(curve.get_xydata(), np.c_[roc['fpr'], roc['tpr']])
  np.testing.assert_allclose(chance.get_xydata(), [[0, 0], [1, 1]])
  assert curve.get_label() == 'AUC 0.875'
  _read_png(tmp_path / 'roc.png')


def test_training_curves_draw_losses_chance_and_evaluations_per_run(tmp_path):
  train = [{'step': s, 'loss': 3.0 - s / 10} for s in range(1, 11)]
  evals = [{'step': 5, 'eval/accuracy_1': 0.2}, {'step': 10, 'eval/accuracy_1': 0.6}]
  fig = plots.plot_training_curves({'A': (train, evals), 'B': (train[:4], [])}, str(tmp_path / 'c.png'),
                                   chance_loss={'A': 3.045})
  loss_a, eval_a, loss_b, _ = fig.axes
  raw, smoothed, chance = loss_a.lines
  np.testing.assert_allclose(raw.get_ydata(), [r['loss'] for r in train])
  np.testing.assert_allclose(chance.get_ydata(), [3.045, 3.045])
  np.testing.assert_allclose(eval_a.lines[0].get_xydata(), [[5, 0.2], [10, 0.6]])
  assert len(loss_b.lines) == 2 and loss_b.get_title() == 'B: training loss'  # no chance line for B
  _read_png(tmp_path / 'c.png')


def test_smooth_is_a_trailing_mean():
  np.testing.assert_allclose(plots.smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])


def test_segment_similarity_rows_are_min_max_scaled(tmp_path):
  rng = np.random.default_rng(0)
  v, a = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
  fig = plots.plot_segment_similarity(v, a, str(tmp_path / 'viz' / 'sim.png'))
  sim = v.reshape(6, 4) @ a.reshape(6, 4).T
  expected = (sim - sim.min(1, keepdims=True)) / (sim.max(1, keepdims=True) - sim.min(1, keepdims=True))
  np.testing.assert_allclose(fig.axes[0].images[0].get_array(), expected, atol=1e-12)
  np.testing.assert_allclose(fig.axes[1].images[0].get_array().min(axis=1), 0)
  _read_png(tmp_path / 'viz' / 'sim.png')


def test_a_scaling_law_plot_draws_every_point_the_fit_and_its_band(tmp_path):
  x, y = np.array([1e3, 1e4, 1e5, 1e6]), np.array([3.0, 2.2, 1.9, 1.8])
  grid = np.geomspace(1e3, 1e6, 20)
  fig = plots.plot_scaling_law(x, y, str(tmp_path / 'law.png'), fit_x=grid, fit_y=1.7 + 10 * grid ** -0.3,
                               band=(1.6 + 10 * grid ** -0.3, 1.8 + 10 * grid ** -0.3),
                               fitted=np.array([True, True, False, True]), xlabel='N', label='fit')
  ax = fig.axes[0]
  other, fitted = (c.get_offsets() for c in ax.collections[:2])
  np.testing.assert_allclose(other, [[1e5, 1.9]])
  np.testing.assert_allclose(fitted, [[1e3, 3.0], [1e4, 2.2], [1e6, 1.8]])
  np.testing.assert_allclose(ax.lines[0].get_ydata(), 1.7 + 10 * grid ** -0.3)
  assert ax.get_xscale() == ax.get_yscale() == 'log' and len(ax.collections) == 3  # points, points, band
  _read_png(tmp_path / 'law.png')


def test_an_isoflop_plot_marks_each_budget_and_its_optimum(tmp_path):
  budgets = np.repeat([1e12, 1e13], 3)
  n = np.tile([1e4, 1e5, 1e6], 2)
  loss = np.array([2.0, 1.8, 1.9, 1.7, 1.5, 1.55])
  optima = [{'budget': 1e12, 'n_opt': 2e5, 'loss_opt': 1.79}, {'budget': 1e13, 'n_opt': 4e5, 'loss_opt': 1.49}]
  fig = plots.plot_isoflop(budgets, n, loss, optima, str(tmp_path / 'iso.png'))
  profiles, frontier = fig.axes
  np.testing.assert_allclose(profiles.collections[-1].get_offsets(), [[2e5, 1.79], [4e5, 1.49]])
  np.testing.assert_allclose(frontier.lines[0].get_xydata(), [[1e12, 2e5], [1e13, 4e5]])
  _read_png(tmp_path / 'iso.png')
