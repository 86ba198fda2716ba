"""The benchmarks of `scripts/benchmark.py`: each returns a JSON-able record of what it measured."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from synchformer_jax import pretrained, sharding
from synchformer_jax.benchmarks import head_diagnosis as head_diagnosis_lib
from synchformer_jax.benchmarks import head_probe as head_probe_lib
from synchformer_jax.benchmarks import head_recipes
from synchformer_jax.benchmarks.harness import (batch_shapes, peak_rss_gib, random_batch, time_calls, time_compiled,
                                              torch_op_profile, xla_analyses)
from synchformer_jax.benchmarks.hlo_flops import matmul_flops
from synchformer_jax.conversion.convert import read_source, to_original_state_dict
from synchformer_jax.errors import InputError
from synchformer_jax.inference import executor
from synchformer_jax.models import build_model, stored_variables
from synchformer_jax.models.config import ModelConfig, SparseSyncConfig, config_for_size
from synchformer_jax.models.flops import forward_flops
from synchformer_jax.train import input_pipeline, trainer
from synchformer_jax.train.config import base_config
from synchformer_jax.train.mfu import flops_and_mfu, train_step_flops


def _random_eval_model(cfg: ModelConfig, seed: int) -> nnx.Module:
  # Created as a training run creates it (one compiled initialisation: eagerly, SparseSync's many kernel shapes
  # would each compile their own).
  model = sharding.create_sharded(lambda: build_model(cfg, seed), sharding.make_mesh({'data': 1}, jax.devices()[:1]))
  model.eval()
  return model


def stage2_forward(cfg: ModelConfig, batch: int = 1, repeats: int = 3, seed: int = 0,
                   model_dir: str | None = None, profile: bool = False) -> dict[str, Any]:
  """Times a Stage II (or synchronizability, or SparseSync) eval forward on random inputs of the config's shapes,
  on the engine inference chooses (`inference.executor`: XLA, AOT-compiled; or torch kernels, traced at the
  first call, whose time is reported as `first_call_s`). The model is random, or with `model_dir` the stored
  one loaded as users load it (`synchformer_jax.load`; its config must be `cfg`, the dtype aside). `profile`
  adds one profiled call's top operations (`harness.torch_op_profile`; the torch engine only).

  At batch 1 this is the inference latency of one window (14 segments: 4.8 s of video; SparseSync: one 5 s clip).
  """
  if model_dir is None:
    model = _random_eval_model(cfg, seed)
  else:
    _, stored_cfg = pretrained.read_config(model_dir)
    if stored_cfg.replace(dtype=cfg.dtype) != cfg:
      raise InputError(f'--model_dir {model_dir}: its model is not the {cfg.kind} model of --stage/--size')
    model = pretrained.load(model_dir, dtype=cfg.dtype)
  graphdef, state = nnx.split(model)
  del model
  inputs = random_batch(cfg, batch, seed)

  def forward(state, video, audio):
    return nnx.merge(graphdef, state)(video, audio)[0]

  args = (state, jnp.asarray(inputs['video']), jnp.asarray(inputs['audio']))
  call = executor.ModelCall(forward)
  engine = call.engine(*args)
  if profile and engine != 'torch':
    raise InputError('--profile: only the torch engine is profiled (--executor torch, or bfloat16 on an AMX CPU)')
  if engine == 'xla':
    result = time_compiled(forward, *args, repeats=repeats)
  else:
    start = time.perf_counter()
    jax.block_until_ready(call(*args))
    result = {'first_call_s': time.perf_counter() - start, **time_calls(lambda: call(*args), repeats, warmup=0)}
    if profile:
      result['profile'] = torch_op_profile(lambda: call(*args))
  return {'engine': engine, **result, **flops_and_mfu(forward_flops(cfg)['total'] * batch, result['steady_s_median']),
          'peak_rss_gib': peak_rss_gib()}


def original_forward(cfg: ModelConfig, batch: int = 1, repeats: int = 3, seed: int = 0,
                     checkpoint: str | None = None, profile: bool = False) -> dict[str, Any]:
  """Times the PyTorch mirror of the original Stage II forward (`torch_mirror`) on the same random model as
  `stage2_forward`, exported to the original's state dict, or with `checkpoint` on an original Stage II
  checkpoint file (then no JAX model is built: the process holds what the original's would). `cfg.dtype`
  bfloat16 runs it under torch's CPU autocast, as the original's mixed-precision evaluation does. `profile` adds
  one profiled call's top operations."""
  import torch  # optional dependency: only this benchmark and the torch executor need it
  from synchformer_jax.benchmarks.torch_mirror import MirrorSizes, SynchformerMirror
  if cfg.kind != 'sync':
    raise ValueError('original-forward: the mirror is of the Stage II (sync) model')
  if checkpoint is None:
    params = {k: v.get_value() for k, v in stored_variables(_random_eval_model(cfg, seed)).items()}
    arrays = to_original_state_dict('sync', cfg, params)
    del params
  else:
    source = read_source(checkpoint)
    if source.kind != 'sync':
      raise InputError(f'--checkpoint {checkpoint}: expected an original Stage II (sync) checkpoint, '
                       f'found {source.kind}')
    arrays = source.state_dict
  state_dict = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
  del arrays
  mirror = SynchformerMirror(state_dict, MirrorSizes(cfg.video.heads, cfg.audio.heads, cfg.transformer.heads))
  inputs = random_batch(cfg, batch, seed)
  video, audio = torch.from_numpy(inputs['video']), torch.from_numpy(inputs['audio'])

  def call():
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=cfg.dtype == 'bfloat16'):
      return mirror(video, audio)['logits']

  start = time.perf_counter()
  call()
  result = {'engine': f'pytorch mirror, {torch.get_num_threads()} threads', 'first_call_s': time.perf_counter() - start,
            **time_calls(call, repeats, warmup=0)}
  if profile:
    result['profile'] = torch_op_profile(call)
  return {**result, **flops_and_mfu(forward_flops(cfg)['total'] * batch, result['steady_s_median']),
          'peak_rss_gib': peak_rss_gib()}


def train_step(cfg: ModelConfig, batch: int, repeats: int = 3, seed: int = 0, warmup: int = 1) -> dict[str, Any]:
  """Times the real jitted train step (optimiser update, donated state) on one device, random data.

  With `warmup=0` the first step is timed too (it adds first-call allocations): for steps of minutes.
  """
  config = base_config(cfg.kind)
  mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  graphdef, state, state_shardings = trainer.create_state(cfg, config.optim, config.total_steps, mesh, seed)
  steps = trainer.make_trainer(cfg, mesh, graphdef, state_shardings)
  data = jax.device_put(random_batch(cfg, batch, seed), sharding.batch_sharding(mesh))
  start = time.perf_counter()
  compiled = steps.train_step.lower(state, data).compile()
  compile_s = time.perf_counter() - start

  def step():
    nonlocal state
    state, metrics = compiled(state, data)
    return state, metrics

  result = {'compile_s': compile_s, **xla_analyses(compiled)}
  try:
    timing = time_calls(step, repeats, warmup)
  except jax.errors.JaxRuntimeError as error:  # e.g. out of memory: the analyses above still say why
    return {**result, 'error': str(error).splitlines()[0], 'peak_rss_gib': peak_rss_gib()}
  return {**result, **timing, 'clips_per_s': batch / timing['steady_s_median'],
          **flops_and_mfu(train_step_flops(cfg, batch), timing['steady_s_median']), 'peak_rss_gib': peak_rss_gib()}


def forward_flops_check(cfg: ModelConfig, batch: int = 1) -> dict[str, Any]:
  """The analytic forward FLOPs by part next to XLA's count of the same forward (lowered from abstract
  parameters: nothing is allocated or compiled, so this is cheap at full size)."""
  model = nnx.eval_shape(lambda: build_model(cfg))
  model.eval()
  graphdef, state = nnx.split(model)
  inputs = batch_shapes(cfg, batch)
  lowered = jax.jit(lambda state, video, audio: nnx.merge(graphdef, state)(video, audio)[0]).lower(
      state, inputs['video'], inputs['audio'])
  cost = lowered.cost_analysis()
  xla = float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])
  xla_matmul = matmul_flops(lowered.as_text(dialect='hlo'))
  analytic = {part: flops * batch for part, flops in forward_flops(cfg).items()}
  video = 'vfeat_extractor' if cfg.kind == 'sparsesync' else 'video'
  return {'analytic_flops': analytic, 'xla_flops': xla, 'xla_matmul_flops': xla_matmul,
          'xla_over_analytic': xla / analytic['total'], 'xla_matmul_over_analytic': xla_matmul / analytic['total'],
          'video_share': analytic[video] / analytic['total']}


def loader_throughput(batches, n_batches: int, batch_size: int) -> dict[str, Any]:
  """Clips/s of an iterator of batches, after its first batch (worker start-up) is taken."""
  iterator = iter(batches)
  start = time.perf_counter()
  next(iterator)
  first_batch_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(n_batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  return {'first_batch_s': first_batch_s, 'clips_per_s': n_batches * batch_size / elapsed,
          'load_average_1min': os.getloadavg()[0], 'peak_rss_gib': peak_rss_gib()}


def loader_benchmark(stage: str, size: str, batch: int, workers: int, n_batches: int, data_dir: str) -> dict[str, Any]:
  """`loader_throughput` of a stage's training pipeline on synthetic_sync (built under `data_dir` if absent)."""
  config = base_config(stage)
  config.update(batch_size=batch)
  config.model.size = size
  config.data.update(dir=data_dir, workers=workers)
  sources = input_pipeline.open_sources(config)
  batches = input_pipeline.train_batches(config, config_for_size(stage, size), sources['train'])
  return loader_throughput(batches, n_batches, batch)


def _probe_setup(cfg: ModelConfig, learning_rate: float, layers: int | None) -> tuple[ModelConfig, Any]:
  """The head probe's model (with `layers` global transformer layers) and Stage II's optimiser at `learning_rate`."""
  if layers is not None:
    cfg = cfg.replace(transformer=dataclasses.replace(cfg.transformer, layers=layers))
  optim = base_config('sync').optim
  optim.learning_rate = learning_rate
  return cfg, optim


def head_diagnosis(cfg: ModelConfig, batch: int, at_steps: list[int], learning_rate: float,
                   layers: int | None) -> dict[str, Any]:
  """What the OFF token reads, the gradients and the scales at `at_steps` of a head-probe run (`head_diagnosis`)."""
  cfg, optim = _probe_setup(cfg, learning_rate, layers)
  rows = head_diagnosis_lib.diagnose(cfg, optim, steps=max(at_steps), batch_size=batch, at_steps=at_steps)
  return {'layers': cfg.transformer.layers, 'learning_rate': learning_rate, 'snapshots': rows,
          'peak_rss_gib': peak_rss_gib()}


def head_probe(cfg: ModelConfig, batch: int, steps: int, learning_rate: float, layers: int | None,
               beacon_period_sec: float = 0.0, recipe: str = '', seed: int = 0,
               audio_tokens: str = 'events') -> dict[str, Any]:
  """Trains the Stage II head alone on simulated event features (`benchmarks.head_probe`) with Stage II's optimiser,
  under a `HeadRecipe` given as 'field=value,...' ('': the original recipe)."""
  cfg, optim = _probe_setup(cfg, learning_rate, layers)
  head_recipe = head_recipes.parse(recipe)
  curve = head_probe_lib.train_head(cfg, optim, steps=steps, batch_size=batch, eval_every=max(1, steps // 12),
                                    seed=seed, recipe=head_recipe, beacon_period_sec=beacon_period_sec,
                                    audio_tokens=audio_tokens)
  passed = [row['step'] for row in curve if row['accuracy_1'] >= 0.5]
  return {'layers': cfg.transformer.layers, 'learning_rate': learning_rate, 'beacon_period_sec': beacon_period_sec,
          'recipe': dataclasses.asdict(head_recipe), 'seed': seed, 'audio_tokens': audio_tokens, 'steps': steps,
          'first_step_acc1_50': passed[0] if passed else None, 'curve': curve,
          'final': curve[-1] if curve else None,
          'cross_correlation_accuracy_1': head_probe_lib.cross_correlation_accuracy(cfg), 'peak_rss_gib': peak_rss_gib()}
