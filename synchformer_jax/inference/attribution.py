"""Evidence attribution (Fig. 3 of the paper): which frames and which parts of the spectrogram an offset
prediction rests on.

Synchformer: gradient × input of one offset logit (the predicted class by default) with respect to the model's
inputs: per pixel (summed over colour channels) and per log-mel bin, each as |value|, averaged where 50 %-overlapping
segments share a frame or a spectrogram column (so the window's edges, seen once, are not halved). With
`rollout=True`, also the attention rollout (Abnar & Zuidema, 2020) of the global transformer from its OFF token,
read through the models' opt-in `sow_attention` hook on a copy of the model (the given model keeps the fused
attention).

SparseSync: what its selectors attend to. Its 16 video and 16 audio selectors are the only path from the trunks'
tokens to the offset head, so their cross-attention says which parts of the window the prediction reads: over
the video tokens (time × height × width) and the audio tokens (frequency × time), read through the same hook.
"""
from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from synchformer_jax import plots
from synchformer_jax.constants import AUDIO_RATE, OFFSET_GRID, SEGMENT_MEL_FRAMES, VIDEO_FPS
from synchformer_jax.data import sparsesync
from synchformer_jax.data.audio import HOP_LENGTH
from synchformer_jax.data.transforms import RGB_MEAN, RGB_STD, quantise_offset
from synchformer_jax.errors import InputError
from synchformer_jax.inference.compiled import jitted_call, softmax
from synchformer_jax.inference.kinds import build_file_example, is_sparsesync, offset_grid
from synchformer_jax.inference.results import OffsetPrediction

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

  def summary(self) -> str:
    p = self.prediction
    return (f'predicted {p.offset_sec:+.2f} s (p={p.prob:.4f}), explained {self.explained_offset_sec:+.2f} s '
            f'(applied {p.applied_offset_sec:+.2f} s)')


@dataclasses.dataclass(frozen=True)
class SelectorAttention:
  """SparseSync's evidence for one window: the cross-attention of its selectors, averaged over the layers and heads
  (and, in `video_attention` / `audio_attention`, over the selectors). Each selector's weights over the tokens sum
  to 1. Times are seconds from the start of each stream's window."""

  name: str
  prediction: OffsetPrediction
  video_start_sec: float  # where the windows start in the file
  audio_start_sec: float
  window_sec: float  # 5 s of each stream
  frames: np.ndarray  # (T, s, s, 3) uint8: the model's input frame at the middle of each video token's time span
  frame_times: np.ndarray  # (T,) those frames' times
  video_selectors: np.ndarray  # (selectors, T, H, W): the video tokens, in (t, h, w) order
  spectrogram: np.ndarray  # (257, 626): the model's input (standardised log power spectrogram)
  spec_times: np.ndarray  # (626,)
  audio_selectors: np.ndarray  # (selectors, F, T_a): the audio tokens, in (f, t) order

  @property
  def video_attention(self) -> np.ndarray:
    return self.video_selectors.mean(axis=0)

  @property
  def audio_attention(self) -> np.ndarray:
    return self.audio_selectors.mean(axis=0)

  @property
  def video_token_times(self) -> np.ndarray:
    """Middle of each video token's time span (T,)."""
    return (np.arange(self.video_selectors.shape[1]) + 0.5) * self.window_sec / self.video_selectors.shape[1]

  @property
  def audio_token_times(self) -> np.ndarray:
    """Middle of each audio token's time span (T_a,)."""
    return (np.arange(self.audio_selectors.shape[2]) + 0.5) * self.window_sec / self.audio_selectors.shape[2]

  def summary(self) -> str:
    p = self.prediction
    return (f'predicted {p.offset_sec:+.2f} s (p={p.prob:.4f}), applied {p.applied_offset_sec:+.2f} s; '
            f'the selectors\' attention')


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


def _attention_read(model: nnx.Module) -> list[nnx.Module]:
  """The attention layers the evidence reads: Synchformer's global transformer, SparseSync's selectors'
  cross-attention."""
  if is_sparsesync(model):
    head = model.transformer
    return [block.xattn for selector in (head.v_selector, head.a_selector) for block in selector.blocks]
  return [block.attn for block in model.transformer.blocks]


def _with_attention_sown(model: nnx.Module) -> nnx.Module:
  """A copy of the model (sharing its arrays) whose attention layers that the evidence reads sow their weights."""
  graphdef, state = nnx.split(model)
  copy = nnx.merge(graphdef, state)
  for layer in _attention_read(copy):
    layer.sow_attention = True
  return copy


def attribute(model: nnx.Module, path: str | os.PathLike, *, offset_sec: float = 0.0, v_start_sec: float = 0.0,
              explain_offset_sec: float | None = None, rollout: bool = True,
              original_decoder: bool = False) -> Attribution | SelectorAttention:
  """The evidence of the window that `predict_offsets` sees with the same arguments.

  Synchformer: attributes the logit of `explain_offset_sec` (default: the predicted offset). SparseSync: the
  selectors' attention (`selector_attention`), which no class choice or rollout switch changes.
  """
  if is_sparsesync(model):
    if explain_offset_sec is not None or not rollout:
      raise InputError("SparseSync's evidence is its selectors' attention, the same for every class: "
                       'explain_offset_sec and rollout apply to Synchformer models')
    return selector_attention(model, path, offset_sec=offset_sec, v_start_sec=v_start_sec,
                              original_decoder=original_decoder)
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
  prediction = _prediction(model, logits, example, v_start_sec)

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


def _prediction(model: nnx.Module, logits: np.ndarray, example: dict, v_start_sec: float) -> OffsetPrediction:
  return OffsetPrediction(offset_grid(model), softmax(logits), logits,
                          applied_offset_sec=round(float(example['offset_sec']), 2), v_start_sec=v_start_sec)


def _selector_weights(model: nnx.Module, video: jnp.ndarray, audio: jnp.ndarray):
  """Logits and the sown cross-attention weights (B, heads, selectors, keys) of each selector stack's layers."""
  (logits, _), sown = nnx.capture(lambda m, v, a: m(v, a), nnx.Intermediate)(model, video, audio)
  weights = {'v_selector': [], 'a_selector': []}
  for path, var in nnx.to_flat_state(sown):
    if path[-1] == 'attention_weights':
      weights[next(p for p in path if p in weights)].append(var.get_value()[0])
  return logits, weights


def selector_attention(model: nnx.Module, path: str | os.PathLike, *, offset_sec: float = 0.0,
                       v_start_sec: float = 0.0, original_decoder: bool = False) -> SelectorAttention:
  """Where a SparseSync model's selectors look in the window that `predict_offsets` sees with the same arguments."""
  example, plan = build_file_example(model, path, offset_sec=offset_sec, v_start_sec=v_start_sec,
                                     original_decoder=original_decoder)
  video, audio = example['video'][None], example['audio'][None]  # (1, 125, 3, s, s), (1, 1, 257, 626)
  logits, weights = jitted_call(_selector_weights, _with_attention_sown(model), video, audio)
  cfg = model.cfg
  # Layers and heads averaged; each selector's row over the tokens stays a distribution.
  per_selector = lambda layers, shape: np.mean([np.asarray(w[0]).mean(axis=0) for w in layers], axis=0).reshape(
      -1, *shape)
  video_selectors = per_selector(weights['v_selector'], cfg.visual_block_shape)
  audio_selectors = per_selector(weights['a_selector'], cfg.audio_block_shape)
  n_frames, t_tokens = video.shape[1], cfg.visual_block_shape[0]
  shown = ((np.arange(t_tokens) + 0.5) * n_frames / t_tokens).astype(int)  # each token's middle frame
  pixels = video[0, shown].transpose(0, 2, 3, 1) * sparsesync.IMAGENET_STD + sparsesync.IMAGENET_MEAN
  window_sec = n_frames / VIDEO_FPS
  return SelectorAttention(
      name=os.path.basename(os.fspath(path)),
      prediction=_prediction(model, np.asarray(logits[0]), example, v_start_sec),
      video_start_sec=plan.v_start_frame / VIDEO_FPS, audio_start_sec=plan.audio_sample_start / AUDIO_RATE,
      window_sec=window_sec, frames=np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8),
      frame_times=shown / VIDEO_FPS, video_selectors=video_selectors, spectrogram=example['audio'][0],
      spec_times=np.arange(audio.shape[-1]) * sparsesync.HOP_LENGTH / AUDIO_RATE, audio_selectors=audio_selectors)


def plot_evidence(result: Attribution | SelectorAttention, path: str):
  """The evidence figure of either kind of result (`plots`)."""
  if isinstance(result, SelectorAttention):
    return plots.plot_selector_attention(result, path)
  return plots.plot_attribution(result, path)


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
