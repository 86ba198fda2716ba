"""AST audio tower: a ViT over 16×16 log-mel patches with stride 10, plus frequency aggregation.

(N, 66, 128) log-mel frames → 12×6 (freq × time) patch tokens → 12 pre-LN layers → per time column,
the 12 frequency tokens are pooled by a `ClsAggregator`: (N, 6, D).
"""
from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from synchformer_jax.models.config import AudioTowerConfig
from synchformer_jax.models.layers import ClsAggregator, PreNormBlock, layer_norm, run_blocks, token, trunc_normal_02


class AST(nnx.Module):
  """Audio segment feature extractor: (N, T=66, F=128) → (N, 6, D)."""

  def __init__(self, cfg: AudioTowerConfig, *, remat: str | None = None, attention_impl: str | None = None,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.remat = remat
    self.dtype = dtype
    self.cls_token = token((1, 1, cfg.dim), trunc_normal_02, rngs)
    self.distillation_token = token((1, 1, cfg.dim), trunc_normal_02, rngs)
    n_tokens = 2 + cfg.freq_tokens * cfg.time_tokens
    self.position_embeddings = token((1, n_tokens, cfg.dim), trunc_normal_02, rngs)
    # Height = frequency, width = time, as the original's (N, 1, F, T) "image".
    self.patch_embed = nnx.Conv(1, cfg.dim, (cfg.patch, cfg.patch), strides=(cfg.stride, cfg.stride),
                                padding='VALID', dtype=dtype, param_dtype=jnp.float32,
                                kernel_init=nnx.with_partitioning(trunc_normal_02, (None, None, None, 'embed')),
                                bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ('embed',)),
                                rngs=rngs)
    self.layers = nnx.List([PreNormBlock(cfg.dim, cfg.heads, cfg.mlp_dim, eps=cfg.eps, attention_impl=attention_impl,
                                         dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
    self.layernorm = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    self.freq_attn_agg = ClsAggregator(cfg.dim, cfg.heads, cfg.mlp_dim, eps=cfg.agg_eps,
                                       attention_impl=attention_impl, dtype=dtype, rngs=rngs)

  def __call__(self, spec: jax.Array) -> jax.Array:
    """(N, T, F) log-mel → (N, time_tokens, D)."""
    cfg = self.cfg
    if spec.shape[1:] != (cfg.n_frames, cfg.n_mels):
      raise ValueError(f'AST: expected audio (N, {cfg.n_frames}, {cfg.n_mels}), got {spec.shape}')
    n = spec.shape[0]
    image = jnp.swapaxes(spec, 1, 2)[..., None].astype(self.dtype)  # (N, F, T, 1)
    patches = self.patch_embed(image).reshape(n, -1, cfg.dim)  # (freq, time) order
    aux = jnp.concatenate([self.cls_token[...], self.distillation_token[...]], axis=1)
    x = jnp.concatenate([jnp.broadcast_to(aux, (n, 2, cfg.dim)).astype(patches.dtype), patches], axis=1)
    x = x + self.position_embeddings[...].astype(x.dtype)
    x = run_blocks(self.layers, x, self.remat)
    x = self.layernorm(x[:, 2:]).astype(x.dtype)
    columns = einops.rearrange(x, 'n (f t) d -> (n t) f d', f=cfg.freq_tokens)
    return self.freq_attn_agg(columns).reshape(n, cfg.time_tokens, cfg.dim)
