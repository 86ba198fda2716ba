"""SparseSync (Iashin et al., BMVC 2022): S3D video and ResNet-18 audio trunks, trainable selectors.

video (B, 125, 3, 224, 224) → S3D → (B, 16, 7, 7, 1024) → 1×1×1 conv + GELU → (B, 16, 7, 7, 512)
audio (B, 1, 257, 626)      → ResNet-18 → (B, 9, 20, 512)
each → LayerNorm → + axial positional table → a selector stack (16 learned queries that cross-attend to
the tokens) → the global transformer over [OFF, 16 video selectors, MOD, 16 audio selectors] → a bias-free
offset head on OFF. Returns `(logits, aux)`; `aux` holds the trunks' outputs in the original's layouts
(`vfeat_extractor` (B, T, C, H, W), `afeat_extractor` (B, C, F, T)) and, with targets, the loss.

The module tree follows the original's (`vfeat_extractor.base.5.branch1.1.conv_s`, …) so the conversion
table is a line-by-line reading of it. Convolutions run channels-last; BatchNorm is the original's: batch
statistics and running updates in train mode (taken over the whole batch, as the original's SyncBatchNorm
does under data parallelism), running statistics in eval mode.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from synchformer_jax.models.config import SparseSyncConfig, SyncTransformerConfig
from synchformer_jax.models.layers import (REMAT_POLICIES, Buffer, Mlp, MultiHeadAttention, attend, attention_weights,
                                           dense, gelu, layer_norm, normal_02, run_blocks, standard_normal, token,
                                           weighted_values)
from synchformer_jax.models.synchformer import GlobalTransformer, classification_loss

# The trunks' convolutions start as torchvision's ResNet does (He normal over fan-out); published weights
# replace them (the S3D Kinetics and ResNet VGGSound checkpoints).
_conv_init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# torch's default Conv3d init (the visual bridge is not in any released tower checkpoint).
_torch_default_init = nnx.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


class RunningStat(Buffer):
  """A BatchNorm running statistic: not trained, updated in train mode, stored and converted."""


class BatchNorm(nnx.Module):
  """torch's BatchNorm over the last (channel) axis, with its eps and momentum conventions.

  Train mode normalises with the batch mean and biased variance over every other axis and moves the running
  mean and (unbiased) variance by `momentum` towards them; `num_batches_tracked` counts the updates, as
  torch does (unused with a fixed momentum; kept so checkpoints round-trip).
  """

  def __init__(self, features: int, *, eps: float, momentum: float):
    self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
    self.mean = RunningStat(jnp.zeros((features,), jnp.float32))
    self.var = RunningStat(jnp.ones((features,), jnp.float32))
    self.num_batches_tracked = RunningStat(jnp.zeros((), jnp.int32))
    self.eps, self.momentum = eps, momentum
    self.use_running_average = False

  def __call__(self, x: jax.Array) -> jax.Array:
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      mean = jnp.mean(xf, axis=axes)
      var = jnp.mean(jnp.square(xf - mean), axis=axes)
      n = math.prod(x.shape[a] for a in axes)
      m = self.momentum
      self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
      self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(var) * (n / max(n - 1, 1))
      self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
    return y.astype(x.dtype)


def _conv(in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], *,
          dtype, rngs: nnx.Rngs, use_bias: bool = False, kernel_init=_conv_init) -> nnx.Conv:
  """A convolution with torch's symmetric zero padding (never 'SAME', which pads stride-2 inputs unevenly)."""
  return nnx.Conv(in_ch, out_ch, tuple(kernel), strides=tuple(stride), padding=tuple((p, p) for p in padding),
                  use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                  bias_init=nnx.initializers.zeros_init(), rngs=rngs)


class MaxPool(nnx.Module):
  """torch MaxPool (ceil_mode False): padding never wins the max."""

  def __init__(self, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]):
    self.kernel, self.stride, self.padding = tuple(kernel), tuple(stride), tuple(padding)

  def __call__(self, x: jax.Array) -> jax.Array:
    window = (1, *self.kernel, 1)
    strides = (1, *self.stride, 1)
    pads = ((0, 0), *((p, p) for p in self.padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)


# ---- S3D (plain, without feature gating) ---------------------------------------------------------------------

S3D_BN = dict(eps=1e-3, momentum=1e-3)


class BasicConv3d(nnx.Module):
  """1×1×1 conv → BN → ReLU."""

  def __init__(self, in_ch: int, out_ch: int, *, dtype, rngs: nnx.Rngs):
    self.conv = _conv(in_ch, out_ch, (1, 1, 1), (1, 1, 1), (0, 0, 0), dtype=dtype, rngs=rngs)
    self.bn = BatchNorm(out_ch, **S3D_BN)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


class SepConv3d(nnx.Module):
  """(2+1)D: a (1, k, k) spatial conv → BN → ReLU, then a (k, 1, 1) temporal conv → BN → ReLU."""

  def __init__(self, in_ch: int, out_ch: int, k: int, s: int, p: int, *, dtype, rngs: nnx.Rngs):
    self.conv_s = _conv(in_ch, out_ch, (1, k, k), (1, s, s), (0, p, p), dtype=dtype, rngs=rngs)
    self.bn_s = BatchNorm(out_ch, **S3D_BN)
    self.conv_t = _conv(out_ch, out_ch, (k, 1, 1), (s, 1, 1), (p, 0, 0), dtype=dtype, rngs=rngs)
    self.bn_t = BatchNorm(out_ch, **S3D_BN)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.bn_s(self.conv_s(x)))
    return jax.nn.relu(self.bn_t(self.conv_t(x)))


class Mixed(nnx.Module):
  """An inception block: [1×1×1 | 1×1×1 → sep 3 | 1×1×1 → sep 3 | max-pool 3 → 1×1×1], concatenated."""

  def __init__(self, in_ch: int, c0: int, r1: int, c1: int, r2: int, c2: int, c3: int, *, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.branch0 = nnx.List([BasicConv3d(in_ch, c0, **kw)])
    self.branch1 = nnx.List([BasicConv3d(in_ch, r1, **kw), SepConv3d(r1, c1, 3, 1, 1, **kw)])
    self.branch2 = nnx.List([BasicConv3d(in_ch, r2, **kw), SepConv3d(r2, c2, 3, 1, 1, **kw)])
    self.branch3 = nnx.List([MaxPool((3, 3, 3), (1, 1, 1), (1, 1, 1)), BasicConv3d(in_ch, c3, **kw)])

  def __call__(self, x: jax.Array) -> jax.Array:
    outs = []
    for branch in (self.branch0, self.branch1, self.branch2, self.branch3):
      y = x
      for layer in branch:
        y = layer(y)
      outs.append(y)
    return jnp.concatenate(outs, axis=-1)


# The mixed blocks' widths (c0, r1, c1, r2, c2, c3) at their `base` indices; the input width follows.
S3D_MIXED = {5: (64, 96, 128, 16, 32, 32), 6: (128, 128, 192, 32, 96, 64), 8: (192, 96, 208, 16, 48, 64),
             9: (160, 112, 224, 24, 64, 64), 10: (128, 128, 256, 24, 64, 64), 11: (112, 144, 288, 32, 64, 64),
             12: (256, 160, 320, 32, 128, 128), 14: (256, 160, 320, 32, 128, 128), 15: (384, 192, 384, 48, 128, 128)}
# The max pools at their `base` indices: (kernel, stride, padding) over (T, H, W).
S3D_POOLS = {1: ((1, 3, 3), (1, 2, 2), (0, 1, 1)), 4: ((1, 3, 3), (1, 2, 2), (0, 1, 1)),
             7: ((3, 3, 3), (2, 2, 2), (1, 1, 1)), 13: ((2, 2, 2), (2, 2, 2), (0, 0, 0))}


def s3d_widths(divisor: int) -> dict[int, tuple[int, ...]]:
  """The mixed blocks' widths, each divided by `divisor` (1: the published S3D)."""
  return {i: tuple(max(c // divisor, 1) for c in w) for i, w in S3D_MIXED.items()}


def s3d_out_channels(divisor: int) -> int:
  w = s3d_widths(divisor)[15]
  return w[0] + w[2] + w[4] + w[5]


class S3D(nnx.Module):
  """The S3D trunk (`base.0` … `base.15`), channels-last: (B, T, H, W, 3) → (B, T', H', W', 1024)."""

  def __init__(self, width_divisor: int = 1, *, remat: str | None = None, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    widths = s3d_widths(width_divisor)
    stem, mid = max(64 // width_divisor, 1), max(192 // width_divisor, 1)
    layers: list[nnx.Module] = [SepConv3d(3, stem, 7, 2, 3, **kw), MaxPool(*S3D_POOLS[1]),
                                BasicConv3d(stem, stem, **kw), SepConv3d(stem, mid, 3, 1, 1, **kw)]
    in_ch = mid
    for index in range(4, 16):
      if index in S3D_POOLS:
        layers.append(MaxPool(*S3D_POOLS[index]))
        continue
      c0, r1, c1, r2, c2, c3 = widths[index]
      layers.append(Mixed(in_ch, c0, r1, c1, r2, c2, c3, **kw))
      in_ch = c0 + c1 + c2 + c3
    self.base = nnx.List(layers)
    self.remat = remat

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.base:
      x = checkpointed(layer, self.remat, x) if isinstance(layer, Mixed) else layer(x)
    return x


def checkpointed(layer: nnx.Module, remat: str | None, *args: jax.Array) -> jax.Array:
  """`layer(*args)`, rematerialised in the backward pass under the named policy (None: plain).

  Layers of different shapes (the mixed blocks) cannot share a scan, so each is its own checkpoint.
  """
  if remat is None:
    return layer(*args)
  return nnx.remat(lambda module, *xs: module(*xs), policy=REMAT_POLICIES[remat])(layer, *args)


# ---- ResNet-18 audio trunk ------------------------------------------------------------------------------------

RESNET_BN = dict(eps=1e-5, momentum=0.1)


class BasicBlock(nnx.Module):
  """torchvision's BasicBlock: 3×3 (stride s) → BN → ReLU → 3×3 → BN, plus the (downsampled) input, ReLU."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, *, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = _conv(in_ch, out_ch, (3, 3), (stride, stride), (1, 1), **kw)
    self.bn1 = BatchNorm(out_ch, **RESNET_BN)
    self.conv2 = _conv(out_ch, out_ch, (3, 3), (1, 1), (1, 1), **kw)
    self.bn2 = BatchNorm(out_ch, **RESNET_BN)
    if stride != 1 or in_ch != out_ch:
      self.downsample = nnx.List([_conv(in_ch, out_ch, (1, 1), (stride, stride), (0, 0), **kw),
                                  BatchNorm(out_ch, **RESNET_BN)])
    else:
      self.downsample = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
    return jax.nn.relu(y + shortcut)


class ResNetAudio(nnx.Module):
  """ResNet-18 on a 1-channel spectrogram, no pooling or classifier: (B, F, T, 1) → (B, F', T', 8·width)."""

  def __init__(self, width: int = 64, *, remat: str | None = None, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.conv1 = _conv(1, width, (7, 7), (2, 2), (3, 3), **kw)
    self.bn1 = BatchNorm(width, **RESNET_BN)
    self.maxpool = MaxPool((3, 3), (2, 2), (1, 1))
    in_ch = width
    for stage in range(1, 5):
      out_ch = width * 2 ** (stage - 1)
      stride = 1 if stage == 1 else 2
      setattr(self, f'layer{stage}', nnx.List([BasicBlock(in_ch, out_ch, stride, **kw),
                                               BasicBlock(out_ch, out_ch, 1, **kw)]))
      in_ch = out_ch
    self.remat = remat

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.maxpool(jax.nn.relu(self.bn1(self.conv1(x))))
    for stage in range(1, 5):
      for block in getattr(self, f'layer{stage}'):
        x = checkpointed(block, self.remat, x)
    return x


# ---- the selector head -----------------------------------------------------------------------------------------

def _embed(rows: int, dim: int, rngs: nnx.Rngs) -> nnx.Embed:
  return nnx.Embed(rows, dim, embedding_init=normal_02, param_dtype=jnp.float32, rngs=rngs)


def _table(embed: nnx.Embed, n: int) -> jax.Array:
  """The leading `n` rows of a table (a smaller grid uses the leading rows, as the original's `arange`)."""
  table = embed.embedding[...]
  if n > table.shape[0]:
    raise ValueError(f'positional table of {table.shape[0]} rows cannot index {n} positions')
  return table[:n]


class VisualPositions(nnx.Module):
  """Axial learned positions for (B, T, H, W, D) tokens, concatenated in the original's order t | w | h."""

  def __init__(self, shape: tuple[int, int, int], dim: int, *, rngs: nnx.Rngs):
    spatial = dim // 3
    self.time_embed = _embed(shape[0], dim - 2 * spatial, rngs)
    self.height_embed = _embed(shape[1], spatial, rngs)
    self.width_embed = _embed(shape[2], spatial, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    _, t, h, w, _ = x.shape
    tt, hh, ww = _table(self.time_embed, t), _table(self.height_embed, h), _table(self.width_embed, w)
    pos = jnp.concatenate([jnp.broadcast_to(tt[:, None, None], (t, h, w, tt.shape[-1])),
                           jnp.broadcast_to(ww[None, None, :], (t, h, w, ww.shape[-1])),
                           jnp.broadcast_to(hh[None, :, None], (t, h, w, hh.shape[-1]))], axis=-1)
    return x + pos.astype(x.dtype)


class AudioPositions(nnx.Module):
  """Axial learned positions for (B, F, T, D) tokens, concatenated f | t."""

  def __init__(self, shape: tuple[int, int], dim: int, *, rngs: nnx.Rngs):
    self.freq_embed = _embed(shape[0], dim // 2, rngs)
    self.time_embed = _embed(shape[1], dim - dim // 2, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    _, f, t, _ = x.shape
    ff, tt = _table(self.freq_embed, f), _table(self.time_embed, t)
    pos = jnp.concatenate([jnp.broadcast_to(ff[:, None], (f, t, ff.shape[-1])),
                           jnp.broadcast_to(tt[None, :], (f, t, tt.shape[-1]))], axis=-1)
    return x + pos.astype(x.dtype)


class CrossAttention(nnx.Module):
  """Queries from one sequence, keys and values from another; separate q, k, v and output projections."""

  def __init__(self, dim: int, heads: int, *, attn_dropout: float, resid_dropout: float,
               attention_impl: str | None, dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, rngs=rngs, kernel_init=normal_02)
    self.heads = heads
    self.scale = (dim // heads) ** -0.5
    self.attention_impl = attention_impl
    self.query = dense(dim, dim, ('embed', 'qkv'), **kw)
    self.key = dense(dim, dim, ('embed', 'qkv'), **kw)
    self.value = dense(dim, dim, ('embed', 'qkv'), **kw)
    self.proj = dense(dim, dim, ('qkv', 'embed'), **kw)
    self.attn_dropout = nnx.Dropout(attn_dropout, rngs=rngs)
    self.resid_dropout = nnx.Dropout(resid_dropout, rngs=rngs)
    # Opt-in (the evidence figure): sow the weights (B, heads, queries, keys) as 'attention_weights'.
    self.sow_attention = False

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    split = lambda y: y.reshape(*y.shape[:-1], self.heads, -1)
    q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
    if self.sow_attention:
      weights = attention_weights(q, k, scale=self.scale)
      self.sow(nnx.Intermediate, 'attention_weights', weights)
      out = weighted_values(self.attn_dropout(weights), v)
    else:
      out = attend(q, k, v, scale=self.scale, dropout=self.attn_dropout, implementation=self.attention_impl)
    return self.resid_dropout(self.proj(out.reshape(*out.shape[:-2], -1)))


class CrossBlock(nnx.Module):
  """Pre-LN decoder block: self-attention among the queries, cross-attention to the context, MLP."""

  def __init__(self, cfg: SyncTransformerConfig, *, attention_impl: str | None, dtype, rngs: nnx.Rngs):
    drops = dict(attn_dropout=cfg.attn_dropout, resid_dropout=cfg.resid_dropout)
    self.ln1 = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    self.attn = MultiHeadAttention(cfg.dim, cfg.heads, **drops, attention_impl=attention_impl, dtype=dtype,
                                   rngs=rngs, kernel_init=normal_02)
    self.ln2 = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    self.xattn = CrossAttention(cfg.dim, cfg.heads, **drops, attention_impl=attention_impl, dtype=dtype, rngs=rngs)
    self.ln3 = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    self.mlp = Mlp(cfg.dim, cfg.mlp_dim, dropout=cfg.resid_dropout, dtype=dtype, rngs=rngs, kernel_init=normal_02)

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    x = x + self.attn(self.ln1(x).astype(x.dtype))
    x = x + self.xattn(self.ln2(x).astype(x.dtype), context)
    return x + self.mlp(self.ln3(x).astype(x.dtype))


class FeatureSelector(nnx.Module):
  """Learned queries (plus a learned position each) that read a token sequence through cross-attention
  blocks; the context is neither normalised nor updated between blocks, and there is no output norm."""

  def __init__(self, cfg: SyncTransformerConfig, num_selectors: int, *, remat: str | None,
               attention_impl: str | None, dtype, rngs: nnx.Rngs):
    self.selectors = token((num_selectors, cfg.dim), standard_normal, rngs)
    self.selectors_pos_emb = _embed(num_selectors, cfg.dim, rngs)
    self.selectors_drop = nnx.Dropout(cfg.embd_dropout, rngs=rngs)
    self.context_drop = nnx.Dropout(cfg.embd_dropout, rngs=rngs)
    self.blocks = nnx.List([CrossBlock(cfg, attention_impl=attention_impl, dtype=dtype, rngs=rngs)
                            for _ in range(cfg.layers)])
    self.remat = remat

  def __call__(self, context: jax.Array) -> jax.Array:
    """(B, N, D) → (B, num_selectors, D)."""
    queries = self.selectors[...] + self.selectors_pos_emb.embedding[...]
    x = self.selectors_drop(jnp.broadcast_to(queries.astype(context.dtype), (context.shape[0], *queries.shape)))
    context = self.context_drop(context)
    for block in self.blocks:
      x = checkpointed(block, self.remat, x, context)
    return x


class SparseSyncHead(nnx.Module):
  """The original's `transformer` (class SparseSync): input norms, positions, selectors, global transformer."""

  def __init__(self, cfg: SparseSyncConfig, *, remat: str | None, dtype, rngs: nnx.Rngs):
    t = cfg.transformer
    kw = dict(remat=remat, attention_impl=cfg.attention_impl, dtype=dtype, rngs=rngs)
    self.pre_lnorm_vis = layer_norm(t.dim, t.eps, rngs=rngs)
    self.pre_lnorm_aud = layer_norm(t.dim, t.eps, rngs=rngs)
    self.vis_pos_emb = VisualPositions(cfg.visual_block_shape, t.dim, rngs=rngs)
    self.aud_pos_emb = AudioPositions(cfg.audio_block_shape, t.dim, rngs=rngs)
    self.v_selector = FeatureSelector(t, cfg.num_selectors, **kw)
    self.a_selector = FeatureSelector(t, cfg.num_selectors, **kw)
    self.global_transformer = GlobalTransformer(t, None, cfg.num_classes, 'off_head', head_bias=False, **kw)

  def __call__(self, vis: jax.Array, aud: jax.Array) -> jax.Array:
    """(B, T, H, W, D) video and (B, F, T, D) audio tokens → logits (B, classes)."""
    vis = self.vis_pos_emb(self.pre_lnorm_vis(vis).astype(vis.dtype))
    aud = self.aud_pos_emb(self.pre_lnorm_aud(aud).astype(aud.dtype))
    vis = self.v_selector(vis.reshape(vis.shape[0], -1, vis.shape[-1]))
    aud = self.a_selector(aud.reshape(aud.shape[0], -1, aud.shape[-1]))
    return self.global_transformer(vis, aud)


class VisualBridge(nnx.Module):
  """The 1×1×1 Conv3d (with bias) from S3D's width to the head's, then exact GELU: a Dense on channels."""

  def __init__(self, in_ch: int, out_ch: int, *, dtype, rngs: nnx.Rngs):
    self.proj = dense(in_ch, out_ch, (None, 'embed'), dtype=dtype, rngs=rngs, kernel_init=_torch_default_init)

  def __call__(self, x: jax.Array) -> jax.Array:
    return gelu(self.proj(x))


class SparseSync(nnx.Module):
  """The AVSyncModel: inputs video (B, T, 3, H, W) (ImageNet-normalised) and audio (B, 1, F, T) (standardised
  log power spectrogram)."""

  def __init__(self, cfg: SparseSyncConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    remat = cfg.remat_policy if cfg.remat else None
    self.vfeat_extractor = sparsesync_tower('s3d', cfg, rngs)
    self.afeat_extractor = sparsesync_tower('resnet_audio', cfg, rngs)
    self.v_bridge = VisualBridge(s3d_out_channels(cfg.s3d_width_divisor), cfg.transformer.dim, dtype=dtype,
                                 rngs=rngs)
    self.transformer = SparseSyncHead(cfg, remat=remat, dtype=dtype, rngs=rngs)

  def video_features(self, video: jax.Array) -> jax.Array:
    """The S3D trunk on (B, T, 3, H, W) video: channels-last (B, T', H', W', C) features."""
    return self.vfeat_extractor(jnp.transpose(video, (0, 1, 3, 4, 2)).astype(jnp.dtype(self.cfg.dtype)))

  def audio_features(self, audio: jax.Array) -> jax.Array:
    """The ResNet trunk on (B, 1, F, T) spectrograms: channels-last (B, F', T', C) features."""
    return self.afeat_extractor(jnp.transpose(audio, (0, 2, 3, 1)).astype(jnp.dtype(self.cfg.dtype)))

  def extract_features(self, video: jax.Array, audio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both trunks: (B, T', H', W', C) video and (B, F', T', C) audio features."""
    return self.video_features(video), self.audio_features(audio)

  def classify(self, vfeat: jax.Array, afeat: jax.Array) -> jax.Array:
    return self.transformer(self.v_bridge(vfeat), afeat)

  def __call__(self, video: jax.Array, audio: jax.Array, targets: jax.Array | None = None):
    vfeat, afeat = self.extract_features(video, audio)
    logits = self.classify(vfeat, afeat)
    aux = {'vfeat_extractor': jnp.transpose(vfeat, (0, 1, 4, 2, 3)).astype(jnp.float32),
           'afeat_extractor': jnp.transpose(afeat, (0, 3, 1, 2)).astype(jnp.float32)}
    if targets is not None:
      aux['loss'] = classification_loss(logits, targets)
    return logits, aux


def sparsesync_tower(tower: str, cfg: SparseSyncConfig, rngs: nnx.Rngs) -> nnx.Module:
  """One trunk of a SparseSync model alone ('s3d' or 'resnet_audio'), as its initial-weight checkpoints hold it."""
  dtype, remat = jnp.dtype(cfg.dtype), cfg.remat_policy if cfg.remat else None
  if tower == 's3d':
    return S3D(cfg.s3d_width_divisor, remat=remat, dtype=dtype, rngs=rngs)
  return ResNetAudio(cfg.resnet_width, remat=remat, dtype=dtype, rngs=rngs)
