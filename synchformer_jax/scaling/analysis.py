"""A sweep's results table → its scaling fits, as JSON and log-log plots (what `scripts/fit_scaling.py` runs).

N is the trained parameter count, D the clips seen in training (steps × batch), C the analytic training FLOPs.
L(N) and L(D) are fitted to the lowest loss at each N (each D), L(C) to the compute frontier (the points no
cheaper point beats); L(N, D) and, for sweeps with FLOP budgets, the isoFLOP optima to every finished point.
A fit the points cannot support is reported as skipped, with the reason; the others still run.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from synchformer_jax import plots
from synchformer_jax.scaling import fit
from synchformer_jax.scaling.sweep import SweepError, atomic_file

# The loss a sweep is fitted on by default: the first of these its rows have (Stage I, then Stage II / III).
DEFAULT_METRICS = ('final_contrastive_loss', 'final_loss')
SCALES = {'N': ('trainable', 'trained parameters N'), 'D': ('clips_seen', 'training clips seen D'),
          'C': ('train_flops', 'training FLOPs C (analytic)')}


def finished_rows(rows: Sequence[dict[str, Any]], metric: str | None) -> tuple[list[dict[str, Any]], str]:
  done = [r for r in rows if r['status'] == 'done']
  if not done:
    raise SweepError(f'no finished point among {len(rows)} (statuses: {sorted({r["status"] for r in rows})})')
  if metric is None:
    metric = next((m for m in DEFAULT_METRICS if all(m in r for r in done)), None)
    if metric is None:
      raise SweepError(f'no default loss in every finished row; pass --metric, one of '
                       f'{sorted(k for k in done[0] if k.startswith(("final_", "best_")))}')
  missing = [r['name'] for r in done if metric not in r]
  if missing:
    raise SweepError(f'metric {metric!r} missing from point {missing[0]}')
  return done, metric


def _grid(x: np.ndarray, count: int = 100) -> np.ndarray:
  return np.geomspace(x.min() / 1.5, x.max() * 1.5, count)


def analyse(rows: Sequence[dict[str, Any]], out_dir: str, metric: str | None = None,
            samples: int = fit.BOOTSTRAP_SAMPLES, seed: int = 0) -> dict[str, Any]:
  """Fits, writes `fits.json` and the PNGs under `out_dir`, and returns the fits (each a dict or a 'skipped')."""
  done, metric = finished_rows(rows, metric)
  os.makedirs(out_dir, exist_ok=True)
  loss = np.array([r[metric] for r in done], np.float64)
  columns = {scale: np.array([r[key] for r in done], np.float64) for scale, (key, _) in SCALES.items()}
  report: dict[str, Any] = {'metric': metric, 'points': len(done), 'fits': {}, 'plots': []}

  for scale, (_, label) in SCALES.items():
    x = columns[scale]
    fx, fy = fit.frontier(x, loss, pareto=scale == 'C')
    try:
      law = fit.fit_power_law(fx, fy, samples=samples, seed=seed)
    except fit.FitError as e:
      report['fits'][f'L({scale})'] = {'skipped': str(e)}
      continue
    report['fits'][f'L({scale})'] = law.to_dict()
    grid = _grid(x)
    fitted = np.isin(np.arange(len(x)), [np.flatnonzero((x == a) & (loss == b))[0] for a, b in zip(fx, fy)])
    path = os.path.join(out_dir, f'loss_vs_{scale}.png')
    plots.plot_scaling_law(x, loss, path, fit_x=grid, fit_y=law(grid), band=law.band(grid), fitted=fitted,
                           xlabel=label, ylabel=metric,
                           label=f'{law.E:.3g} + {law.A:.3g}·{scale}^-{law.alpha:.3g}',
                           title=f'L({scale}): α = {law.alpha:.3f} [{law.intervals["alpha"][0]:.3f}, '
                                 f'{law.intervals["alpha"][1]:.3f}]')
    report['plots'].append(path)

  try:
    report['fits']['L(N, D)'] = fit.fit_parametric(columns['N'], columns['D'], loss, samples=samples,
                                                   seed=seed).to_dict()
  except fit.FitError as e:
    report['fits']['L(N, D)'] = {'skipped': str(e)}

  budgets = np.array([r.get('budget') or np.nan for r in done], np.float64)
  if np.isfinite(budgets).any():
    at = np.isfinite(budgets)
    try:
      isoflop = fit.fit_isoflop(budgets[at], columns['N'][at], columns['D'][at], loss[at], samples=samples,
                                seed=seed)
    except fit.FitError as e:
      report['fits']['isoFLOP'] = {'skipped': str(e)}
    else:
      report['fits']['isoFLOP'] = isoflop
      parabolas = {}
      for budget in np.unique(budgets[at]):
        sel = at & (budgets == budget)
        coefficients = np.polyfit(np.log(columns['N'][sel]), loss[sel], 2)
        n_grid = _grid(columns['N'][sel], 50)
        parabolas[budget] = (n_grid, np.polyval(coefficients, np.log(n_grid)))
      path = os.path.join(out_dir, 'isoflop.png')
      plots.plot_isoflop(budgets[at], columns['N'][at], loss[at], isoflop['optima'], path, parabolas=parabolas,
                         title=f'isoFLOP: N* ∝ C^{isoflop["a"]:.2f}, D* ∝ C^{isoflop["b"]:.2f}')
      report['plots'].append(path)

  with atomic_file(os.path.join(out_dir, 'fits.json')) as f:
    json.dump(report, f, indent=1)
  return report


def summary(report: dict[str, Any]) -> str:
  """The fits as a few lines for the terminal."""
  lines = [f"{report['points']} finished points, loss = {report['metric']}"]
  for name, result in report['fits'].items():
    if 'skipped' in result:
      lines.append(f'  {name}: skipped: {result["skipped"]}')
      continue
    ci = result['intervals']
    if name == 'isoFLOP':
      lines.append(f"  N*(C) ∝ C^{result['a']:.3f} [{ci['a'][0]:.3f}, {ci['a'][1]:.3f}], D*(C) ∝ "
                   f"C^{result['b']:.3f} [{ci['b'][0]:.3f}, {ci['b'][1]:.3f}] over {len(result['optima'])} budgets")
    elif name == 'L(N, D)':
      lines.append(f"  L(N, D) = {result['E']:.3g} + {result['A']:.3g}/N^{result['alpha']:.3f} "
                   f"[{ci['alpha'][0]:.3f}, {ci['alpha'][1]:.3f}] + {result['B']:.3g}/D^{result['beta']:.3f} "
                   f"[{ci['beta'][0]:.3f}, {ci['beta'][1]:.3f}] ({result['n_points']} points)")
    else:
      scale = name[2]
      lines.append(f"  {name} = {result['E']:.3g} + {result['A']:.3g}·{scale}^-{result['alpha']:.3f}; "
                   f"α in [{ci['alpha'][0]:.3f}, {ci['alpha'][1]:.3f}], E in [{ci['E'][0]:.3g}, {ci['E'][1]:.3g}] "
                   f"({result['n_points']} points, rms log residual {result['rms_log_residual']:.3g})")
  lines += [f'  plot: {p}' for p in report['plots']]
  return '\n'.join(lines)
