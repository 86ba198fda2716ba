"""Can the Stage II head learn offsets at all? A probe on simulated tower features.

Stage II trains only the head (projections + global transformer) on the frozen towers' segment tokens. This probe
replaces the towers with features that hold the offset exactly: one Poisson event train per window; every video and
audio token carries the event intensity at its own time along one fixed random direction per modality, plus noise;
the audio tokens' times are shifted by the window's offset. Fresh windows are drawn at every step, so the head cannot
memorise. Correlating the two intensity curves recovers the offset (`cross_correlation_offsets`): a head that does
not learn from these inputs within a budget is not expected to learn from real towers' tokens within it either.

With `beacon_period_sec` the tokens also carry the synthetic clips' dense cue (`data.synthetic`'s beacon): the
cosine and sine of a phase that turns once per period, from a random start, along two more random directions per
modality. That cue is first-order: a head that pools all tokens already sees both streams' phases.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from synchformer_jax import metrics
from synchformer_jax.benchmarks import head_recipes
from synchformer_jax.benchmarks.head_recipes import OFFSETS_SEC, HeadRecipe, token_times
from synchformer_jax.constants import NUM_OFFSET_CLASSES, TARGET_KEY
from synchformer_jax.models import build_model
from synchformer_jax.models.config import ModelConfig
from synchformer_jax.train import trainer
from synchformer_jax.train.optim import make_optimizer


AUDIO_TOKEN_CONTENTS = ('events', 'lagged_video', 'lagged_products')


class SimulatedEvents:
  """Draws windows of simulated segment tokens: {'vfeat' (B, S, Tv, Dv), 'afeat' (B, S, Ta, Da), 'offset_target'}.

  `audio_tokens` other than 'events' are diagnostics that do part of the head's work in the input: with
  'lagged_video' every audio token also carries the video's intensity at its own time plus each offset class's lag,
  along one more random direction per class; with 'lagged_products' it carries instead the products of its own
  intensity with those (the terms of the cross-correlation at every lag), which a head only has to pool.
  """

  def __init__(self, cfg: ModelConfig, *, event_rate_hz: float = 1.5, decay_sec: float = 0.06, noise: float = 0.1,
               beacon_period_sec: float = 0.0, audio_tokens: str = 'events', seed: int = 0):
    if audio_tokens not in AUDIO_TOKEN_CONTENTS:
      raise ValueError(f'SimulatedEvents: audio_tokens must be one of {AUDIO_TOKEN_CONTENTS}, got {audio_tokens!r}')
    self.rng = np.random.default_rng(seed)
    self.video_times, self.audio_times = token_times(cfg)
    self.video_direction = self.rng.standard_normal(cfg.video.dim).astype(np.float32)
    self.audio_direction = self.rng.standard_normal(cfg.audio.dim).astype(np.float32)
    self.video_beacon = self.rng.standard_normal((2, cfg.video.dim)).astype(np.float32)
    self.audio_beacon = self.rng.standard_normal((2, cfg.audio.dim)).astype(np.float32)
    self.lag_directions = np.random.default_rng(seed + 1).standard_normal(
        (NUM_OFFSET_CLASSES, cfg.audio.dim)).astype(np.float32)
    self.event_rate_hz, self.decay_sec, self.noise = event_rate_hz, decay_sec, noise
    self.beacon_period_sec, self.audio_tokens = beacon_period_sec, audio_tokens

  def _intensity(self, times: np.ndarray, events: np.ndarray) -> np.ndarray:
    return np.exp(-np.abs(times[..., None] - events) / self.decay_sec).sum(-1)

  def _events(self, count: int) -> list[np.ndarray]:
    span = (-3.0, self.video_times.max() + 3.0)  # events beyond the window reach it through the offset
    return [self.rng.uniform(*span, self.rng.poisson(self.event_rate_hz * (span[1] - span[0]))) for _ in range(count)]

  def intensities(self, targets: np.ndarray, events: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-token event intensities (B, S, Tv), (B, S, Ta) of windows with the given offset classes."""
    events = self._events(len(targets)) if events is None else events
    video = [self._intensity(self.video_times, e) for e in events]
    audio = [self._intensity(self.audio_times + OFFSETS_SEC[t], e) for t, e in zip(targets, events)]
    return np.stack(video), np.stack(audio)

  def batch(self, size: int) -> dict[str, np.ndarray]:
    targets = self.rng.integers(0, NUM_OFFSET_CLASSES, size)
    events = self._events(size)
    video, audio = self.intensities(targets, events)
    vfeat, afeat = self._embed(video, self.video_direction), self._embed(audio, self.audio_direction)
    if self.audio_tokens != 'events':
      # The video at each audio token's time plus each class's lag: (B, S, Ta, classes).
      lagged = np.stack([self._intensity(self.audio_times[..., None] + OFFSETS_SEC, e) for e in events])
      if self.audio_tokens == 'lagged_products':
        afeat -= audio[..., None] * self.audio_direction  # the products replace the token's own intensity
        lagged = lagged * audio[..., None]
      afeat += (lagged @ self.lag_directions).astype(np.float32)
    if self.beacon_period_sec:
      start = self.rng.uniform(0, self.beacon_period_sec, (size, 1, 1))
      vfeat += self._beacon(start + self.video_times, self.video_beacon)
      afeat += self._beacon(start + self.audio_times + OFFSETS_SEC[targets][:, None, None], self.audio_beacon)
    return {'vfeat': vfeat, 'afeat': afeat, TARGET_KEY['sync']: targets}

  def _beacon(self, times: np.ndarray, directions: np.ndarray) -> np.ndarray:
    phase = 2 * np.pi * times / self.beacon_period_sec
    return (np.cos(phase)[..., None] * directions[0] + np.sin(phase)[..., None] * directions[1]).astype(np.float32)

  def _embed(self, intensity: np.ndarray, direction: np.ndarray) -> np.ndarray:
    tokens = intensity[..., None] * direction
    return (tokens + self.noise * self.rng.standard_normal(tokens.shape)).astype(np.float32)


def cross_correlation_offsets(video: np.ndarray, audio: np.ndarray, cfg: ModelConfig) -> np.ndarray:
  """The offset class whose shift best aligns each window's audio intensity curve with its video curve."""
  video_times, audio_times = token_times(cfg)
  order = np.argsort(audio_times, axis=None)  # overlapping segments interleave their tokens' times
  audio_times, audio = audio_times.ravel()[order], audio.reshape(len(audio), -1)[:, order]
  video = video.reshape(len(video), -1)
  video, audio = video - video.mean(1, keepdims=True), audio - audio.mean(1, keepdims=True)
  scores = []
  for offset in OFFSETS_SEC:  # the audio token at window time t holds what the video shows at t + offset
    shifted = audio_times + offset
    overlap = (video_times.ravel() >= shifted[0]) & (video_times.ravel() <= shifted[-1])
    resampled = np.stack([np.interp(video_times.ravel(), shifted, a) for a in audio])
    scores.append(np.sum(resampled * video * overlap, axis=1) / overlap.sum())
  return np.argmax(np.stack(scores, 1), axis=1)


def cross_correlation_accuracy(cfg: ModelConfig, windows_per_class: int = 20, seed: int = 1) -> float:
  """acc@1 of `cross_correlation_offsets` on simulated windows, every offset class equally often."""
  targets = np.arange(NUM_OFFSET_CLASSES).repeat(windows_per_class)
  video, audio = SimulatedEvents(cfg, seed=seed).intensities(targets)
  return float(np.mean(cross_correlation_offsets(video, audio, cfg) == targets))


@dataclasses.dataclass
class FreshHead:
  """What a head-probe run trains: a fresh model (train mode) initialised by the recipe, the optimiser over its
  head, the simulated windows, the loss and gradients of a batch (`value_and_grad(model, batch)` →
  ((loss, cross-entropy), grads); the recipe's loss, Stage II's cross-entropy by default) and the jitted training
  step (`train_step(model, optimizer, batch)` → the batch's (cross-entropy, loss))."""
  model: nnx.Module
  optimizer: nnx.Optimizer
  windows: SimulatedEvents
  value_and_grad: Callable
  train_step: Callable


def fresh_head(cfg: ModelConfig, optim: ConfigDict, *, steps: int, seed: int = 0, recipe: HeadRecipe = HeadRecipe(),
               **simulation) -> FreshHead:
  cfg = recipe.model_config(cfg)
  model = build_model(cfg, seed)
  head_recipes.initialise(model, cfg, recipe)
  auxiliary = head_recipes.AuxiliaryLosses(cfg, recipe) if recipe.auxiliary else None
  if auxiliary is not None:
    head_recipes.instrument(model)
  model.train()
  head = trainer.trainable(cfg.kind)
  optimizer = nnx.Optimizer(model, make_optimizer(optim, steps), wrt=head)
  value_and_grad = nnx.value_and_grad(
      lambda m, b: head_recipes.loss(m, b, TARGET_KEY[cfg.kind], recipe, auxiliary), argnums=nnx.DiffState(0, head),
      has_aux=True)

  @nnx.jit
  def train_step(model, optimizer, batch):
    (loss, cross_entropy), grads = value_and_grad(model, batch)
    optimizer.update(model, grads)
    return cross_entropy, loss

  return FreshHead(model, optimizer, SimulatedEvents(cfg, seed=seed, **simulation), value_and_grad, train_step)


def train_head(cfg: ModelConfig, optim: ConfigDict, *, steps: int, batch_size: int, eval_every: int,
               eval_windows: int = 256, seed: int = 0, recipe: HeadRecipe = HeadRecipe(),
               **simulation) -> list[dict[str, Any]]:
  """Trains a fresh Stage II head on simulated windows; returns the training cross-entropy (and what the recipe's
  training-only losses and label smoothing add to it) and held-out accuracies every eval_every (held-out windows at
  the simulation's own event rate)."""
  run = fresh_head(cfg, optim, steps=steps, seed=seed, recipe=recipe, **simulation)
  model, windows = run.model, run.windows
  held_out = windows.batch(eval_windows)
  final_rate = windows.event_rate_hz

  @nnx.jit
  def logits(model, batch):  # what an instrumented model sows is dropped
    return nnx.capture(lambda m: m.classify(batch['vfeat'], batch['afeat']), nnx.Intermediate)(model)[0]

  curve, losses, start = [], [], time.perf_counter()
  for step in range(1, steps + 1):
    if recipe.event_rate_steps:
      progress = min(1.0, (step - 1) / recipe.event_rate_steps)
      windows.event_rate_hz = recipe.event_rate_from + (final_rate - recipe.event_rate_from) * progress
    losses.append(run.train_step(model, run.optimizer, windows.batch(batch_size)))
    if step % eval_every == 0 or step == steps:
      model.eval()
      held_out_metrics = metrics.offset_metrics(np.asarray(logits(model, held_out)), held_out[TARGET_KEY['sync']])
      model.train()
      cross_entropy, loss = np.mean(jax.device_get(losses), axis=0)
      curve.append({'step': step, 'loss': float(cross_entropy),
                    **({'auxiliary_loss': float(loss - cross_entropy)} if recipe.auxiliary else {}),
                    'accuracy_1': held_out_metrics['accuracy_1'], 'accuracy_1_tol1': held_out_metrics['accuracy_1_tol1'],
                    'seconds': time.perf_counter() - start})
      losses = []
  return curve
