"""The same training on 1 device, data-parallel 8 and 2×4 data×fsdp (8 fake CPU devices) gives the same losses."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT


def _losses(stage: str, *meshes: dict) -> list[list[float]]:
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'tests.train.sharded_losses', stage, *map(json.dumps, meshes)],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_same(reference: list[float], *others: list[float]) -> None:
  assert len(reference) == 5 and np.all(np.isfinite(reference))
  assert reference[-1] != reference[0]  # the steps do train
  for losses in others:
    np.testing.assert_allclose(losses, reference, rtol=2e-5, atol=2e-5)


@pytest.mark.slow
def test_stage2_on_one_device_data_parallel_8_and_data_2_fsdp_4():
  _check_same(*_losses('sync', {'data': 1}, {'data': 8}, {'data': 2, 'fsdp': 4}))


@pytest.mark.slow
def test_stage1_sharded_over_data_and_fsdp():
  """Stage I trains both towers: every parameter and its optimiser state is split over fsdp."""
  _check_same(*_losses('avclip', {'data': 1}, {'data': 2, 'fsdp': 4}))
