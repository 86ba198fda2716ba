"""Scaling-law fits with bootstrap confidence intervals (numpy and scipy only; no model, no training).

- `fit_power_law(x, y)`: L(x) = E + A·x^(-α), an irreducible term E ≥ 0 (x = parameters N, data D or compute C).
- `fit_isoflop(budget, n, d, loss)`: Chinchilla's approach 2. For each FLOP budget a parabola of the loss in
  log N gives the optimum N*(C) (and D*(C), by interpolating log D over log N within the budget); then
  N*(C) = k·C^a and D*(C) = k'·C^b are fitted in log-log.
- `fit_parametric(n, d, loss)`: Chinchilla's approach 3, L(N, D) = E + A/N^α + B/D^β, Huber loss on log L.
Every fit is least squares on log L (the relative error, as the losses span decades); every exponent gets a
percentile bootstrap interval over resampled points (within each budget for the isoFLOP fit).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
from scipy import optimize

from synchformer_jax.errors import InputError

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 200


class FitError(InputError):
  """Points a fit cannot use (too few, non-positive, non-finite) or a fit that does not exist (a flat parabola)."""


def _positive_points(what: str, n_params: int, **columns: np.ndarray) -> dict[str, np.ndarray]:
  arrays = {name: np.asarray(values, np.float64).ravel() for name, values in columns.items()}
  lengths = {len(a) for a in arrays.values()}
  if len(lengths) != 1:
    raise FitError(f'{what}: columns of unequal lengths {({k: len(a) for k, a in arrays.items()})}')
  count = lengths.pop()
  if count < n_params + 1:
    raise FitError(f'{what}: needs at least {n_params + 1} points ({n_params} parameters and one to spare), '
                   f'got {count}')
  for name, a in arrays.items():
    bad = np.flatnonzero(~np.isfinite(a) | (a <= 0))
    if bad.size:
      raise FitError(f'{what}: {name} must be positive and finite; point {int(bad[0])} has {float(a[bad[0]])!r}')
  return arrays


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
  tail = 100 * (1 - confidence) / 2
  lo, hi = np.nanpercentile(samples, [tail, 100 - tail])
  return float(lo), float(hi)


def _bootstrap(fit_once: Callable[[np.ndarray], dict[str, float]], groups: list[np.ndarray],
               min_unique: int, samples: int, seed: int, confidence: float
               ) -> tuple[dict[str, tuple[float, float]], dict[str, np.ndarray]]:
  """(percentile intervals, draws) of each value `fit_once(indices)` returns, over resamples (with replacement)
  of the points of each group; a resample with fewer than `min_unique` distinct points, or whose fit fails, is
  redrawn."""
  rng = np.random.default_rng(seed)
  draws: dict[str, list[float]] = {}
  done = attempts = 0
  while done < samples and attempts < 10 * samples:
    attempts += 1
    indices = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
    if len(np.unique(indices)) < min_unique:
      continue
    try:
      values = fit_once(indices)
    except (FitError, ValueError, np.linalg.LinAlgError):
      continue
    for name, value in values.items():
      draws.setdefault(name, []).append(value)
    done += 1
  if done < samples // 2:
    raise FitError(f'bootstrap: only {done} of {samples} resamples could be fitted')
  draws = {name: np.asarray(v) for name, v in draws.items()}
  return {name: _interval(v, confidence) for name, v in draws.items()}, draws


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """L(x) = E + A·x^(-α), with bootstrap intervals of E, A and α."""
  E: float
  A: float
  alpha: float
  intervals: dict[str, tuple[float, float]]
  n_points: int
  rms_log_residual: float
  draws: dict[str, np.ndarray] = dataclasses.field(repr=False, compare=False)  # the bootstrap's fits

  def __call__(self, x) -> np.ndarray:
    return self.E + self.A * np.asarray(x, np.float64) ** -self.alpha

  def band(self, x, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The pointwise interval of L(x) over the bootstrap's fits."""
    x = np.asarray(x, np.float64)
    curves = self.draws['E'][:, None] + self.draws['A'][:, None] * x[None] ** -self.draws['alpha'][:, None]
    tail = 100 * (1 - confidence) / 2
    return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)

  def to_dict(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != 'draws'}


def _power_law_once(log_x: np.ndarray, log_y: np.ndarray, starts: list[np.ndarray]) -> np.ndarray:
  """Best (e, a, α) over the starting points, with E = exp(e), A = exp(a), x scaled to a geometric mean of 1."""
  def residuals(p):
    e, a, alpha = p
    return np.logaddexp(e, a - alpha * log_x) - log_y

  best = None
  for start in starts:
    result = optimize.least_squares(residuals, start, bounds=([-50, -50, 0], [50, 50, 10]), method='trf')
    if best is None or result.cost < best.cost:
      best = result
  return best.x


def _power_law_starts(log_x: np.ndarray, log_y: np.ndarray) -> list[np.ndarray]:
  y_min = np.exp(log_y.min())
  starts = []
  for e_fraction in (1e-3, 0.5, 0.9):
    for alpha in (0.1, 0.3, 0.7, 1.5):
      excess = np.maximum(np.exp(log_y) - e_fraction * y_min, 1e-12 * y_min)
      a = np.median(np.log(excess) + alpha * log_x)
      starts.append(np.array([np.log(e_fraction * y_min), a, alpha]))
  return starts


def fit_power_law(x, y, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                  confidence: float = CONFIDENCE) -> PowerLaw:
  points = _positive_points('power law L = E + A·x^-α', 3, x=x, loss=y)
  x, y = points['x'], points['loss']
  scale = float(np.exp(np.mean(np.log(x))))  # x / scale has a geometric mean of 1: a well-conditioned fit
  log_x, log_y = np.log(x / scale), np.log(y)
  e, a, alpha = _power_law_once(log_x, log_y, _power_law_starts(log_x, log_y))

  def natural(p) -> dict[str, float]:
    return {'E': float(np.exp(p[0])), 'A': float(np.exp(p[1]) * scale ** p[2]), 'alpha': float(p[2])}

  def fit_once(indices):
    return natural(_power_law_once(log_x[indices], log_y[indices], [np.array([e, a, alpha])]))

  intervals, draws = _bootstrap(fit_once, [np.arange(len(x))], 3, samples, seed, confidence)
  best = natural((e, a, alpha))
  residual = np.logaddexp(e, a - alpha * log_x) - log_y
  return PowerLaw(**best, intervals=intervals, n_points=len(x),
                  rms_log_residual=float(np.sqrt(np.mean(residual ** 2))), draws=draws)


def frontier(x, y, *, pareto: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The points a law of x is fitted to: the lowest loss at each distinct x, or (`pareto`, for compute) only the
  points no cheaper point beats."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xs = np.unique(x)
  best = np.array([y[x == v].min() for v in xs])
  if not pareto:
    return xs, best
  keep = best < np.minimum.accumulate(np.concatenate([[np.inf], best[:-1]]))
  return xs[keep], best[keep]


def _parabola_optimum(log_n: np.ndarray, loss: np.ndarray, budget: float) -> float:
  curvature, slope, _ = np.polyfit(log_n, loss, 2)
  if not curvature > 0:
    raise FitError(f'isoFLOP budget {budget:.3g}: the loss is not convex in log N (curvature {curvature:.3g}): '
                   f'no optimum; widen the range of model sizes around the optimum')
  return -slope / (2 * curvature)


def _optima(budgets: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, loss: np.ndarray,
            indices: np.ndarray) -> dict[str, np.ndarray]:
  """Per budget: log N* from the parabola, log D* from the line of log D over log N at it."""
  b, ln, ld, lo = budgets[indices], log_n[indices], log_d[indices], loss[indices]
  rows = []
  for budget in np.unique(b):
    at = b == budget
    if len(np.unique(ln[at])) < 3:
      raise FitError(f'isoFLOP budget {budget:.3g}: needs at least 3 model sizes, got {len(np.unique(ln[at]))}')
    n_opt = _parabola_optimum(ln[at], lo[at], budget)
    d_slope, d_intercept = np.polyfit(ln[at], ld[at], 1)
    rows.append((np.log(budget), n_opt, d_slope * n_opt + d_intercept, np.polyval(np.polyfit(ln[at], lo[at], 2),
                                                                                 n_opt)))
  log_c, log_n_opt, log_d_opt, loss_opt = map(np.asarray, zip(*rows))
  return {'log_c': log_c, 'log_n_opt': log_n_opt, 'log_d_opt': log_d_opt, 'loss_opt': loss_opt}


def fit_isoflop(budget, n, d, loss, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                confidence: float = CONFIDENCE) -> dict[str, Any]:
  """N*(C) = k_N·C^a and D*(C) = k_D·C^b from the isoFLOP parabolas (at least 2 budgets of 3 sizes each)."""
  points = _positive_points('isoFLOP fit', 3, budget=budget, n=n, d=d, loss=loss)
  budgets = points['budget']
  if len(np.unique(budgets)) < 2:
    raise FitError(f'isoFLOP fit: needs at least 2 FLOP budgets, got {len(np.unique(budgets))}')
  log_n, log_d, loss = np.log(points['n']), np.log(points['d']), points['loss']

  def fit_once(indices):
    optima = _optima(budgets, log_n, log_d, loss, indices)
    a, log_k_n = np.polyfit(optima['log_c'], optima['log_n_opt'], 1)
    b, log_k_d = np.polyfit(optima['log_c'], optima['log_d_opt'], 1)
    return {'a': float(a), 'b': float(b), 'log_k_n': float(log_k_n), 'log_k_d': float(log_k_d)}

  everything = np.arange(len(loss))
  best, optima = fit_once(everything), _optima(budgets, log_n, log_d, loss, everything)
  groups = [np.flatnonzero(budgets == v) for v in np.unique(budgets)]
  intervals, _ = _bootstrap(fit_once, groups, 3 * len(groups), samples, seed, confidence)
  return {'a': best['a'], 'b': best['b'], 'k_n': float(np.exp(best['log_k_n'])),
          'k_d': float(np.exp(best['log_k_d'])), 'intervals': {'a': intervals['a'], 'b': intervals['b']},
          'optima': [{'budget': float(np.exp(c)), 'n_opt': float(np.exp(ln)), 'd_opt': float(np.exp(ld)),
                      'loss_opt': float(lo)}
                     for c, ln, ld, lo in zip(optima['log_c'], optima['log_n_opt'], optima['log_d_opt'],
                                              optima['loss_opt'])],
          'n_points': len(loss)}


@dataclasses.dataclass(frozen=True)
class ParametricLaw:
  """L(N, D) = E + A/N^α + B/D^β."""
  E: float
  A: float
  alpha: float
  B: float
  beta: float
  intervals: dict[str, tuple[float, float]]
  n_points: int
  rms_log_residual: float

  def __call__(self, n, d) -> np.ndarray:
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    return self.E + self.A * n ** -self.alpha + self.B * d ** -self.beta

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def fit_parametric(n, d, loss, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                   confidence: float = CONFIDENCE, huber_delta: float = 1e-3) -> ParametricLaw:
  points = _positive_points('parametric fit L = E + A/N^α + B/D^β', 5, n=n, d=d, loss=loss)
  n_scale, d_scale = (float(np.exp(np.mean(np.log(points[k])))) for k in ('n', 'd'))
  log_n, log_d = np.log(points['n'] / n_scale), np.log(points['d'] / d_scale)
  log_y = np.log(points['loss'])

  def residuals(p, idx):
    e, a, alpha, b, beta = p
    return np.logaddexp.reduce([np.full(idx.shape, e), a - alpha * log_n[idx], b - beta * log_d[idx]], axis=0) \
        - log_y[idx]

  def solve(idx, starts):
    best = None
    for start in starts:
      result = optimize.least_squares(residuals, start, args=(idx,), loss='huber', f_scale=huber_delta,
                                      bounds=([-50, -50, 0, -50, 0], [50, 50, 10, 50, 10]), method='trf')
      if best is None or result.cost < best.cost:
        best = result
    return best.x

  y_min = float(points['loss'].min())
  starts = [np.array([np.log(e * y_min), np.log(y_min * s), alpha, np.log(y_min * s), beta])
            for e in (0.1, 0.5, 0.9) for s in (0.1, 1.0) for alpha in (0.2, 0.6) for beta in (0.2, 0.6)]
  everything = np.arange(len(log_y))
  p = solve(everything, starts)

  def natural(q) -> dict[str, float]:
    e, a, alpha, b, beta = q
    return {'E': float(np.exp(e)), 'A': float(np.exp(a) * n_scale ** alpha), 'alpha': float(alpha),
            'B': float(np.exp(b) * d_scale ** beta), 'beta': float(beta)}

  intervals, _ = _bootstrap(lambda idx: natural(solve(idx, [p])), [everything], 5, samples, seed, confidence)
  residual = residuals(p, everything)
  return ParametricLaw(**natural(p), intervals=intervals, n_points=len(log_y),
                       rms_log_residual=float(np.sqrt(np.mean(residual ** 2))))
