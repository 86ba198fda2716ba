"""Stage II Synchformer (offset classification) and its synchronizability variant.

Both towers produce token-level segment features; two projections and a small non-causal transformer
over [OFF, video tokens, MOD, audio tokens] classify the offset (21 classes) or synchronizability
(2 classes) from the OFF token. Returns `(logits, aux)` with the tower features in `aux`.
"""
from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from synchformer_jax.models.ast import AST
from synchformer_jax.models.config import ModelConfig, SyncTransformerConfig
from synchformer_jax.models.layers import (PreNormBlock, dense, layer_norm, normal_02, run_blocks,
                                           standard_normal, token)
from synchformer_jax.models.motionformer import Motionformer


def compute_dtype(cfg: ModelConfig):
  return jnp.dtype(cfg.dtype)


def remat_policy(cfg: ModelConfig) -> str | None:
  """The blocks' rematerialisation policy, or None without remat."""
  return cfg.remat_policy if cfg.remat else None


def video_tower(cfg: ModelConfig, rngs: nnx.Rngs) -> Motionformer:
  return Motionformer(cfg.video, remat=remat_policy(cfg), attention_impl=cfg.attention_impl,
                      dtype=compute_dtype(cfg), rngs=rngs)


def audio_tower(cfg: ModelConfig, rngs: nnx.Rngs) -> AST:
  return AST(cfg.audio, remat=remat_policy(cfg), attention_impl=cfg.attention_impl, dtype=compute_dtype(cfg),
             rngs=rngs)


class GlobalTransformer(nnx.Module):
  """minGPT-style encoder (no causal mask) over the concatenated segment tokens."""

  def __init__(self, cfg: SyncTransformerConfig, num_positions: int | None, num_classes: int, head_name: str, *,
               remat: str | None, attention_impl: str | None, dtype, rngs: nnx.Rngs, head_bias: bool = True):
    """`num_positions` None: no positional table (SparseSync's global transformer has none); `head_bias`
    False: a bias-free head (SparseSync's)."""
    self.remat = remat
    self.head_name = head_name
    self.vis_in_lnorm = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    self.aud_in_lnorm = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    self.OFF_tok = token((1, 1, cfg.dim), standard_normal, rngs)
    self.MOD_tok = token((1, 1, cfg.dim), standard_normal, rngs)
    self.pos_emb = None if num_positions is None else token((1, num_positions, cfg.dim), standard_normal, rngs)
    self.embd_dropout = nnx.Dropout(cfg.embd_dropout, rngs=rngs)
    self.blocks = nnx.List([PreNormBlock(cfg.dim, cfg.heads, cfg.mlp_dim, eps=cfg.eps, attn_dropout=cfg.attn_dropout,
                                         resid_dropout=cfg.resid_dropout, attention_impl=attention_impl,
                                         dtype=dtype, rngs=rngs, kernel_init=normal_02)
                            for _ in range(cfg.layers)])
    self.ln_f = layer_norm(cfg.dim, cfg.eps, rngs=rngs)
    # Named as the original (`off_head` / `sync_head`) so the checkpoint tells which task it was trained on.
    setattr(self, head_name, dense(cfg.dim, num_classes, ('embed', None), dtype=dtype, rngs=rngs,
                                   kernel_init=normal_02, use_bias=head_bias))
    # Opt-in (diagnostics): sow the OFF token's final feature (what the head reads) as `nnx.Intermediate`
    # 'off_feature'. A Python flag read when tracing, like the attention's `sow_attention`. `sow_tokens` sows
    # every token's final feature (after the final norm) as 'token_features' (training-only losses).
    self.sow_off_feature = False
    self.sow_tokens = False

  def __call__(self, vis: jax.Array, aud: jax.Array) -> jax.Array:
    """(B, Lv, D), (B, La, D) → logits (B, classes)."""
    b, dim = vis.shape[0], vis.shape[-1]
    n_tokens = vis.shape[1] + aud.shape[1] + 2
    if self.pos_emb is not None and n_tokens != self.pos_emb[...].shape[1]:
      raise ValueError(f'GlobalTransformer: {n_tokens} tokens but the positional table has '
                       f'{self.pos_emb[...].shape[1]} rows (check the number of segments)')
    vis = self.vis_in_lnorm(vis).astype(vis.dtype)
    aud = self.aud_in_lnorm(aud).astype(vis.dtype)
    off, mod = (jnp.broadcast_to(t[...], (b, 1, dim)).astype(vis.dtype) for t in (self.OFF_tok, self.MOD_tok))
    x = jnp.concatenate([off, vis, mod, aud], axis=1)
    if self.pos_emb is not None:
      x = x + self.pos_emb[...].astype(vis.dtype)
    x = run_blocks(self.blocks, self.embd_dropout(x), self.remat)
    if self.sow_tokens:
      features = self.ln_f(x)
      self.sow(nnx.Intermediate, 'token_features', features)
      cls = features[:, 0]
    else:
      cls = self.ln_f(x[:, 0])
    if self.sow_off_feature:
      self.sow(nnx.Intermediate, 'off_feature', cls)
    return getattr(self, self.head_name)(cls.astype(x.dtype)).astype(jnp.float32)


class Synchformer(nnx.Module):
  """Stage II / synchronizability model.

  Inputs in the original's Stage II layouts: video (B, S, 16, 3, H, W), audio (B, S, 1, 128, 66).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind not in ('sync', 'synchability'):
      raise ValueError(f"Synchformer: config kind must be 'sync' or 'synchability', got {cfg.kind!r}")
    self.cfg = cfg
    dtype = compute_dtype(cfg)
    t = cfg.transformer
    self.vfeat_extractor = video_tower(cfg, rngs)
    self.afeat_extractor = audio_tower(cfg, rngs)
    # torch's default Linear init: U(±1/sqrt(fan_in)) for weight and bias.
    torch_linear = nnx.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
    self.vproj = dense(cfg.video.dim, t.dim, (None, 'embed'), dtype=dtype, rngs=rngs, kernel_init=torch_linear)
    self.aproj = dense(cfg.audio.dim, t.dim, (None, 'embed'), dtype=dtype, rngs=rngs, kernel_init=torch_linear)
    head = 'sync_head' if cfg.kind == 'synchability' else 'off_head'
    self.transformer = GlobalTransformer(t, cfg.num_positions, cfg.num_classes, head, remat=remat_policy(cfg),
                                         attention_impl=cfg.attention_impl, dtype=dtype, rngs=rngs)

  def extract_features(self, video: jax.Array, audio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The frozen towers: (B, S, 8, Dv) video and (B, S, 6, Da) audio segment tokens."""
    b, s = video.shape[:2]
    vfeat = self.vfeat_extractor(einops.rearrange(video, 'b s t c h w -> (b s) c t h w'))
    afeat = self.afeat_extractor(einops.rearrange(audio, 'b s 1 f t -> (b s) t f'))
    return vfeat.reshape(b, s, *vfeat.shape[1:]), afeat.reshape(b, s, *afeat.shape[1:])

  def classify(self, vfeat: jax.Array, afeat: jax.Array) -> jax.Array:
    """Segment tokens → logits: the part Stage II trains when the towers are frozen."""
    vis = self.vproj(vfeat)
    aud = self.aproj(afeat)
    return self.transformer(einops.rearrange(vis, 'b s t d -> b (s t) d'),
                            einops.rearrange(aud, 'b s t d -> b (s t) d'))

  def __call__(self, video: jax.Array, audio: jax.Array, targets: jax.Array | None = None):
    vfeat, afeat = self.extract_features(video, audio)
    logits = self.classify(vfeat, afeat)
    aux = {'vfeat_extractor': vfeat, 'afeat_extractor': afeat}
    if targets is not None:
      aux['loss'] = classification_loss(logits, targets)
    return logits, aux


def classification_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean cross-entropy against class indices (no label smoothing, as the original)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()
