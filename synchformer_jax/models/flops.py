"""Analytic FLOP counts of the models' forward passes, from a `ModelConfig` alone.

Counts the matrix products (projections, attention scores and weighted values, patch embeddings) at
2 FLOPs per multiply-add, per clip of `n_segments` segments. Elementwise work (softmax, GELU,
LayerNorm, residuals) is left out: it is about 1-2 % of XLA's count, which includes it.
"""
from __future__ import annotations

from synchformer_jax.models.config import AudioTowerConfig, ModelConfig, SyncTransformerConfig, VideoTowerConfig


def linear(tokens: int, d_in: int, d_out: int) -> int:
  """A dense layer (or patch embedding) applied to `tokens` tokens."""
  return 2 * tokens * d_in * d_out


def _attention_core(queries: int, keys: int, dim: int) -> int:
  """Scores (q·k) and weighted values (p·v) over all heads together."""
  return 2 * (2 * queries * keys * dim)


def pre_norm_block(tokens: int, dim: int, mlp_dim: int) -> int:
  """Self-attention over all tokens plus the MLP."""
  return (linear(tokens, dim, 3 * dim) + _attention_core(tokens, tokens, dim) + linear(tokens, dim, dim)
          + linear(tokens, dim, mlp_dim) + linear(tokens, mlp_dim, dim))


def video_segment(cfg: VideoTowerConfig) -> int:
  """Motionformer on one segment: tubelet embedding, divided space-time blocks, spatial aggregation."""
  t, p, d = cfg.time_tokens, cfg.grid ** 2, cfg.dim
  tokens = 1 + t * p
  embed = linear(t * p, 3 * cfg.tubelet * cfg.patch ** 2, d)
  # Each divided attention: q|k|v and output projections over all tokens; the CLS query over every key;
  # patch queries within their group plus the CLS key (P groups of T over time, T groups of P over space).
  projections = linear(tokens, d, 3 * d) + linear(tokens, d, d)
  cls_query = _attention_core(1, tokens, d)
  time_attention = projections + cls_query + p * _attention_core(t, t + 1, d)
  space_attention = projections + cls_query + t * _attention_core(p, p + 1, d)
  mlp = linear(tokens, d, cfg.mlp_dim) + linear(tokens, cfg.mlp_dim, d)
  blocks = cfg.depth * (time_attention + space_attention + mlp)
  aggregation = t * pre_norm_block(1 + p, d, cfg.mlp_dim)
  return embed + blocks + aggregation


def audio_segment(cfg: AudioTowerConfig) -> int:
  """AST on one segment: strided patch embedding, ViT layers, frequency aggregation."""
  f, t, d = cfg.freq_tokens, cfg.time_tokens, cfg.dim
  embed = linear(f * t, cfg.patch ** 2, d)
  layers = cfg.depth * pre_norm_block(2 + f * t, d, cfg.mlp_dim)
  aggregation = t * pre_norm_block(1 + f, d, cfg.mlp_dim)
  return embed + layers + aggregation


def sync_head(cfg: ModelConfig) -> int:
  """Projections, the global transformer over [OFF, video, MOD, audio] tokens, and the class head."""
  tr: SyncTransformerConfig = cfg.transformer
  s = tr.n_segments
  projections = (linear(s * cfg.video.time_tokens, cfg.video.dim, tr.dim)
                 + linear(s * cfg.audio.time_tokens, cfg.audio.dim, tr.dim))
  layers = tr.layers * pre_norm_block(cfg.num_positions, tr.dim, tr.mlp_dim)
  return projections + layers + linear(1, tr.dim, cfg.num_classes)


def forward_flops(cfg: ModelConfig, segments: int | None = None) -> dict[str, int]:
  """Forward FLOPs of one clip by part ('video', 'audio', 'head') and their 'total'.

  `segments` defaults to the global transformer's; Stage I (avclip) has no head, and its contrastive
  similarities are left out (they grow with the batch, and are negligible at any practical one).
  """
  s = cfg.transformer.n_segments if segments is None else segments
  parts = {'video': s * video_segment(cfg.video), 'audio': s * audio_segment(cfg.audio),
           'head': 0 if cfg.kind == 'avclip' else sync_head(cfg)}
  return {**parts, 'total': sum(parts.values())}
