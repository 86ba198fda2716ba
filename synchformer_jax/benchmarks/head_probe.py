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
from synchformer_jax.constants import (AUDIO_RATE, NUM_OFFSET_CLASSES, OFFSET_GRID, SYNC_SEGMENT_STRIDE_SEC, TARGET_KEY,
                                       VIDEO_FPS)
from synchformer_jax.data.audio import HOP_LENGTH
from synchformer_jax.models import build_model
from synchformer_jax.models.config import ModelConfig
from synchformer_jax.train import trainer
from synchformer_jax.train.optim import make_optimizer

MEL_HOP_SEC = HOP_LENGTH / AUDIO_RATE
OFFSETS_SEC = OFFSET_GRID.astype(np.float64)


def token_times(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
  """Centres, in seconds from the window's start, of the video (S, Tv) and audio (S, Ta) segment tokens."""
  segments = SYNC_SEGMENT_STRIDE_SEC * np.arange(cfg.transformer.n_segments)[:, None]
  tubelet = cfg.video.tubelet
  video = segments + (tubelet * np.arange(cfg.video.time_tokens) + (tubelet - 1) / 2) / VIDEO_FPS
  audio = segments + (cfg.audio.stride * np.arange(cfg.audio.time_tokens) + (cfg.audio.patch - 1) / 2) * MEL_HOP_SEC
  return video, audio


class SimulatedEvents:
  """Draws windows of simulated segment tokens: {'vfeat' (B, S, Tv, Dv), 'afeat' (B, S, Ta, Da), 'offset_target'}."""

  def __init__(self, cfg: ModelConfig, *, event_rate_hz: float = 1.5, decay_sec: float = 0.06, noise: float = 0.1,
               beacon_period_sec: float = 0.0, seed: int = 0):
    self.rng = np.random.default_rng(seed)
    self.video_times, self.audio_times = token_times(cfg)
    self.video_direction = self.rng.standard_normal(cfg.video.dim).astype(np.float32)
    self.audio_direction = self.rng.standard_normal(cfg.audio.dim).astype(np.float32)
    self.video_beacon = self.rng.standard_normal((2, cfg.video.dim)).astype(np.float32)
    self.audio_beacon = self.rng.standard_normal((2, cfg.audio.dim)).astype(np.float32)
    self.event_rate_hz, self.decay_sec, self.noise = event_rate_hz, decay_sec, noise
    self.beacon_period_sec = beacon_period_sec

  def _intensity(self, times: np.ndarray, events: np.ndarray) -> np.ndarray:
    return np.exp(-np.abs(times[..., None] - events) / self.decay_sec).sum(-1)

  def intensities(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token event intensities (B, S, Tv), (B, S, Ta) of windows with the given offset classes."""
    span = (-3.0, self.video_times.max() + 3.0)  # events beyond the window reach it through the offset
    video, audio = [], []
    for target in targets:
      events = self.rng.uniform(*span, self.rng.poisson(self.event_rate_hz * (span[1] - span[0])))
      video.append(self._intensity(self.video_times, events))
      audio.append(self._intensity(self.audio_times + OFFSETS_SEC[target], events))
    return np.stack(video), np.stack(audio)

  def batch(self, size: int) -> dict[str, np.ndarray]:
    targets = self.rng.integers(0, NUM_OFFSET_CLASSES, size)
    video, audio = self.intensities(targets)
    vfeat, afeat = self._embed(video, self.video_direction), self._embed(audio, self.audio_direction)
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
  """What a head-probe run trains: a fresh model (train mode), the optimiser over its head, the simulated windows,
  the loss and gradients of a batch (`value_and_grad(model, batch)`, Stage II's loss) and the jitted training
  step (`train_step(model, optimizer, batch)` → loss)."""
  model: nnx.Module
  optimizer: nnx.Optimizer
  windows: SimulatedEvents
  value_and_grad: Callable
  train_step: Callable


def fresh_head(cfg: ModelConfig, optim: ConfigDict, *, steps: int, seed: int = 0, **simulation) -> FreshHead:
  model = build_model(cfg, seed)
  model.train()
  head = trainer.trainable(cfg.kind)
  optimizer = nnx.Optimizer(model, make_optimizer(optim, steps), wrt=head)
  value_and_grad = nnx.value_and_grad(lambda m, b: trainer.loss_and_metrics(m, b, cfg.kind)[0],
                                      argnums=nnx.DiffState(0, head))

  @nnx.jit
  def train_step(model, optimizer, batch):
    loss, grads = value_and_grad(model, batch)
    optimizer.update(model, grads)
    return loss

  return FreshHead(model, optimizer, SimulatedEvents(cfg, seed=seed, **simulation), value_and_grad, train_step)


def train_head(cfg: ModelConfig, optim: ConfigDict, *, steps: int, batch_size: int, eval_every: int,
               eval_windows: int = 256, seed: int = 0, **simulation) -> list[dict[str, Any]]:
  """Trains a fresh Stage II head on simulated windows; returns the loss and held-out accuracies every eval_every."""
  run = fresh_head(cfg, optim, steps=steps, seed=seed, **simulation)
  model, windows = run.model, run.windows
  held_out = windows.batch(eval_windows)

  @nnx.jit
  def logits(model, batch):
    return model.classify(batch['vfeat'], batch['afeat'])

  curve, losses, start = [], [], time.perf_counter()
  for step in range(1, steps + 1):
    losses.append(run.train_step(model, run.optimizer, windows.batch(batch_size)))
    if step % eval_every == 0 or step == steps:
      model.eval()
      held_out_metrics = metrics.offset_metrics(np.asarray(logits(model, held_out)), held_out[TARGET_KEY['sync']])
      model.train()
      curve.append({'step': step, 'loss': float(np.mean(jax.device_get(losses))),
                    'accuracy_1': held_out_metrics['accuracy_1'], 'accuracy_1_tol1': held_out_metrics['accuracy_1_tol1'],
                    'seconds': time.perf_counter() - start})
      losses = []
  return curve
