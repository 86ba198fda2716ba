"""Motionformer video tower: divided space-time ViT-B/16 with a 2×16×16 tubelet embedding.

Per block: time attention, space attention, MLP. The CLS token takes part in both attentions as a
global query and as an extra key/value of every group. After the final norm the CLS is dropped and
each frame's patches are pooled by a `ClsAggregator` into one token: (N, 16, 3, H, W) → (N, 8, D).
"""
from __future__ import annotations

import math

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from synchformer_jax.models.config import VideoTowerConfig
from synchformer_jax.models.layers import (Buffer, ClsAggregator, DropPath, Mlp, MultiHeadAttention, attend,
                                           dense, layer_norm, run_blocks, token, trunc_normal_02)


def _torch_bicubic_matrix(in_size: int, scale_factor: float) -> np.ndarray:
  """(out, in) matrix of torch's `interpolate(mode='bicubic', scale_factor=s)` along one axis.

  torch maps output pixel d to source (d + 0.5) / s - 0.5 using the given factor (not in/out sizes),
  uses the cubic convolution kernel with A = -0.75 and clamps taps at the borders.
  """
  out_size = int(math.floor(in_size * scale_factor))
  inv_scale = np.float32(1.0 / scale_factor)
  a = -0.75
  weights = np.zeros((out_size, in_size), np.float64)
  for d in range(out_size):
    src = float(inv_scale * np.float32(d + 0.5) - np.float32(0.5))
    base = math.floor(src)
    t = src - base
    taps = (
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
        ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
    )
    for offset, w in zip(range(-1, 3), taps):
      weights[d, min(max(base + offset, 0), in_size - 1)] += w
  return weights.astype(np.float32)


class PatchEmbed3d(nnx.Module):
  """Non-overlapping tubelets flattened in (C, kt, kh, kw) order times a matrix: the original's Conv3d."""

  def __init__(self, cfg: VideoTowerConfig, *, dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    self.proj = dense(3 * cfg.tubelet * cfg.patch * cfg.patch, cfg.dim, (None, 'embed'), dtype=dtype, rngs=rngs)

  def __call__(self, video: jax.Array) -> jax.Array:
    """(N, C, T, H, W) → (N, T'·H'·W', D) in (t, h, w) order."""
    p, kt = self.cfg.patch, self.cfg.tubelet
    tubelets = einops.rearrange(video, 'n c (t kt) (h kh) (w kw) -> n (t h w) (c kt kh kw)', kt=kt, kh=p, kw=p)
    return self.proj(tubelets)


# How patch tokens (n, t·p) are grouped: one spatial position over time, or one frame over space.
_GROUPS = {'time': '(n p) t h d', 'space': '(n t) p h d'}


class DividedAttention(MultiHeadAttention):
  """Attention within groups of patch tokens (one spatial position over time, or one frame over space).

  Patch queries see their group's keys plus the CLS key; the CLS query sees every key.
  """

  def cls_attention(self, q_cls: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The CLS query (N, 1, H, Dh) over all keys (N, L, H, Dh), as multiply-reduce on the projection's layout.

    A single query is a matrix-vector product: as a dot, XLA-CPU first copies K and V to a
    (N, H, Dh, L) layout, which costs more than the product itself.
    """
    logits = (q_cls * k).sum(-1, dtype=jnp.float32) * self.scale  # (N, L, H)
    weights = jax.nn.softmax(logits, axis=1).astype(v.dtype)
    return (weights[..., None] * v).sum(1, keepdims=True, dtype=jnp.float32).astype(v.dtype)

  def __call__(self, x: jax.Array, *, over: str, time_tokens: int) -> jax.Array:
    n = x.shape[0]
    q, k, v = self.project_qkv(x)  # (N, 1 + T·P, H, Dh)
    cls_out = self.cls_attention(q[:, :1], k, v)
    tokens, groups = 'n (t p) h d', _GROUPS[over]
    q_g, k_g, v_g = (einops.rearrange(a[:, 1:], f'{tokens} -> {groups}', t=time_tokens) for a in (q, k, v))
    per_clip = q_g.shape[0] // n
    k_g, v_g = (jnp.concatenate([jnp.repeat(a[:, :1], per_clip, axis=0), g], axis=1)
                for a, g in ((k, k_g), (v, v_g)))
    out = attend(q_g, k_g, v_g, scale=self.scale, implementation=self.attention_impl)
    out = einops.rearrange(out, f'{groups} -> {tokens}', n=n)
    return self.merge_heads(jnp.concatenate([cls_out, out], axis=1))


class DividedSpaceTimeBlock(nnx.Module):
  """x + TimeAttn(norm3(x)); x + DropPath(SpaceAttn(norm1(x))); x + DropPath(MLP(norm2(x)))."""

  def __init__(self, cfg: VideoTowerConfig, drop_path: float, *, attention_impl, dtype, rngs: nnx.Rngs):
    self.time_tokens = cfg.time_tokens
    self.norm1 = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    self.attn = DividedAttention(cfg.dim, cfg.heads, attention_impl=attention_impl, dtype=dtype, rngs=rngs)
    self.timeattn = DividedAttention(cfg.dim, cfg.heads, attention_impl=attention_impl, dtype=dtype,
                                     rngs=rngs)
    self.norm2 = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    self.mlp = Mlp(cfg.dim, cfg.mlp_dim, dtype=dtype, rngs=rngs)
    self.norm3 = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    self.drop_path = DropPath(drop_path, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.timeattn(self.norm3(x).astype(x.dtype), over='time', time_tokens=self.time_tokens)
    x = x + self.drop_path(self.attn(self.norm1(x).astype(x.dtype), over='space', time_tokens=self.time_tokens))
    return x + self.drop_path(self.mlp(self.norm2(x).astype(x.dtype)))


class Motionformer(nnx.Module):
  """Video segment feature extractor: (N, 3, 16, H, W) → (N, 8, D) frame-pair tokens."""

  def __init__(self, cfg: VideoTowerConfig, *, remat: str | None = None, attention_impl: str | None = None,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.remat = remat
    self.dtype = dtype
    self.cls_token = token((1, 1, cfg.dim), trunc_normal_02, rngs)
    self.pos_embed = token((1, 1 + cfg.pos_grid ** 2, cfg.dim), trunc_normal_02, rngs)
    self.temp_embed = token((1, cfg.time_tokens, cfg.dim), trunc_normal_02, rngs)
    # The original also builds a 2-D patch embedding it never calls; kept (untrained) for exact round trips.
    self.patch_embed = Buffer(jnp.zeros((cfg.dim, 3, cfg.patch, cfg.patch), jnp.float32),
                              out_sharding=('embed', None, None, None))
    self.patch_embed_bias = Buffer(jnp.zeros((cfg.dim,), jnp.float32), out_sharding=('embed',))
    self.patch_embed_3d = PatchEmbed3d(cfg, dtype=dtype, rngs=rngs)
    rates = np.linspace(0.0, cfg.drop_path, cfg.depth) if cfg.depth > 1 else [0.0]
    self.blocks = nnx.List([DividedSpaceTimeBlock(cfg, float(r), attention_impl=attention_impl, dtype=dtype,
                                                  rngs=rngs) for r in rates])
    self.norm = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    self.spatial_attn_agg = ClsAggregator(cfg.dim, cfg.heads, cfg.mlp_dim, eps=cfg.eps,
                                          attention_impl=attention_impl, dtype=dtype, rngs=rngs)

  def spatial_pos_embed(self) -> jax.Array:
    """(P, D) spatial table; resized bicubically (as the original) when the crop is not 224 px."""
    table = self.pos_embed[...][0, 1:]
    g, grid = self.cfg.pos_grid, self.cfg.grid
    if grid == g:
      return table
    resize = jnp.asarray(_torch_bicubic_matrix(g, math.sqrt(grid * grid / (g * g))))
    if resize.shape[0] != grid:
      raise ValueError(f'Motionformer: cannot resize a {g}x{g} position grid to {grid}x{grid}')
    table = table.reshape(g, g, -1)
    return jnp.einsum('yi,xj,ijd->yxd', resize, resize, table, precision='highest').reshape(grid * grid, -1)

  def __call__(self, video: jax.Array) -> jax.Array:
    """(N, 3, T, H, W) → (N, T/2, D)."""
    cfg = self.cfg
    if video.shape[1:] != (3, cfg.frames, cfg.crop, cfg.crop):
      raise ValueError(f'Motionformer: expected video (N, 3, {cfg.frames}, {cfg.crop}, {cfg.crop}), '
                       f'got {video.shape}')
    n = video.shape[0]
    x = self.patch_embed_3d(video.astype(self.dtype))
    pos = (self.spatial_pos_embed()[None, :, :] + self.temp_embed[...][0][:, None, :]).reshape(-1, cfg.dim)
    cls = self.cls_token[...][0] + self.pos_embed[...][0, :1]
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, cfg.dim)).astype(x.dtype),
                         x + pos.astype(x.dtype)], axis=1)
    x = run_blocks(self.blocks, x, self.remat)
    x = self.norm(x[:, 1:]).astype(x.dtype)
    frames = einops.rearrange(x, 'n (t p) d -> (n t) p d', t=cfg.time_tokens)
    return self.spatial_attn_agg(frames).reshape(n, cfg.time_tokens, cfg.dim)
