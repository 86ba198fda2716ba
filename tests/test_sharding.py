"""Device placement of batches: every process's local rows become one global array split over the batch axes."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

from synchformer_jax import sharding
from tests.conftest import REPO_ROOT


def test_global_batch_on_this_process_devices():
  mesh = sharding.make_mesh({'data': -1})
  batch = {'video': np.arange(4 * len(jax.devices()) * 3).reshape(-1, 3), 'mask': np.ones(4 * len(jax.devices()), bool)}
  arrays = sharding.to_global_batch(batch, mesh)
  assert arrays['video'].sharding.spec == jax.sharding.PartitionSpec(sharding.BATCH_AXES)
  np.testing.assert_array_equal(np.asarray(arrays['video']), batch['video'])


def test_global_batch_splits_the_batch_over_data_and_fsdp():
  # Four host devices need a fresh JAX, hence a subprocess.
  code = textwrap.dedent(
      """
      import numpy as np
      from synchformer_jax import sharding
      mesh = sharding.make_mesh({'data': 2, 'fsdp': 2})
      arrays = sharding.to_global_batch({'x': np.arange(16).reshape(8, 2)}, mesh)
      rows = sorted((s.device.id, s.data[:, 0].tolist()) for s in arrays['x'].addressable_shards)
      assert arrays['x'].shape == (8, 2) and rows == [(0, [0, 2]), (1, [4, 6]), (2, [8, 10]), (3, [12, 14])], rows
      """
  )
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4', 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run([sys.executable, '-c', code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
