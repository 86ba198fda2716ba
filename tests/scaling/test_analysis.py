"""From a results table to fits and plots: scripts/fit_scaling.py on a synthetic sweep with a known law."""
import json
import subprocess
import sys

import numpy as np
import pytest

from synchformer_jax.scaling import analysis, sweep
from tests.conftest import REPO_ROOT

E, A, ALPHA, B, BETA = 1.2, 30.0, 0.4, 60.0, 0.3


def _rows(widths=(1e4, 3e4, 1e5, 3e5, 1e6), clips=(1e3, 3e3, 1e4, 3e4, 1e5), budget=None, noise=0.003):
  rng = np.random.default_rng(0)
  rows = []
  for n in widths:
    for d in clips:
      loss = (E + A * n ** -ALPHA + B * d ** -BETA) * np.exp(rng.normal(0, noise))
      rows.append({'name': f'n{n:g}_d{d:g}', 'status': 'done', 'trainable': n, 'clips_seen': d,
                   'train_flops': 6 * n * d, 'budget': budget, 'final_contrastive_loss': loss})
  return rows


def test_a_sweep_table_gives_each_law_with_intervals_and_plots(tmp_path):
  rows = _rows() + [{'name': 'broken', 'status': 'failed', 'error': 'ValueError: x'}]
  (tmp_path / sweep.RESULTS_JSONL).write_text(''.join(json.dumps(r) + '\n' for r in rows))
  done = subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'fit_scaling.py'), str(tmp_path),
                         '--bootstrap', '50'], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
  assert '25 finished points, loss = final_contrastive_loss' in done.stdout
  report = json.loads((tmp_path / 'fits' / 'fits.json').read_text())
  assert set(report['fits']) == {'L(N)', 'L(D)', 'L(C)', 'L(N, D)'}  # no budgets: no isoFLOP fit
  parametric = report['fits']['L(N, D)']
  lo, hi = parametric['intervals']['alpha']
  assert lo <= ALPHA <= hi and parametric['beta'] == pytest.approx(BETA, abs=0.05)
  # L(N) is fitted to the lowest loss at each N: the largest-data points, whose exponent is the law's α.
  assert report['fits']['L(N)']['n_points'] == 5 and report['fits']['L(N)']['alpha'] == pytest.approx(ALPHA, abs=0.1)
  for name in ('loss_vs_N.png', 'loss_vs_D.png', 'loss_vs_C.png'):
    assert (tmp_path / 'fits' / name).stat().st_size > 10_000


def test_isoflop_budgets_add_the_compute_optimal_fit(tmp_path):
  rows = []
  for budget in (1e10, 1e11, 1e12):
    for n in np.geomspace(3e3, 3e5, 7):
      rows += _rows(widths=(n,), clips=(budget / (6 * n),), budget=budget, noise=0.001)
  report = analysis.analyse(rows, str(tmp_path), samples=40)
  isoflop = report['fits']['isoFLOP']
  assert len(isoflop['optima']) == 3 and isoflop['a'] + isoflop['b'] == pytest.approx(1.0, abs=0.05)
  assert (tmp_path / 'isoflop.png').exists() and 'N*(C) ∝ C^' in analysis.summary(report)


def test_a_law_the_points_cannot_support_is_skipped_with_the_reason(tmp_path):
  report = analysis.analyse(_rows(widths=(1e4, 1e5, 1e6)), str(tmp_path), samples=20)
  assert report['fits']['L(N)'] == {'skipped': 'power law L = E + A·x^-α: needs at least 4 points (3 parameters '
                                                'and one to spare), got 3'}
  assert 'alpha' in report['fits']['L(D)']  # the others still run
  with pytest.raises(sweep.SweepError, match=r"no finished point among 1 \(statuses: \['failed'\]\)"):
    analysis.analyse([{'name': 'x', 'status': 'failed'}], str(tmp_path))
  with pytest.raises(sweep.SweepError, match="metric 'final_loss' missing from point"):
    analysis.analyse(_rows(), str(tmp_path), metric='final_loss')
