"""Prints, as JSON, the losses of 5 train steps of a stage on each given mesh (run with fake CPU devices).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.train.sharded_losses sync '{"data": 1}' '{"data": 8}'
"""
import json
import sys

import jax
import numpy as np

from synchformer_jax import sharding
from synchformer_jax.models import config_for_size
from synchformer_jax.train import trainer
from synchformer_jax.train.config import base_config


def losses(mesh_shape: dict, stage: str, steps: int = 5, batch_size: int = 8) -> list[float]:
  devices = jax.devices()[: int(np.prod([abs(v) for v in mesh_shape.values()]))]
  mesh = sharding.make_mesh(mesh_shape, devices)
  cfg = config_for_size(stage, 'tiny')
  config = base_config(stage)
  graphdef, state, shardings = trainer.create_state(cfg, config.optim, 100, mesh, seed=0)
  steps_fn = trainer.make_trainer(cfg, mesh, graphdef, shardings)
  rng = np.random.default_rng(0)
  s = cfg.transformer.n_segments if stage != 'avclip' else 3
  out = []
  for _ in range(steps):
    if stage == 'avclip':
      batch = {'video': rng.uniform(-1, 1, (batch_size, s, 3, 16, 64, 64)), 'audio': rng.uniform(-1, 1, (batch_size, s, 66, 128))}
    else:
      batch = {'video': rng.uniform(-1, 1, (batch_size, s, 16, 3, 64, 64)), 'audio': rng.uniform(-1, 1, (batch_size, s, 1, 128, 66)),
               'offset_target': rng.integers(0, 21, batch_size)}
    batch = {k: np.asarray(v, np.float32 if v.dtype.kind == 'f' else np.int32) for k, v in batch.items()}
    state, metrics = steps_fn.train_step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
    out.append(float(metrics['loss']))
  return out


if __name__ == '__main__':
  print(json.dumps([losses(json.loads(mesh), sys.argv[1]) for mesh in sys.argv[2:]]))
