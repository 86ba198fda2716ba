"""Candidate changes to the Stage II head's training that keep its parameter structure (issue 16).

The head probe (`head_probe`) measures each on simulated windows. A `HeadRecipe` changes only initial values,
training-only losses, label smoothing, dropout and the probe's event rate over the first steps, so a model trained
with any of them loads and exports as the original's. The default `HeadRecipe()` is the original recipe.

- `position_init='token_time'`: the positional rows of video and audio tokens start as sinusoids of each token's
  time in the window (periods 0.1-10 s), one code for both streams, instead of N(0, 1) random rows.
- `special_token_scale`: the OFF and MOD tokens and their positional rows start scaled by this factor.
- `kernel_init='lecun'`: the blocks' kernels start N(0, 1/fan_in) instead of N(0, 0.02).
- `label_smoothing`: a Gaussian over neighbouring offset classes (σ in classes) instead of one-hot targets.
- `lag_score_weight`: a loss on the first block's attention logits from audio queries to video keys, averaged over
  the pairs at each offset's lag, classified against the offset (the cross-correlation, read from the logits).
- `shift_attention_weight`: a label-free loss that makes head h of every block but the last attend from each audio
  token to the video tokens at a fixed lag δ_h (the lags spread over ±2 s), a Gaussian of σ `shift_sigma_sec`.
- `shift_value_weight`: with the shift heads, a label-free loss that makes each shift head's output at an audio
  token reproduce the (normalised, projected) video tokens its target covers, so that the video's content, not only
  the pattern, reaches the audio tokens.
- `token_offset_weight`: the final norm and head applied to every audio token, its cross-entropy added (deep
  supervision).
- `event_rate_from` / `event_rate_steps`: the probe's event rate rises linearly from this value to the simulation's
  over the first steps (a curriculum from sparse to denser windows).
"""
from __future__ import annotations

import dataclasses

import einops
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from synchformer_jax.constants import AUDIO_RATE, NUM_OFFSET_CLASSES, OFFSET_GRID, SYNC_SEGMENT_STRIDE_SEC, VIDEO_FPS
from synchformer_jax.data.audio import HOP_LENGTH
from synchformer_jax.models.config import ModelConfig
from synchformer_jax.models.synchformer import classification_loss

POSITION_INITS = ('original', 'token_time')
KERNEL_INITS = ('original', 'lecun')
OFFSETS_SEC = OFFSET_GRID.astype(np.float64)
ORIGINAL_KERNEL_STD = 0.02


def token_times(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
  """Centres, in seconds from the window's start, of the video (S, Tv) and audio (S, Ta) segment tokens."""
  segments = SYNC_SEGMENT_STRIDE_SEC * np.arange(cfg.transformer.n_segments)[:, None]
  tubelet = cfg.video.tubelet
  video = segments + (tubelet * np.arange(cfg.video.time_tokens) + (tubelet - 1) / 2) / VIDEO_FPS
  mel_hop_sec = HOP_LENGTH / AUDIO_RATE
  audio = segments + (cfg.audio.stride * np.arange(cfg.audio.time_tokens) + (cfg.audio.patch - 1) / 2) * mel_hop_sec
  return video, audio


@dataclasses.dataclass(frozen=True)
class HeadRecipe:
  position_init: str = 'original'
  special_token_scale: float = 1.0
  kernel_init: str = 'original'
  label_smoothing: float = 0.0
  lag_score_weight: float = 0.0
  shift_attention_weight: float = 0.0
  shift_sigma_sec: float = 0.25
  shift_value_weight: float = 0.0
  token_offset_weight: float = 0.0
  dropout: float | None = None  # None keeps the config's
  event_rate_from: float = 0.0
  event_rate_steps: int = 0

  def __post_init__(self):
    if self.position_init not in POSITION_INITS:
      raise ValueError(f'HeadRecipe.position_init: expected one of {POSITION_INITS}, got {self.position_init!r}')
    if self.kernel_init not in KERNEL_INITS:
      raise ValueError(f'HeadRecipe.kernel_init: expected one of {KERNEL_INITS}, got {self.kernel_init!r}')

  @property
  def auxiliary(self) -> bool:
    return bool(self.lag_score_weight or self.shift_attention_weight or self.shift_value_weight
                or self.token_offset_weight)

  def model_config(self, cfg: ModelConfig) -> ModelConfig:
    if self.dropout is None:
      return cfg
    rates = dict(embd_dropout=self.dropout, attn_dropout=self.dropout, resid_dropout=self.dropout)
    return cfg.replace(transformer=dataclasses.replace(cfg.transformer, **rates))


def parse(text: str) -> HeadRecipe:
  """A recipe from 'field=value,...' (values as the fields' types); '' is the original recipe."""
  fields = {f.name: f for f in dataclasses.fields(HeadRecipe)}
  values = {}
  for item in filter(None, (part.strip() for part in text.split(','))):
    name, _, value = item.partition('=')
    if name not in fields or not value:
      raise ValueError(f'head recipe: expected field=value with a field among {sorted(fields)}, got {item!r}')
    kind = str(fields[name].type)
    values[name] = value if 'str' in kind else int(value) if kind == 'int' else float(value)
  return HeadRecipe(**values)


def time_code(times: np.ndarray, dim: int) -> np.ndarray:
  """Sinusoids of the times (periods 0.1-10 s, geometric), unit variance per channel: (len(times), dim)."""
  periods = np.geomspace(0.1, 10.0, dim // 2)
  phase = 2 * np.pi * times[:, None] / periods
  code = np.concatenate([np.sin(phase), np.cos(phase)], axis=1) * np.sqrt(2)
  return np.pad(code, ((0, 0), (0, dim - code.shape[1])))


def initialise(model: nnx.Module, cfg: ModelConfig, recipe: HeadRecipe) -> None:
  """Overwrites the initial values of a fresh Stage II head as the recipe says."""
  transformer = model.transformer
  video_times, audio_times = (t.ravel() for t in token_times(cfg))
  pos = np.array(transformer.pos_emb[...])
  video_rows = slice(1, 1 + len(video_times))
  mod_row, audio_rows = video_rows.stop, slice(video_rows.stop + 1, None)
  if recipe.position_init == 'token_time':
    pos[0, video_rows] = time_code(video_times, pos.shape[-1])
    pos[0, audio_rows] = time_code(audio_times, pos.shape[-1])
  pos[0, [0, mod_row]] *= recipe.special_token_scale
  transformer.pos_emb[...] = jnp.asarray(pos)
  for special in (transformer.OFF_tok, transformer.MOD_tok):
    special[...] = special[...] * recipe.special_token_scale
  if recipe.kernel_init == 'lecun':
    for block in transformer.blocks:
      for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
        kernel = linear.kernel[...]
        linear.kernel[...] = kernel * (1 / ORIGINAL_KERNEL_STD / np.sqrt(kernel.shape[0]))


class AuxiliaryLosses:
  """The recipe's training-only losses, from the attention logits and token features a model sows."""

  def __init__(self, cfg: ModelConfig, recipe: HeadRecipe):
    self.recipe = recipe
    video_times, audio_times = (t.ravel() for t in token_times(cfg))
    n_video, n_audio = len(video_times), len(audio_times)
    self.video = slice(1, 1 + n_video)
    self.audio = slice(2 + n_video, 2 + n_video + n_audio)
    lag = video_times[None, :] - audio_times[:, None]  # the audio token at t holds what the video shows at t + offset
    pairs = np.stack([np.abs(lag - offset) < 0.1 - 1e-9 for offset in OFFSETS_SEC]).astype(np.float32)
    self.lag_pairs = jnp.asarray(pairs / pairs.sum((1, 2), keepdims=True))  # (classes, audio, video): mean per lag
    shifted_layers = max(cfg.transformer.layers - 1, 1)
    heads = cfg.transformer.heads * shifted_layers
    self.shift_lags = np.linspace(-2 + 2 / heads, 2 - 2 / heads, heads)
    sigma = recipe.shift_sigma_sec
    targets = np.zeros((heads, n_audio, 2 + n_video + n_audio), np.float32)
    for h, shift in enumerate(self.shift_lags):
      distance = lag - shift
      weight = np.where(np.abs(distance) <= 3 * sigma, np.exp(-0.5 * (distance / sigma) ** 2), 0.0)
      targets[h, :, self.video] = weight / np.maximum(weight.sum(1, keepdims=True), 1e-12)
    self.shift_targets = jnp.asarray(targets.reshape(shifted_layers, cfg.transformer.heads, n_audio, -1))
    # Audio tokens whose shifted time falls outside the video tokens' span have no target.
    shifted = audio_times[None, :] + self.shift_lags[:, None]
    valid = (shifted >= video_times.min()) & (shifted <= video_times.max())
    self.shift_valid = jnp.asarray(valid.reshape(shifted_layers, cfg.transformer.heads, n_audio))
    self.shifted_layers = shifted_layers

  def __call__(self, logits: list[jax.Array], token_logits: jax.Array, targets: jax.Array,
               head_outputs: list[jax.Array], video_tokens: jax.Array | None) -> jax.Array:
    """`logits`: each block's attention logits (B, heads, L, L); `token_logits`: the head on every token;
    `head_outputs`: each block's per-head outputs (B, L, heads, D); `video_tokens`: the normalised projected video
    tokens (B, Lv, D). The last two only with the shift-value loss."""
    recipe, total = self.recipe, jnp.float32(0.0)
    if recipe.shift_value_weight:
      for layer in range(self.shifted_layers):
        wanted = jnp.einsum('hij,bjd->bihd', self.shift_targets[layer][:, :, self.video],
                            jax.lax.stop_gradient(video_tokens))
        error = jnp.square(head_outputs[layer][:, self.audio] - wanted).mean(-1)  # (B, audio, heads)
        total += recipe.shift_value_weight / self.shifted_layers * _valid_mean(error, self.shift_valid[layer].T)
    if recipe.lag_score_weight:
      scores = jnp.einsum('bhij,cij->bhc', logits[0][:, :, self.audio, self.video], self.lag_pairs)
      total += recipe.lag_score_weight * optax.softmax_cross_entropy_with_integer_labels(
          scores, targets[:, None]).mean()
    if recipe.shift_attention_weight:
      for layer in range(self.shifted_layers):
        log_weights = jax.nn.log_softmax(logits[layer][:, :, self.audio, :], axis=-1)
        cross_entropy = -(log_weights * self.shift_targets[layer]).sum(-1)  # (B, heads, audio)
        total += recipe.shift_attention_weight / self.shifted_layers * _valid_mean(cross_entropy, self.shift_valid[layer])
    if recipe.token_offset_weight:
      per_token = optax.softmax_cross_entropy(token_logits[:, self.audio],
                                              target_distribution(targets, recipe.label_smoothing)[:, None])
      total += recipe.token_offset_weight * per_token.mean()
    return total


def _valid_mean(per_token: jax.Array, valid: jax.Array) -> jax.Array:
  """The mean over a batch (B, ...) of `per_token`, counting only the entries `valid` (...) marks."""
  return (per_token * valid).sum(tuple(range(1, per_token.ndim))).mean() / valid.sum()


def target_distribution(targets: jax.Array, smoothing: float) -> jax.Array:
  """One-hot offset classes, or a Gaussian of σ `smoothing` classes around each."""
  if not smoothing:
    return jax.nn.one_hot(targets, NUM_OFFSET_CLASSES)
  classes = jnp.arange(NUM_OFFSET_CLASSES)
  weights = jnp.exp(-0.5 * ((classes[None] - targets[:, None]) / smoothing) ** 2)
  return weights / weights.sum(-1, keepdims=True)


def loss(model: nnx.Module, batch: dict[str, jax.Array], target_key: str, recipe: HeadRecipe,
         auxiliary: AuxiliaryLosses | None) -> tuple[jax.Array, jax.Array]:
  """(the loss to minimise, the classification cross-entropy against the one-hot targets) of a Stage II head under
  the recipe: label smoothing and the training-only losses enter the first only."""
  targets = batch[target_key]
  if auxiliary is None:
    logits = model.classify(batch['vfeat'], batch['afeat'])
    return _smoothed(logits, targets, recipe), classification_loss(logits, targets)
  logits, sown = nnx.capture(lambda m: m.classify(batch['vfeat'], batch['afeat']), nnx.Intermediate)(model)
  flat = {tuple(map(str, path)): var.get_value()[0] for path, var in nnx.to_flat_state(sown)}
  attention = [flat[path] for path in sorted(p for p in flat if p[-1] == 'attention_logits')]
  transformer = model.transformer
  head_outputs, video_tokens = [], None
  if recipe.shift_value_weight:  # the only loss that reads each head's output and the input video tokens
    values = [flat[path] for path in sorted(p for p in flat if p[-1] == 'head_values')]
    head_outputs = [_per_head_outputs(block.attn, v) for block, v in zip(transformer.blocks, values)]
    video_tokens = transformer.vis_in_lnorm(einops.rearrange(model.vproj(batch['vfeat']), 'b s t d -> b (s t) d'))
  head = getattr(transformer, transformer.head_name)
  token_logits = head(next(v for p, v in flat.items() if p[-1] == 'token_features')).astype(jnp.float32)
  extra = auxiliary(attention, token_logits, targets, head_outputs, video_tokens)
  return _smoothed(logits, targets, recipe) + extra, classification_loss(logits, targets)


def _per_head_outputs(attention: nnx.Module, values: jax.Array) -> jax.Array:
  """What each head adds to the residual stream (its slice of the output projection, bias left out): (B, L, heads, D)."""
  kernel = attention.proj.kernel[...]
  return jnp.einsum('blhd,hdo->blho', values, kernel.reshape(attention.heads, -1, kernel.shape[-1]))


def _smoothed(logits: jax.Array, targets: jax.Array, recipe: HeadRecipe) -> jax.Array:
  return optax.softmax_cross_entropy(logits, target_distribution(targets, recipe.label_smoothing)).mean()



def instrument(model: nnx.Module) -> None:
  """Makes the model sow what the auxiliary losses read."""
  model.transformer.sow_tokens = True
  for block in model.transformer.blocks:
    block.attn.sow_logits = True
