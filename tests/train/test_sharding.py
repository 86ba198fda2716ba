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


@pytest.mark.slow
@pytest.mark.parametrize('stage', ['sync', 'avclip'])
def test_mesh_layouts_give_the_same_losses(stage):
  single, data_parallel, fsdp = _losses(stage, {'data': 1}, {'data': 8}, {'data': 2, 'fsdp': 4})
  assert len(single) == 5 and np.all(np.isfinite(single))
  assert single[-1] != single[0]  # the steps do train
  np.testing.assert_allclose(data_parallel, single, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(fsdp, single, rtol=2e-5, atol=2e-5)
