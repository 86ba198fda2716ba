"""The inference issue's acceptance test: a Stage II model trained on the synthetic dataset recovers known offsets.

`tests/fixtures/sync_synthetic_tiny/` holds the model that the default configs trained (its README gives the
commands). The clips here are new: rendered from seeds the dataset builder never uses. predict.py applies the offsets,
as `--offset_sec` does, and an untrained model of the same size on the same rows shows what chance looks like.
"""
import csv
import json

import numpy as np
import pytest

from synchformer_jax.data import synthetic
from tests.conftest import REPO_ROOT, require_fixture
from tests.inference.conftest import run_script

TRAINED = REPO_ROOT / 'tests' / 'fixtures' / 'sync_synthetic_tiny'
OFFSETS_SEC = (-2.0, -1.4, -0.8, -0.2, 0.0, 0.4, 1.0, 1.6, 2.0)
V_START_SEC = 2.5  # leaves room for the audio window at every offset in a 10-s clip
CLASS_SEC = 0.2


@pytest.fixture(scope='module')
def trained_dir():
  return require_fixture(TRAINED, 'the Stage II model trained on synthetic_sync')


@pytest.fixture(scope='module')
def new_clips(tmp_path_factory):
  root = tmp_path_factory.mktemp('new_clips')
  paths = []
  for i in range(3):
    data, _ = synthetic.generate_clip(synthetic.SyntheticSpec(), seed=(2026, 11, i))  # builder seeds: (seed, 0..2, i)
    paths.append(root / f'clip{i}.mp4')
    paths[-1].write_bytes(data)
  return paths


def _predict_rows(checkpoint, clips, script_env, tmp_path) -> list[dict]:
  """predict.py's batch results for every clip at every offset in OFFSETS_SEC."""
  listing, out = tmp_path / f'{checkpoint.name}_rows.csv', tmp_path / f'{checkpoint.name}_results.csv'
  with open(listing, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(('path', 'offset_sec', 'v_start_sec'))
    writer.writerows([(clip, offset, V_START_SEC) for clip in clips for offset in OFFSETS_SEC])
  proc = run_script('predict.py', '--checkpoint', checkpoint, '--csv', listing, '--out', out, '--no-sliding',
                    env=script_env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = list(csv.DictReader(open(out)))
  assert len(rows) == len(clips) * len(OFFSETS_SEC) and not any(row['error'] for row in rows)
  return rows


@pytest.fixture(scope='module')
def trained_rows(trained_dir, new_clips, script_env, tmp_path_factory) -> list[dict]:
  return _predict_rows(trained_dir, new_clips, script_env, tmp_path_factory.mktemp('trained_rows'))


def _errors_in_classes(rows) -> np.ndarray:
  return np.array([abs(float(r['pred_offset_sec']) - float(r['offset_sec'])) / CLASS_SEC for r in rows]).round()


def test_trained_model_recovers_applied_offsets_and_an_untrained_one_does_not(trained_rows, tiny_sync_dir, new_clips,
                                                                              script_env, tmp_path):
  trained = _errors_in_classes(trained_rows)
  untrained = _errors_in_classes(_predict_rows(tiny_sync_dir, new_clips, script_env, tmp_path))
  # 27 windows; on the synthetic test split this model gets acc@1 70 %, ±1 class 100 % (BENCHMARKS.md).
  assert np.mean(trained <= 1) >= 0.85, trained
  assert np.median(trained) <= 1, trained
  assert np.mean(untrained <= 1) <= 0.4, untrained


def test_offset_sec_flag_gives_the_batch_rows_prediction(trained_dir, trained_rows, new_clips, script_env):
  proc = run_script('predict.py', '--checkpoint', trained_dir, '--video', new_clips[0], '--offset_sec', 1.0,
                    '--v_start_sec', V_START_SEC, '--json', env=script_env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  single = json.loads(proc.stdout)
  row = next(r for r in trained_rows if r['path'] == str(new_clips[0]) and float(r['offset_sec']) == 1.0)
  assert single['applied_offset_sec'] == 1.0
  assert single['top_k'][0]['class'] == int(row['pred_class'])
  np.testing.assert_allclose(single['top_k'][0]['prob'], float(row['prob']), atol=1e-5)
