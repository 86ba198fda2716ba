"""PNG figures of predictions, evaluations and attributions (matplotlib, Agg backend)."""
from __future__ import annotations

import os
from typing import Any, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402


def save_figure(fig, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  plt.close(fig)


def plot_offset_curve(curve, path: str, title: str = '') -> None:
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
  save_figure(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: str, title: str = '') -> None:
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
  save_figure(fig, path)


def plot_roc(roc: dict[str, Any], auc: float, path: str, title: str = '') -> None:
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.plot(roc['fpr'], roc['tpr'], color='tab:blue', label=f'AUC {auc:.3f}')
  ax.plot([0, 1], [0, 1], color='grey', ls=':', label='chance')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.set_title(title or 'synchronizability ROC')
  ax.legend(loc='lower right')
  save_figure(fig, path)


def _normalised(x: np.ndarray) -> np.ndarray:
  return x / max(float(np.max(x)), 1e-12)


def plot_attribution(attribution, path: str, n_frames: int = 8) -> None:
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
  save_figure(fig, path)
