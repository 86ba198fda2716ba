"""PNG figures of predictions, evaluations, attributions and training runs (matplotlib, Agg backend).

Every function writes its figure to `path` and returns it (closed: its artists stay readable), so what a
figure shows can be checked.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402


def save_figure(fig, path: str, dpi: int = 100):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi, bbox_inches='tight')
  plt.close(fig)
  return fig


def plot_offset_curve(curve, path: str, title: str = '') -> plt.Figure:
  """The offset over time: each window's distribution (shade), its top offset (dots) and the consensus."""
  probs = curve.probs
  centres = curve.start_sec + curve.window_sec / 2
  step = np.diff(curve.offsets_sec).mean()
  half = (centres[1] - centres[0]) / 2 if len(centres) > 1 else curve.window_sec / 2
  fig, ax = plt.subplots(figsize=(9, 4))
  image = ax.imshow(probs.T, origin='lower', aspect='auto', cmap='Greys', vmin=0, vmax=1,
                    extent=(centres[0] - half, centres[-1] + half, curve.offsets_sec[0] - step / 2,
                            curve.offsets_sec[-1] + step / 2))
  fig.colorbar(image, ax=ax, label='probability')
  ax.plot(centres, curve.offset_sec, 'o-', color='tab:red', label='top offset of the window')
  ax.axhline(curve.applied_offset_sec, color='tab:green', ls=':', label=f'applied {curve.applied_offset_sec:+.2f} s')
  consensus = curve.consensus
  ax.axhline(consensus.offset_sec, color='tab:blue', ls='--',
             label=f'consensus {consensus.offset_sec:+.2f} s (p={consensus.prob:.2f})')
  ax.set_xlabel(f'window centre (s; each window {curve.window_sec:.2f} s of video)')
  ax.set_ylabel('offset (s; + = audio early)')
  ax.set_title(title or f'offset over time (applied {curve.applied_offset_sec:+.2f} s)')
  ax.legend(loc='upper right', fontsize=8)
  return save_figure(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: str, title: str = '') -> plt.Figure:
  """Row-normalised confusion matrix (rows: targets), with counts in the cells."""
  matrix = np.asarray(matrix)
  rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  size = max(4.0, 0.45 * len(labels))
  fig, ax = plt.subplots(figsize=(size + 1.5, size))
  image = ax.imshow(rates, cmap='Blues', vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, label='share of the target class')
  for (i, j), count in np.ndenumerate(matrix):
    if count:
      ax.text(j, i, str(count), ha='center', va='center', fontsize=6,
              color='white' if rates[i, j] > 0.5 else 'black')
  ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
  ax.set_yticks(range(len(labels)), labels, fontsize=7)
  ax.set_xlabel('predicted')
  ax.set_ylabel('target')
  ax.set_title(title)
  return save_figure(fig, path)


def plot_roc(roc: dict[str, Any], auc: float, path: str, title: str = '') -> plt.Figure:
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.plot(roc['fpr'], roc['tpr'], color='tab:blue', label=f'AUC {auc:.3f}')
  ax.plot([0, 1], [0, 1], color='grey', ls=':', label='chance')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.set_title(title or 'synchronizability ROC')
  ax.legend(loc='lower right')
  return save_figure(fig, path)


def _normalised(x: np.ndarray) -> np.ndarray:
  return x / max(float(np.max(x)), 1e-12)


def plot_attribution(attribution, path: str, n_frames: int = 8) -> plt.Figure:
  """Fig. 3 of the paper: frames with their evidence, the spectrogram with its evidence, importance over time.

  Times are within each stream's window, so evidence of the same event appears `offset` apart when the
  streams are offset. Importance: gradient × input of the explained logit (|sum over channels| per pixel or
  spectrogram bin), and the attention rollout of the global transformer when available.
  """
  a = attribution
  shown = np.linspace(0, len(a.frame_times) - 1, n_frames).round().astype(int)
  fig = plt.figure(figsize=(14, 8.5))
  grid = fig.add_gridspec(4, n_frames, height_ratios=[1.5, 1, 1, 1.2], hspace=0.45, wspace=0.05)
  heat_max = np.percentile(a.frame_maps, 99.5) or 1.0
  for i, f in enumerate(shown):
    ax = fig.add_subplot(grid[0, i])
    ax.imshow(a.frames[f])
    ax.imshow(a.frame_maps[f], cmap='inferno', alpha=0.45, vmin=0, vmax=heat_max)
    ax.set_title(f'{a.frame_times[f]:.2f} s', fontsize=8)
    ax.axis('off')
  extent = (a.spec_times[0], a.spec_times[-1], 0, a.spectrogram.shape[0])
  for row, (image, cmap, label) in enumerate(((a.spectrogram, 'magma', 'log-mel spectrogram (model input)'),
                                              (a.spec_map, 'inferno', 'gradient × input'))):
    ax = fig.add_subplot(grid[1 + row, :])
    ax.imshow(image, origin='lower', aspect='auto', cmap=cmap, extent=extent,
              **({'vmin': 0, 'vmax': np.percentile(image, 99.5) or 1.0} if row else {}))
    ax.set_ylabel('mel band')
    ax.set_title(f'audio: {label}', fontsize=9)
  ax.set_xlabel('time in the audio window (s)')
  ax = fig.add_subplot(grid[3, :])
  ax.plot(a.frame_times, _normalised(a.frame_importance), color='tab:orange', label='video: gradient × input')
  ax.plot(a.spec_times, _normalised(a.spec_importance), color='tab:blue', alpha=0.8, label='audio: gradient × input')
  if a.rollout_video is not None:
    ax.step(a.frame_times, _normalised(a.rollout_video), where='mid', color='tab:orange', ls='--',
            label='video: attention rollout')
    ax.step(a.spec_times, _normalised(a.rollout_audio), where='mid', color='tab:blue', ls='--',
            label='audio: attention rollout')
  ax.set_xlim(min(a.frame_times[0], a.spec_times[0]), max(a.frame_times[-1], a.spec_times[-1]))
  ax.set_xlabel('time in the window (s)')
  ax.set_ylabel('importance (max = 1)')
  ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.3), fontsize=8, ncol=4)
  p = a.prediction
  fig.suptitle(f'{a.name}: explained offset {a.explained_offset_sec:+.2f} s; predicted {p.offset_sec:+.2f} s '
               f'(p={p.prob:.2f}); applied {p.applied_offset_sec:+.2f} s; video window from {a.video_start_sec:.2f} s, '
               f'audio from {a.audio_start_sec:.2f} s', fontsize=10)
  return save_figure(fig, path)


def plot_selector_attention(attention, path: str) -> plt.Figure:
  """SparseSync's evidence: where its selectors look in one window (`inference.attribution.SelectorAttention`).

  Rows: each video token's time span as its middle frame, with the video selectors' attention over that span's
  tokens (height × width) laid over it; the spectrogram with the audio selectors' attention over its tokens
  (frequency × time); both streams' attention over time; and each selector's attention over time. Weights are
  averaged over layers and heads (and over the selectors in the first three rows), on one colour scale per stream.
  """
  a = attention
  video, audio = a.video_attention, a.audio_attention  # (T, H, W), (F, T_a)
  n_tokens = len(a.frames)
  fig = plt.figure(figsize=(14, 8.5))
  grid = fig.add_gridspec(4, n_tokens, height_ratios=[0.6, 1.3, 1, 1.2], hspace=0.55, wspace=0.05)
  size = a.frames.shape[1]
  for t in range(n_tokens):
    ax = fig.add_subplot(grid[0, t])
    ax.imshow(a.frames[t])
    ax.imshow(video[t], cmap='inferno', alpha=0.5, vmin=0, vmax=video.max() or 1.0, interpolation='nearest',
              extent=(-0.5, size - 0.5, size - 0.5, -0.5))
    ax.set_title(f'{a.frame_times[t]:.2f} s', fontsize=7)
    ax.axis('off')
  ax = fig.add_subplot(grid[1, :])
  n_bins = a.spectrogram.shape[0]
  extent = (0, a.window_sec, 0, n_bins)
  ax.imshow(a.spectrogram, origin='lower', aspect='auto', cmap='gray', extent=extent)
  heat = ax.imshow(audio, origin='lower', aspect='auto', cmap='inferno', alpha=0.5, vmin=0, vmax=audio.max() or 1.0,
                   interpolation='nearest', extent=extent)
  fig.colorbar(heat, ax=ax, pad=0.01, label='attention')
  ax.set_ylabel('frequency bin')
  ax.set_title('audio: the selectors\' attention over the spectrogram (model input)', fontsize=9)
  ax = fig.add_subplot(grid[2, :])
  ax.step(a.video_token_times, _normalised(video.sum(axis=(1, 2))), where='mid', color='tab:orange',
          label='video selectors')
  ax.step(a.audio_token_times, _normalised(audio.sum(axis=0)), where='mid', color='tab:blue', label='audio selectors')
  ax.set_xlim(0, a.window_sec)
  ax.set_xlabel('time in the window (s)')
  ax.set_ylabel('attention (max = 1)')
  ax.legend(loc='upper right', fontsize=8)
  bottom = grid[3, :].subgridspec(1, 2, wspace=0.2)
  for column, (label, per_selector, times) in enumerate((
      ('video', a.video_selectors.sum(axis=(2, 3)), a.video_token_times),
      ('audio', a.audio_selectors.sum(axis=1), a.audio_token_times))):
    ax = fig.add_subplot(bottom[0, column])
    step = times[1] - times[0] if len(times) > 1 else a.window_sec
    ax.imshow(per_selector, aspect='auto', cmap='viridis', interpolation='nearest',
              extent=(times[0] - step / 2, times[-1] + step / 2, len(per_selector) - 0.5, -0.5))
    ax.set_xlabel('time in the window (s)')
    ax.set_ylabel('selector')
    ax.set_title(f'{label}: each selector over time', fontsize=9)
  p = a.prediction
  fig.suptitle(f'{a.name}: SparseSync selectors\' attention; predicted {p.offset_sec:+.2f} s (p={p.prob:.2f}); '
               f'applied {p.applied_offset_sec:+.2f} s; video window from {a.video_start_sec:.2f} s, '
               f'audio from {a.audio_start_sec:.2f} s', fontsize=10)
  return save_figure(fig, path)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing mean over up to `window` values (shorter at the start)."""
  sums = np.cumsum(np.concatenate([[0.0], values]))
  ends = np.arange(1, len(values) + 1)
  starts = np.maximum(ends - window, 0)
  return (sums[ends] - sums[starts]) / (ends - starts)


def plot_training_curves(runs: Mapping[str, tuple[Sequence[Mapping], Sequence[Mapping]]], path: str, *,
                         chance_loss: Mapping[str, float] | None = None) -> plt.Figure:
  """One row per run (label → (training records, evaluation records), as `train.metric_log.read_metrics`
  gives them): training loss (raw and smoothed) and the evaluation metrics."""
  fig, axes = plt.subplots(len(runs), 2, figsize=(12, 3.6 * len(runs)), squeeze=False)
  for (label, (train, evals)), (loss_ax, eval_ax) in zip(runs.items(), axes):
    steps = np.array([r['step'] for r in train])
    loss = np.array([r['loss'] for r in train])
    loss_ax.plot(steps, loss, color='0.8', lw=0.6, label='loss')
    loss_ax.plot(steps, smooth(loss, max(len(loss) // 30, 1)), color='tab:blue', label='smoothed')
    if chance_loss and label in chance_loss:
      loss_ax.axhline(chance_loss[label], color='tab:red', ls=':', label=f'chance {chance_loss[label]:.3f}')
    loss_ax.set(title=f'{label}: training loss', xlabel='step')
    loss_ax.legend(fontsize=8)
    eval_keys = sorted({k for r in evals for k in r if k.startswith('eval/')})
    for key in eval_keys:
      points = [(r['step'], r[key]) for r in evals if key in r]
      eval_ax.plot(*zip(*points), 'o-', label=key.removeprefix('eval/'))
    eval_ax.set(title=f'{label}: evaluation', xlabel='step', ylim=(0, 1.02))
    if eval_keys:
      eval_ax.legend(fontsize=8)
  fig.tight_layout()
  return save_figure(fig, path)


def plot_segment_similarity(vfeat: np.ndarray, afeat: np.ndarray, path: str, max_clips: int = 4) -> plt.Figure:
  """The v2a and a2v segment similarity matrices of the first clips (B, S, D), each row min-max scaled."""
  v = vfeat[:max_clips].reshape(-1, vfeat.shape[-1])
  a = afeat[:max_clips].reshape(-1, afeat.shape[-1])
  fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
  for ax, (title, sim) in zip(axes, (('v2a', v @ a.T), ('a2v', a @ v.T))):
    lo, hi = sim.min(axis=1, keepdims=True), sim.max(axis=1, keepdims=True)
    ax.imshow((sim - lo) / np.maximum(hi - lo, 1e-12), cmap='viridis')
    ax.set_title(f'{title} similarity ({len(v)} segments)')
    ax.set_xlabel('audio segment' if title == 'v2a' else 'video segment')
    ax.set_ylabel('video segment' if title == 'v2a' else 'audio segment')
  fig.tight_layout()
  return save_figure(fig, path, dpi=80)


def plot_scaling_law(x: np.ndarray, y: np.ndarray, path: str, *, fit_x: np.ndarray | None = None,
                     fit_y: np.ndarray | None = None, band: tuple[np.ndarray, np.ndarray] | None = None,
                     fitted: np.ndarray | None = None, xlabel: str = '', ylabel: str = 'loss', label: str = '',
                     title: str = '') -> plt.Figure:
  """A loss against a scale on log-log axes: every point (`fitted` marks those the law was fitted to), the
  fitted law and its bootstrap interval."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  fitted = np.ones(len(x), bool) if fitted is None else np.asarray(fitted, bool)
  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.scatter(x[~fitted], y[~fitted], color='0.6', s=18, label='other points')
  ax.scatter(x[fitted], y[fitted], color='tab:blue', s=24, label='fitted points')
  if fit_x is not None:
    if band is not None:
      ax.fill_between(fit_x, *band, color='tab:orange', alpha=0.25, label='bootstrap interval')
    ax.plot(fit_x, fit_y, color='tab:orange', label=label or 'fit')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.legend(fontsize=8)
  return save_figure(fig, path)


def plot_isoflop(budgets: np.ndarray, n: np.ndarray, loss: np.ndarray, optima: Sequence[Mapping[str, float]],
                 path: str, *, parabolas: Mapping[float, tuple[np.ndarray, np.ndarray]] | None = None,
                 title: str = '') -> plt.Figure:
  """isoFLOP profiles: the loss against N for each budget, each budget's parabola and optimum (left); the
  optimal N against the budget (right)."""
  budgets, n, loss = (np.asarray(a, np.float64) for a in (budgets, n, loss))
  fig, (profiles, frontier_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
  colours = plt.cm.viridis(np.linspace(0, 0.9, len(np.unique(budgets))))
  for colour, budget in zip(colours, np.unique(budgets)):
    at = budgets == budget
    profiles.scatter(n[at], loss[at], color=colour, s=20, label=f'C = {budget:.2g}')
    if parabolas and budget in parabolas:
      profiles.plot(*parabolas[budget], color=colour, lw=1)
  profiles.scatter([o['n_opt'] for o in optima], [o['loss_opt'] for o in optima], marker='*', s=120,
                   color='tab:red', label='optimum', zorder=3)
  profiles.set(xscale='log', xlabel='parameters N', ylabel='loss', title=title or 'isoFLOP profiles')
  profiles.legend(fontsize=7)
  frontier_ax.plot([o['budget'] for o in optima], [o['n_opt'] for o in optima], 'o-', color='tab:red')
  frontier_ax.set(xscale='log', yscale='log', xlabel='training FLOPs C', ylabel='optimal N*',
                  title='compute-optimal model size')
  return save_figure(fig, path)
