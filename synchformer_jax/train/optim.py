"""Optimisers and learning-rate schedules as the original trains with them.

Stage I: AdamW (weight decay 0 in the released runs), linear warm-up lr·(step+1)/w, then cosine to 0.
Stage II / III: Adam with eps 1e-7, warm-up factor 0.01 → 1 over `warmup_steps`, then constant.
Both clip the global gradient norm at 1.0. Gradient accumulation (`grad_accum` micro-batches per
optimiser step) happens inside the train step (`trainer.make_trainer`), so schedules count optimiser steps.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

SCHEDULES = ('cosine', 'constant_with_warmup', 'constant')
OPTIMIZERS = ('adamw', 'adam')


def learning_rate_schedule(cfg: ConfigDict, total_steps: int) -> optax.Schedule:
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == 'cosine':  # open_clip's cosine_lr
    def schedule(step):
      step = jnp.asarray(step, jnp.float32)
      warm = lr * (step + 1) / max(warmup, 1)
      progress = (step - warmup) / max(total_steps - warmup, 1)
      return jnp.where(step < warmup, warm, 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(progress, 0, 1))) * lr)
    return schedule
  if cfg.schedule == 'constant_with_warmup':  # torch LinearLR(start_factor=0.01, total_iters=warmup)
    return lambda step: lr * (0.01 + 0.99 * jnp.minimum(jnp.asarray(step, jnp.float32), warmup) / max(warmup, 1))
  if cfg.schedule == 'constant':
    return optax.constant_schedule(lr)
  raise ValueError(f'optim.schedule: expected one of {SCHEDULES}, got {cfg.schedule!r}')


def make_optimizer(cfg: ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """`cfg` is a config's `optim` block."""
  schedule = learning_rate_schedule(cfg, total_steps)
  if cfg.name == 'adamw':
    base = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == 'adam':
    base = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  else:
    raise ValueError(f'optim.name: expected one of {OPTIMIZERS}, got {cfg.name!r}')
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), base) if cfg.clip_norm else base
