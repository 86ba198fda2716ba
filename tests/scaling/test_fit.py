"""The scaling-law fits recover known exponents from noisy synthetic points, and refuse points they cannot use."""
import numpy as np
import pytest

from synchformer_jax.scaling import fit

# A Chinchilla-like law, L(N, D) = E + A/N^α + B/D^β, with C = 6·N·D: the compute-optimal N*(C) ∝ C^(β/(α+β)).
E, A, ALPHA, B, BETA = 1.7, 400.0, 0.34, 410.0, 0.28


def _law(n, d):
  return E + A * n ** -ALPHA + B * d ** -BETA


def _noisy(values, rng, sigma=0.01):
  return values * np.exp(rng.normal(0, sigma, np.shape(values)))


def _within(interval, value):
  return interval[0] <= value <= interval[1]


@pytest.mark.parametrize('seed', [0, 1])
def test_a_power_law_with_an_irreducible_term_is_recovered_within_its_interval(seed):
  rng = np.random.default_rng(seed)
  x = np.geomspace(1e5, 1e9, 20)
  law = fit.fit_power_law(x, _noisy(1.5 + 40 * x ** -0.3, rng), seed=seed)
  assert _within(law.intervals['alpha'], 0.3) and _within(law.intervals['E'], 1.5)
  assert law.alpha == pytest.approx(0.3, abs=0.05)
  lo, hi = law.band(x)
  assert np.all(lo <= law(x) + 1e-9) and np.all(law(x) <= hi + 1e-9)
  assert law.rms_log_residual < 0.02


def test_without_noise_the_power_law_is_exact():
  x = np.geomspace(10, 1e4, 8)
  law = fit.fit_power_law(x, 0.8 + 5 * x ** -0.5, samples=20)
  assert (law.E, law.A, law.alpha) == pytest.approx((0.8, 5.0, 0.5), rel=1e-4)


def _isoflop_points(rng):
  """Per budget, 9 model sizes within a decade around the law's optimum, D from the budget."""
  a = BETA / (ALPHA + BETA)
  rows = []
  for budget in (1e16, 1e17, 1e18, 1e19):
    # The law's optimum: G = (αA / βB)^(1/(α+β)), N* = G·(C/6)^a.
    n_opt = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * (budget / 6) ** a
    for n in n_opt * np.geomspace(0.3, 3.0, 9):
      rows.append((budget, n, budget / (6 * n)))
  budget, n, d = map(np.array, zip(*rows))
  return budget, n, d, _noisy(_law(n, d), rng, 0.002)


def test_isoflop_optima_give_the_compute_optimal_exponents():
  budget, n, d, loss = _isoflop_points(np.random.default_rng(0))
  result = fit.fit_isoflop(budget, n, d, loss)
  a = BETA / (ALPHA + BETA)
  assert _within(result['intervals']['a'], a) and _within(result['intervals']['b'], 1 - a)
  assert result['a'] + result['b'] == pytest.approx(1.0, abs=0.02)  # N*·D* ∝ C
  assert len(result['optima']) == 4


def test_the_parametric_law_recovers_both_exponents():
  rng = np.random.default_rng(3)
  n, d = (np.geomspace(1e6, 1e9, 6)[:, None] * np.ones(6)).ravel(), (np.ones(6)[:, None] * np.geomspace(1e8, 1e11, 6)).ravel()
  law = fit.fit_parametric(n, d, _noisy(_law(n, d), rng, 0.003), samples=60)
  assert _within(law.intervals['alpha'], ALPHA) and _within(law.intervals['beta'], BETA)
  assert law(n, d) == pytest.approx(_law(n, d), rel=0.01)


def test_the_compute_frontier_keeps_only_points_no_cheaper_point_beats():
  x, y = fit.frontier([1, 2, 2, 3, 4, 5], [5.0, 4.0, 3.0, 3.5, 2.0, 2.5], pareto=True)
  assert list(x) == [1, 2, 4] and list(y) == [5.0, 3.0, 2.0]
  x, y = fit.frontier([1, 2, 2, 3], [5.0, 4.0, 3.0, 3.5])
  assert list(x) == [1, 2, 3] and list(y) == [5.0, 3.0, 3.5]


def test_degenerate_inputs_are_refused_clearly():
  with pytest.raises(fit.FitError, match=r'needs at least 4 points \(3 parameters and one to spare\), got 3'):
    fit.fit_power_law([1, 2, 3], [3.0, 2.0, 1.5])
  with pytest.raises(fit.FitError, match=r'loss must be positive and finite; point 2 has -1.0'):
    fit.fit_power_law([1, 2, 3, 4], [3.0, 2.0, -1.0, 1.5])
  with pytest.raises(fit.FitError, match=r'x must be positive and finite; point 0 has 0.0'):
    fit.fit_power_law([0, 2, 3, 4], [3.0, 2.0, 1.8, 1.5])
  with pytest.raises(fit.FitError, match='needs at least 6 points'):
    fit.fit_parametric([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
  budget, n, d, loss = _isoflop_points(np.random.default_rng(0))
  one = budget == budget[0]
  with pytest.raises(fit.FitError, match='needs at least 2 FLOP budgets, got 1'):
    fit.fit_isoflop(budget[one], n[one], d[one], loss[one])
  concave = loss.copy()
  concave[one] = 5.0 - (np.log(n[one]) - np.log(n[one]).mean()) ** 2
  with pytest.raises(fit.FitError, match='not convex in log N'):
    fit.fit_isoflop(budget, n, d, concave)
