"""MFU's inputs: the analytic FLOPs of a train step against the dots of the step XLA compiles, and device peaks."""
import types

import jax
import pytest

from synchformer_jax import sharding
from synchformer_jax.benchmarks.compile_for import abstract_batch
from synchformer_jax.benchmarks.harness import random_batch
from synchformer_jax.benchmarks.hlo_flops import matmul_flops
from synchformer_jax.models import flops
from synchformer_jax.models.config import config_for_size
from synchformer_jax.train import mfu, trainer
from synchformer_jax.train.config import base_config


@pytest.mark.parametrize('kind', ['avclip', 'sync'])
def test_train_step_flops_are_the_dots_of_the_real_step(kind):
  """Stage I: forward and backward of both towers; Stage II: the frozen towers' forward and the head's three."""
  cfg = config_for_size(kind, 'tiny')
  # On CPU whatever the host has: a GPU's JAX may lower the attention to a fused kernel, whose dots HLO hides.
  mesh = sharding.make_mesh({'data': 1}, jax.devices('cpu')[:1])
  graphdef, state, shardings = trainer.create_state(cfg, base_config(kind).optim, 10, mesh, seed=0)
  steps = trainer.make_trainer(cfg, mesh, graphdef, shardings)
  batch = jax.device_put(random_batch(cfg, 2), sharding.batch_sharding(mesh))
  xla = matmul_flops(steps.train_step.lower(state, batch).as_text(dialect='hlo'))
  # A backward costs twice its forward, but for the gradient of the input frames and spectrograms, which no step
  # computes: in Stage I the patch embeddings' input side is one forward's worth less than the count.
  v, a = cfg.video, cfg.audio
  embeddings = (flops.linear(v.time_tokens * v.grid ** 2, 3 * v.tubelet * v.patch ** 2, v.dim)
                + flops.linear(a.freq_tokens * a.time_tokens, a.patch ** 2, a.dim))
  unneeded = 2 * cfg.transformer.n_segments * embeddings if kind == 'avclip' else 0
  assert xla == pytest.approx(mfu.train_step_flops(cfg, 2) - unneeded, rel=0.005)  # measured: 0.15 % / 0.24 % off


def test_peak_flops_by_device_kind():
  assert mfu.peak_flops_per_device(types.SimpleNamespace(device_kind='TPU v5p')) == 459e12
  # What v5p and v5e devices report (libtpu's topology devices, as on the chips).
  assert mfu.peak_flops_per_device(types.SimpleNamespace(device_kind='TPU v5')) == 459e12
  assert mfu.peak_flops_per_device(types.SimpleNamespace(device_kind='TPU v5 lite')) == 197e12
  assert mfu.peak_flops_per_device(types.SimpleNamespace(device_kind='NVIDIA H100 80GB HBM3')) == 989e12
  assert mfu.peak_flops_per_device(types.SimpleNamespace(device_kind='cpu')) is None


def test_mfu_is_achieved_flops_over_the_peak(monkeypatch):
  monkeypatch.setattr(mfu, 'peak_flops_per_device', lambda device=None: 100e12)
  assert mfu.flops_and_mfu(50e12, 2.0) == {'analytic_flops': 50e12, 'achieved_tflops_per_s': 25.0, 'mfu': 0.25}
  monkeypatch.setattr(mfu, 'peak_flops_per_device', lambda device=None: None)
  assert mfu.flops_and_mfu(50e12, 2.0)['mfu'] is None


def test_a_step_on_precomputed_features_counts_the_dots_of_the_head_alone():
  config = base_config('sync')
  config.data.precomputed_windows = 1
  cfg = config_for_size('sync', 'tiny')
  mesh = sharding.make_mesh({'data': 1}, jax.devices('cpu')[:1])
  graphdef, state, shardings = trainer.create_state(cfg, config.optim, 10, mesh, seed=0)
  steps = trainer.make_trainer(cfg, mesh, graphdef, shardings)
  xla = matmul_flops(steps.train_step.lower(state, abstract_batch(config, cfg, 2, mesh)).as_text(dialect='hlo'))
  # The features are inputs: the first projections need no gradient of them (one forward's worth less).
  tr = cfg.transformer
  unneeded = 2 * tr.n_segments * (flops.linear(cfg.video.time_tokens, cfg.video.dim, tr.dim)
                                  + flops.linear(cfg.audio.time_tokens, cfg.audio.dim, tr.dim))
  assert xla == pytest.approx(mfu.train_step_flops(cfg, 2, frozen_towers_run=False) - unneeded, rel=0.005)
