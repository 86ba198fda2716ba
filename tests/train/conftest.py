"""Fixtures of the training tests: one small synthetic dataset for all of them."""
import fcntl
import os
from pathlib import Path

import pytest

from synchformer_jax.data import builders

# Clips per split of the shared dataset (the default synthetic spec: 10 s, 256×256); the test split is unused.
TRAIN_CLIPS = 4
VALID_CLIPS = 4


@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory) -> Path:
  """A `synthetic_sync` data directory with TRAIN_CLIPS training and VALID_CLIPS validation clips, built once
  per test run and read (never written) by the training tests of every xdist worker and their subprocesses."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the run's folder, above each worker's own
  data = root / 'synthetic_sync_shared'
  done = data / 'built'
  with open(root / 'synthetic_sync_shared.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one worker builds; another waits for it
    if not done.exists():
      builders.build('synthetic_sync', data_dir=data, split_sizes={'train': TRAIN_CLIPS, 'valid': VALID_CLIPS},
                     num_workers=0)
      done.touch()
  return data
