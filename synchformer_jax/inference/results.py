"""What file-level predictions return: one window's offset distribution, a file's sliding windows, an offset search."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from synchformer_jax.inference.compiled import softmax


@dataclasses.dataclass(frozen=True)
class OffsetPrediction:
  """A distribution over candidate offsets.

  `offsets_sec` is what each class stands for: the 21-class grid, shifted by `coarse_offset_sec` in a search.
  `logits` is None for a distribution averaged over windows.
  """

  offsets_sec: np.ndarray  # (C,)
  probs: np.ndarray  # (C,)
  logits: np.ndarray | None
  applied_offset_sec: float = 0.0
  v_start_sec: float = 0.0
  coarse_offset_sec: float = 0.0

  @property
  def predicted_class(self) -> int:
    return int(np.argmax(self.probs))

  @property
  def offset_sec(self) -> float:
    return float(self.offsets_sec[self.predicted_class])

  @property
  def prob(self) -> float:
    return float(self.probs[self.predicted_class])

  def top_k(self, k: int) -> list[dict[str, Any]]:
    order = np.argsort(-self.probs, kind='stable')[:k]
    return [{'offset_sec': round(float(self.offsets_sec[c]), 4), 'prob': float(self.probs[c]), 'class': int(c),
             **({'logit': float(self.logits[c])} if self.logits is not None else {})} for c in order]

  def to_dict(self, top_k: int = 5) -> dict[str, Any]:
    return {'applied_offset_sec': self.applied_offset_sec, 'v_start_sec': self.v_start_sec,
            'coarse_offset_sec': self.coarse_offset_sec, 'offset_sec': round(self.offset_sec, 4),
            'prob': self.prob, 'class': self.predicted_class, 'top_k': self.top_k(top_k)}


@dataclasses.dataclass(frozen=True)
class OffsetCurve:
  """Predictions of sliding windows over a file. Window i covers video [start_sec[i], start_sec[i] + window_sec)."""

  start_sec: np.ndarray  # (W,)
  window_sec: float
  offsets_sec: np.ndarray  # (C,)
  logits: np.ndarray  # (W, C)
  applied_offset_sec: float

  @property
  def probs(self) -> np.ndarray:
    return softmax(self.logits)

  @property
  def offset_sec(self) -> np.ndarray:
    return self.offsets_sec[np.argmax(self.logits, axis=-1)]

  @property
  def consensus(self) -> OffsetPrediction:
    """The windows' probabilities averaged: one prediction for the file."""
    return OffsetPrediction(self.offsets_sec, self.probs.mean(axis=0), None, applied_offset_sec=self.applied_offset_sec)

  def to_dict(self, top_k: int = 5) -> dict[str, Any]:
    probs = self.probs
    return {'applied_offset_sec': self.applied_offset_sec, 'window_sec': self.window_sec,
            'windows': [{'start_sec': round(float(t), 4), 'offset_sec': round(float(o), 4), 'prob': float(p.max())}
                        for t, o, p in zip(self.start_sec, self.offset_sec, probs)],
            'consensus': self.consensus.to_dict(top_k)}


@dataclasses.dataclass(frozen=True)
class OffsetSearch:
  """One prediction per coarse shift of the audio; the most confident is the answer."""

  candidates: list[OffsetPrediction]

  @property
  def best(self) -> OffsetPrediction:
    return max(self.candidates, key=lambda c: c.prob)

  def to_dict(self, top_k: int = 5) -> dict[str, Any]:
    return {'candidates': [{'coarse_offset_sec': c.coarse_offset_sec, 'offset_sec': round(c.offset_sec, 4),
                            'prob': c.prob} for c in self.candidates],
            'best': self.best.to_dict(top_k)}
