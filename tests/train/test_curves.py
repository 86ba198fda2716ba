"""A run's metric log read back, and scripts/plot_curves.py drawing every run into one PNG."""
import json
import subprocess
import sys

import matplotlib.image
import pytest

from synchformer_jax.train import metric_log
from tests.conftest import REPO_ROOT


def _workdir(tmp_path, name: str, steps: int = 40):
  workdir = tmp_path / name
  workdir.mkdir()
  lines = [{'step': s, 'loss': 3.0 - s / steps, 'accuracy': s / steps} for s in range(1, steps + 1)]
  lines += [{'step': s, 'eval/accuracy_1': s / steps / 2, 'eval/accuracy_1_tol1': s / steps} for s in (20, 40)]
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))
  return workdir


def test_read_metrics_splits_training_and_evaluation_records(tmp_path):
  train, evals = metric_log.read_metrics(str(_workdir(tmp_path, 'run')))
  assert [r['step'] for r in train] == list(range(1, 41))
  assert [r['step'] for r in evals] == [20, 40] and evals[1]['eval/accuracy_1_tol1'] == 1.0
  with pytest.raises(FileNotFoundError, match='no metrics.jsonl'):
    metric_log.read_metrics(str(tmp_path))


def test_script_draws_every_run(tmp_path):
  out = tmp_path / 'curves.png'
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'plot_curves.py'),
                         '--run', f'Stage I={_workdir(tmp_path, "a")}', '--run', f'Stage II={_workdir(tmp_path, "b")}',
                         '--chance', 'Stage II=3.045', '--out', str(out)], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  image = matplotlib.image.imread(str(out))
  assert image.shape[0] > image.shape[1] / 2 and image[..., :3].std() > 0.05  # two rows of panels, not blank
  bad = subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'plot_curves.py'), '--run', 'no-equals-sign',
                        '--out', str(out)], capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "expected LABEL=VALUE" in bad.stderr
