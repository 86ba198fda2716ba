"""The same training on 1 device, data-parallel 8, 2×4 data×fsdp and 2×2×2 data×fsdp×tensor (8 fake CPU devices)
gives the same losses; parameters carry the PartitionSpecs of their logical axes, tensor splits between heads."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from synchformer_jax import sharding
from synchformer_jax.models import config_for_size
from synchformer_jax.train import trainer
from synchformer_jax.train.config import base_config
from tests.conftest import REPO_ROOT

TENSOR_MESH = {'data': 2, 'fsdp': 2, 'tensor': 2}


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
def test_stage2_on_one_device_data_parallel_8_data_2_fsdp_4_and_with_tensor_2():
  _check_same(*_losses('sync', {'data': 1}, {'data': 8}, {'data': 2, 'fsdp': 4}, TENSOR_MESH))


@pytest.mark.slow
def test_stage1_sharded_over_data_and_fsdp():
  """Stage I trains both towers: every parameter and its optimiser state is split over fsdp."""
  _check_same(*_losses('avclip', {'data': 1}, {'data': 2, 'fsdp': 4}, TENSOR_MESH))


def test_parameters_carry_the_intended_partition_specs():
  mesh = jax.sharding.AbstractMesh((2, 2, 2), sharding.MESH_AXES)  # shardings need no devices
  cfg = config_for_size('sync', 'tiny')
  _, state = trainer.abstract_state(cfg, base_config('sync').optim, 10, mesh)
  specs = {'.'.join(map(str, path)): v.get_value().sharding.spec
           for path, v in nnx.to_flat_state(trainer.model_variables(state))}
  block = 'transformer.blocks.0.'
  assert specs[block + 'attn.qkv.kernel'] == P('fsdp', None, 'tensor')  # (D, q|k|v, heads · head_dim)
  assert specs[block + 'attn.qkv.bias'] == P(None, 'tensor')
  assert specs[block + 'attn.proj.kernel'] == P('tensor', 'fsdp')
  assert specs[block + 'mlp.fc1.kernel'] == P('fsdp', 'tensor') and specs[block + 'mlp.fc2.kernel'] == P('tensor', 'fsdp')
  assert specs['transformer.pos_emb'] == P(None, None, 'fsdp')
  assert specs['vfeat_extractor.blocks.0.norm1.scale'] == P('fsdp')
  # The optimiser's moments are split as their parameters.
  moments = [v.get_value().sharding.spec for path, v in nnx.to_flat_state(state[1])
             if path[-5:] == ('blocks', 0, 'attn', 'qkv', 'kernel') and path[0] == 'opt_state']
  assert len(moments) == 2 and all(spec == P('fsdp', None, 'tensor') for spec in moments)  # Adam's mu and nu


def test_a_tensor_split_of_the_qkv_projection_falls_between_heads():
  """Each device's slice of the q|k|v output holds whole heads of q, of k and of v."""
  from synchformer_jax.models.layers import MultiHeadAttention
  with nnx.use_eager_sharding(False):
    attention = MultiHeadAttention(16, 4, dtype=np.float32, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
  q, k, v = attention.project_qkv(x)  # (2, 5, heads, head_dim)
  kernel, bias = attention.qkv.kernel[...], attention.qkv.bias[...]
  for shard in range(2):  # a 2-way split of the last axis of kernel (16, 3, 16) and bias (3, 16)
    cols = slice(8 * shard, 8 * shard + 8)
    local = np.einsum('bld,dse->blse', x, kernel[:, :, cols]) + bias[:, cols]
    heads = slice(2 * shard, 2 * shard + 2)
    for i, part in enumerate((q, k, v)):
      np.testing.assert_allclose(local[:, :, i].reshape(2, 5, 2, 4), part[:, :, heads], rtol=1e-5, atol=1e-6)
