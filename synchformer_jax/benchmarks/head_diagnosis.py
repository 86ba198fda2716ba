"""Why does a fresh Stage II head sit at chance? Measurements of the head while it trains on the probe's windows.

At chosen steps of a head-probe run (`head_probe.train_head`'s model, optimiser and simulated windows) it records:
- where the OFF token attends in each layer: the attention entropy over the 198 tokens (1 = uniform) and the
  share of its attention on OFF, video, MOD and audio tokens;
- the gradient norm of each parameter group (positional table, OFF/MOD tokens, input norms, projections, each
  block, final norm and head) on a training batch;
- the scales the first block sees: the positional table's rows against the projected, normalised tokens;
- whether anything about the offset reaches the head: how much the logits vary between windows against how much
  they vary between classes, and held-out acc@1 of ridge probes on the OFF token's final feature and on the
  logits (a probe at chance: no offset signal reaches the head's input).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from synchformer_jax.benchmarks import head_probe
from synchformer_jax.constants import NUM_OFFSET_CLASSES, TARGET_KEY
from synchformer_jax.models.config import ModelConfig


def parameter_group(path: Sequence[Any]) -> str:
  """The group a head parameter belongs to, by its path in the model."""
  names = [str(p) for p in path]
  if names[0] in ('vproj', 'aproj'):
    return 'projections'
  inner = names[1] if names[0] == 'transformer' else names[0]
  if inner == 'blocks':
    return f'block {names[2]}'
  return {'pos_emb': 'positional table', 'OFF_tok': 'OFF/MOD tokens', 'MOD_tok': 'OFF/MOD tokens',
          'vis_in_lnorm': 'input norms', 'aud_in_lnorm': 'input norms'}.get(inner, 'final norm and head')


def ridge_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                         ridge: float = 1e-2) -> float:
  """Held-out acc@1 of a ridge regression onto one-hot classes (features standardised on the training set)."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  a, b = (train_x - mean) / std, (test_x - mean) / std
  a, b = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
  weights = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ np.eye(NUM_OFFSET_CLASSES)[train_y])
  return float(np.mean(np.argmax(b @ weights, axis=1) == test_y))


def _instrumented(model: nnx.Module) -> nnx.Module:
  """A copy sharing the model's arrays that sows its global transformer's attention and the OFF feature."""
  graphdef, state = nnx.split(model)
  copy = nnx.merge(graphdef, state)
  copy.transformer.sow_off_feature = True
  for block in copy.transformer.blocks:
    block.attn.sow_attention = True
  return copy


def _readouts(model: nnx.Module, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Logits, the OFF token's final feature and each layer's attention (eval mode)."""
  instrumented = _instrumented(model)
  instrumented.eval()

  @jax.jit
  def run(state, vfeat, afeat):
    m = nnx.merge(nnx.graphdef(instrumented), state)
    logits, sown = nnx.capture(lambda m, v, a: m.classify(v, a), nnx.Intermediate)(m, vfeat, afeat)
    flat = {'.'.join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(sown)}
    return logits, flat

  logits, sown = run(nnx.state(instrumented), batch['vfeat'], batch['afeat'])
  attention = [np.asarray(sown[k][0]) for k in sorted(k for k in sown if k.endswith('attention_weights'))]
  feature = np.asarray(next(v for k, v in sown.items() if k.endswith('off_feature'))[0])
  return {'logits': np.asarray(logits), 'off_feature': feature, 'attention': attention}


def _token_slices(cfg: ModelConfig) -> dict[str, slice]:
  video = cfg.transformer.n_segments * cfg.video.time_tokens
  return {'OFF': slice(0, 1), 'video': slice(1, 1 + video), 'MOD': slice(1 + video, 2 + video),
          'audio': slice(2 + video, cfg.num_positions)}


def snapshot(cfg: ModelConfig, model: nnx.Module, grads: nnx.State, probe_fit: dict[str, np.ndarray],
             probe_test: dict[str, np.ndarray]) -> dict[str, Any]:
  """The measurements of one moment of training (see the module docstring)."""
  fit, test = _readouts(model, probe_fit), _readouts(model, probe_test)
  target = TARGET_KEY['sync']
  layers = []
  for weights in test['attention']:  # (B, heads, L, L): the OFF token's row
    off = weights[:, :, 0, :].astype(np.float64)
    entropy = -(off * np.log(off + 1e-30)).sum(-1) / np.log(off.shape[-1])
    layers.append({'off_entropy': float(entropy.mean()),
                   **{f'off_to_{name}': float(off[..., part].sum(-1).mean())
                      for name, part in _token_slices(cfg).items()}})
  norms: dict[str, float] = {}
  for path, value in nnx.to_flat_state(grads):
    group = parameter_group(path)
    norms[group] = norms.get(group, 0.0) + float(jnp.sum(jnp.square(value.get_value())))
  transformer = model.transformer
  tokens = np.asarray(transformer.vis_in_lnorm(model.vproj(jnp.asarray(probe_test['vfeat'][:8]))))
  logits = test['logits']
  return {
      'attention': layers,
      'grad_norm': {group: float(np.sqrt(v)) for group, v in sorted(norms.items())},
      'positional_row_norm': float(np.linalg.norm(np.asarray(transformer.pos_emb[...])[0, 1:], axis=-1).mean()),
      'token_norm_after_input_norm': float(np.linalg.norm(tokens, axis=-1).mean()),
      'off_token_norm': float(np.linalg.norm(np.asarray(transformer.OFF_tok[...]))),
      # Spread of each class's logit over windows, against the spread of the classes' mean logits.
      'logit_std_over_windows': float(logits.std(0).mean()),
      'logit_std_over_classes': float(logits.mean(0).std()),
      'probe_acc_off_feature': ridge_probe_accuracy(fit['off_feature'], probe_fit[target], test['off_feature'],
                                                    probe_test[target]),
      'probe_acc_logits': ridge_probe_accuracy(fit['logits'], probe_fit[target], logits, probe_test[target]),
      'acc_1': float(np.mean(np.argmax(logits, 1) == probe_test[target])),
  }


def diagnose(cfg: ModelConfig, optim: ConfigDict, *, steps: int, batch_size: int, at_steps: Sequence[int],
             probe_windows: int = 1024, seed: int = 0, **simulation) -> list[dict[str, Any]]:
  """Trains a fresh head as `head_probe.train_head` does and takes a `snapshot` before the steps in `at_steps`
  (0: at initialisation), with the running training loss."""
  run = head_probe.fresh_head(cfg, optim, steps=steps, seed=seed, **simulation)
  model, windows = run.model, run.windows
  probe_fit, probe_test = windows.batch(probe_windows), windows.batch(probe_windows)
  gradients = nnx.jit(lambda model, batch: run.value_and_grad(model, batch)[1])

  rows, losses, start = [], [], time.perf_counter()
  wanted = sorted(set(at_steps))
  for step in range(steps + 1):
    if step in wanted:
      batch = windows.batch(batch_size)
      row = snapshot(cfg, model, gradients(model, batch), probe_fit, probe_test)
      rows.append({'step': step, 'train_loss': float(np.mean(losses)) if losses else None,
                   'seconds': time.perf_counter() - start, **row})
      losses = []
      model.train()
    if step < steps:
      losses.append(float(run.train_step(model, run.optimizer, windows.batch(batch_size))[0]))
  return rows
