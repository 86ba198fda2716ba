"""Evidence attribution (Fig. 3 of the paper): which frames and which parts of the spectrogram an offset
prediction rests on.

Gradient × input of one offset logit (the predicted class by default) with respect to the model's inputs:
per pixel (summed over colour channels) and per log-mel bin, each as |value|, averaged where 50 %-overlapping
segments share a frame or a spectrogram column (so the window's edges, seen once, are not halved). With `rollout=True`, also the attention rollout (Abnar &
Zuidema, 2020) of the global transformer from its OFF token, read through the models' opt-in
`sow_attention` hook on a copy of the model (the given model keeps the fused attention).
"""
from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from synchformer_jax.constants import AUDIO_RATE, OFFSET_GRID, SEGMENT_MEL_FRAMES, VIDEO_FPS
from synchformer_jax.data.audio import HOP_LENGTH
from synchformer_jax.data.transforms import RGB_MEAN, RGB_STD, quantise_offset
from synchformer_jax.inference.compiled import jitted_call, softmax
from synchformer_jax.inference.results import OffsetPrediction
from synchformer_jax.inference.windows import build_file_example

# Log-mel columns that hold audio: the 66th is the original's zero padding.
_SPEC_COLUMNS = SEGMENT_MEL_FRAMES - 1


@dataclasses.dataclass(frozen=True)
class Attribution:
  """Evidence for one offset logit of one window. Times are seconds from the start of each stream's window."""

  name: str
  prediction: OffsetPrediction
  explained_offset_sec: float
  video_start_sec: float  # where the windows start in the file
  audio_start_sec: float
  frames: np.ndarray  # (F, h, w, 3) uint8: the window's frames as the model sees them
  frame_times: np.ndarray  # (F,)
  frame_maps: np.ndarray  # (F, h, w) |gradient × input|
  spectrogram: np.ndarray  # (128, C) the model's log-mel input, segments stitched
  spec_times: np.ndarray  # (C,)
  spec_map: np.ndarray  # (128, C) |gradient × input|
  rollout_video: np.ndarray | None  # (F,) attention rollout from the OFF token
  rollout_audio: np.ndarray | None  # (C,)

  @property
  def frame_importance(self) -> np.ndarray:
    return self.frame_maps.sum(axis=(1, 2))

  @property
  def spec_importance(self) -> np.ndarray:
    return self.spec_map.sum(axis=0)


def _explanation(model: nnx.Module, video: jnp.ndarray, audio: jnp.ndarray, target: jnp.ndarray):
  """Logits, input gradients of logit `target`, and the attention weights the model sowed (if any)."""

  def target_logit(model, video, audio):
    (logits, _), sown = nnx.capture(lambda m, v, a: m(v, a), nnx.Intermediate)(model, video, audio)
    return logits[0, target], (logits, sown)

  (_, (logits, sown)), grads = nnx.value_and_grad(target_logit, argnums=(1, 2), has_aux=True)(model, video, audio)
  weights = [var.get_value()[0] for path, var in nnx.to_flat_state(sown) if path[-1] == 'attention_weights']
  return logits, grads, weights


def attention_rollout(weights: list[np.ndarray]) -> np.ndarray:
  """Rollout over layers of (heads, L, L) attention: heads averaged, the residual as 0.5·I, rows renormalised."""
  rollout = None
  for layer in weights:
    a = 0.5 * layer.mean(axis=0) + 0.5 * np.eye(layer.shape[-1])
    a = a / a.sum(axis=-1, keepdims=True)
    rollout = a if rollout is None else a @ rollout
  return rollout


def _with_attention_sown(model: nnx.Module) -> nnx.Module:
  """A copy of the model (sharing its arrays) whose global transformer sows its attention weights."""
  graphdef, state = nnx.split(model)
  copy = nnx.merge(graphdef, state)
  for block in copy.transformer.blocks:
    block.attn.sow_attention = True
  return copy


def attribute(model: nnx.Module, path: str | os.PathLike, *, offset_sec: float = 0.0, v_start_sec: float = 0.0,
              explain_offset_sec: float | None = None, rollout: bool = True,
              original_decoder: bool = False) -> Attribution:
  """Attributes the logit of `explain_offset_sec` (default: the predicted offset) for the window that
  `predict_offsets` sees with the same arguments."""
  example, plan = build_file_example(model, path, offset_sec=offset_sec, v_start_sec=v_start_sec,
                                     original_decoder=original_decoder)
  video = example['video'][None].astype(np.float32)  # (1, S, 16, 3, h, w)
  audio = example['audio'][None]  # (1, S, 1, 128, 66)
  explained = _with_attention_sown(model) if rollout else model
  if explain_offset_sec is None:  # explain the prediction, which a first pass finds
    target = int(np.argmax(jitted_call(_explanation, explained, video, audio, np.int32(0))[0][0]))
  else:
    target = quantise_offset(explain_offset_sec)[1]
  logits, (video_grad, audio_grad), weights = jitted_call(_explanation, explained, video, audio, np.int32(target))
  logits = np.asarray(logits[0])
  prediction = OffsetPrediction(OFFSET_GRID.astype(np.float64), softmax(logits), logits,
                                applied_offset_sec=round(float(example['offset_sec']), 2), v_start_sec=v_start_sec)

  # Video: one map per distinct frame, averaged over the segments that show it.
  frame_index = plan.video_frame_index  # (S, 16) frames of the clip
  distinct, where = np.unique(frame_index, return_inverse=True)
  where = where.reshape(frame_index.shape)
  gxi = np.abs(np.asarray((video_grad * video)[0]).sum(axis=2))  # (S, 16, h, w)
  frame_maps = _mean_at(where, gxi, len(distinct))
  frames = np.zeros((len(distinct), *gxi.shape[-2:], 3), np.uint8)
  pixels = np.asarray(video[0]).transpose(0, 1, 3, 4, 2) * RGB_STD + RGB_MEAN  # (S, 16, h, w, 3) in [0, 1]
  frames[where] = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)

  # Audio: segment s's column j is at (its start − the first start) / hop + j of the stitched spectrogram.
  offsets = (plan.audio_sample_start - plan.audio_sample_start[0]) // HOP_LENGTH
  columns = offsets[:, None] + np.arange(_SPEC_COLUMNS)  # (S, 65)
  n_columns = int(columns.max()) + 1
  spec = np.asarray(audio[0, :, 0, :, :_SPEC_COLUMNS])  # (S, 128, 65)
  spec_gxi = np.abs(np.asarray((audio_grad * audio)[0, :, 0, :, :_SPEC_COLUMNS]))
  spectrogram = _mean_at(columns, spec.transpose(0, 2, 1), n_columns).T  # (128, C)
  spec_map = _mean_at(columns, spec_gxi.transpose(0, 2, 1), n_columns).T

  rollout_video = rollout_audio = None
  if rollout and weights:
    from_off = attention_rollout([np.asarray(w[0]) for w in weights])[0]  # OFF token's row
    rollout_video, rollout_audio = _token_rollout(model, from_off, where, columns, n_columns)
  video_start = frame_index[0, 0] / VIDEO_FPS
  audio_start = plan.audio_sample_start[0] / AUDIO_RATE
  return Attribution(
      name=os.path.basename(os.fspath(path)), prediction=prediction,
      explained_offset_sec=round(float(OFFSET_GRID[target]), 2), video_start_sec=float(video_start),
      audio_start_sec=float(audio_start), frames=frames, frame_times=(distinct - distinct[0]) / VIDEO_FPS,
      frame_maps=frame_maps, spectrogram=spectrogram, spec_times=np.arange(n_columns) * HOP_LENGTH / AUDIO_RATE,
      spec_map=spec_map, rollout_video=rollout_video, rollout_audio=rollout_audio)


def _token_rollout(model: nnx.Module, from_off: np.ndarray, frame_where: np.ndarray, columns: np.ndarray,
                   n_columns: int) -> tuple[np.ndarray, np.ndarray]:
  """Spreads the rollout of tokens [OFF, video (S × 8), MOD, audio (S × 6)] onto frames and spectrogram columns.

  A video token covers its tubelet's 2 frames; an audio token covers the 16 columns of its patch column
  (stride 10).
  """
  s, t_v = frame_where.shape[0], model.cfg.video.time_tokens
  audio_cfg = model.cfg.audio
  video_tokens = from_off[1:1 + s * t_v].reshape(s, t_v)
  audio_tokens = from_off[2 + s * t_v:].reshape(s, audio_cfg.time_tokens)
  per_frame = _mean_at(frame_where, np.repeat(video_tokens, model.cfg.video.tubelet, axis=1), frame_where.max() + 1)
  column_of, token_value = [], []
  for t in range(audio_cfg.time_tokens):
    first = t * audio_cfg.stride
    covered = columns[:, first:min(first + audio_cfg.patch, _SPEC_COLUMNS)]  # (S, ≤16)
    column_of.append(covered.ravel())
    token_value.append(np.repeat(audio_tokens[:, t], covered.shape[1]))
  return per_frame, _mean_at(np.concatenate(column_of), np.concatenate(token_value), n_columns)


def _mean_at(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
  """Means of `values` (`index`'s shape plus trailing axes) grouped by `index` into `size` slots (0 where none)."""
  flat_values = values.reshape(index.size, *values.shape[index.ndim:])
  sums = np.zeros((size, *flat_values.shape[1:]))
  np.add.at(sums, index.ravel(), flat_values)
  counts = np.bincount(index.ravel(), minlength=size).reshape(-1, *[1] * (flat_values.ndim - 1))
  return (sums / np.maximum(counts, 1)).astype(np.float32)
