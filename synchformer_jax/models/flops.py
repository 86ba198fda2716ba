"""Analytic FLOP counts of the models' forward passes, from a `ModelConfig` (or `SparseSyncConfig`) alone (and,
for SparseSync, S3D's layer tables in `models.sparsesync`).

Counts the matrix products (projections, attention scores and weighted values, patch embeddings, convolutions)
at 2 FLOPs per multiply-add, per clip (Synchformer: of `n_segments` segments). Elementwise work (softmax, GELU,
LayerNorm, BatchNorm, ReLU, max pools, residuals) is left out: it is about 1-2 % of XLA's count for the full
Synchformer, which includes it.
"""
from __future__ import annotations

from synchformer_jax.models.config import (AudioTowerConfig, ModelConfig, SparseSyncConfig, SyncTransformerConfig,
                                           VideoTowerConfig)
from synchformer_jax.models.sparsesync import S3D_POOLS, s3d_out_channels, s3d_widths


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


def forward_flops(cfg: ModelConfig | SparseSyncConfig, segments: int | None = None) -> dict[str, int]:
  """Forward FLOPs of one clip by part ('video', 'audio', 'head'; SparseSync's are `sparsesync_forward_flops`')
  and their 'total'.

  `segments` (Synchformer only) defaults to the global transformer's; Stage I (avclip) has no head, and its
  contrastive similarities are left out (they grow with the batch, and are negligible at any practical one).
  """
  if cfg.kind == 'sparsesync':
    if segments is not None:
      raise ValueError('forward_flops: SparseSync takes one clip, not segments')
    return sparsesync_forward_flops(cfg)
  s = cfg.transformer.n_segments if segments is None else segments
  parts = {'video': s * video_segment(cfg.video), 'audio': s * audio_segment(cfg.audio),
           'head': 0 if cfg.kind == 'avclip' else sync_head(cfg)}
  return {**parts, 'total': sum(parts.values())}


# ---- SparseSync ------------------------------------------------------------------------------------------------

def conv(outputs: int, taps: int, c_in: int, c_out: int) -> int:
  """A convolution with `taps` kernel positions (its volume) giving `outputs` positions of `c_out` channels:
  2 · taps · c_in · c_out per output element, taps over the zero padding included (as `hlo_flops` counts)."""
  return linear(outputs, taps * c_in, c_out)


def _out(n: int, kernel: int, stride: int, padding: int) -> int:
  """The output length of a convolution or pool (torch's, floor mode)."""
  return (n + 2 * padding - kernel) // stride + 1


def _sep_conv(t: int, h: int, c_in: int, c_out: int, k: int, s: int, p: int) -> tuple[int, int, int]:
  """S3D's SepConv3d on (t, h, h) inputs: a (1, k, k) then a (k, 1, 1) conv. (FLOPs, t', h')."""
  h = _out(h, k, s, p)
  spatial = conv(t * h * h, k * k, c_in, c_out)
  t = _out(t, k, s, p)
  return spatial + conv(t * h * h, k, c_out, c_out), t, h


def _mixed(positions: int, c_in: int, c0: int, r1: int, c1: int, r2: int, c2: int, c3: int) -> int:
  """An S3D inception block: four 1×1×1 convs from the input, two separable 3×3×3 convs (stride 1)."""
  pointwise = conv(positions, 1, c_in, c0 + r1 + r2 + c3)
  return pointwise + sum(conv(positions, 9, r, c) + conv(positions, 3, c, c) for r, c in ((r1, c1), (r2, c2)))


def _pool(t: int, h: int, index: int) -> tuple[int, int]:
  """(t', h') after S3D's max pool at `base` index `index`."""
  (kt, kh, _), (st, sh, _), (pt, ph, _) = S3D_POOLS[index]
  return _out(t, kt, st, pt), _out(h, kh, sh, ph)


def s3d(cfg: SparseSyncConfig) -> int:
  """The S3D trunk on one clip of `frames` × `crop`² frames: stem, max pools, mixed blocks (`base.0` … `base.15`)."""
  d, widths = cfg.s3d_width_divisor, s3d_widths(cfg.s3d_width_divisor)
  stem, mid = max(64 // d, 1), max(192 // d, 1)
  total, t, h = _sep_conv(cfg.frames, cfg.crop, 3, stem, 7, 2, 3)
  t, h = _pool(t, h, 1)
  flops, t, h = _sep_conv(t, h, stem, mid, 3, 1, 1)
  total += conv(t * h * h, 1, stem, stem) + flops
  c_in = mid
  for index in range(4, 16):
    if index in S3D_POOLS:
      t, h = _pool(t, h, index)
      continue
    c0, r1, c1, r2, c2, c3 = widths[index]
    total += _mixed(t * h * h, c_in, c0, r1, c1, r2, c2, c3)
    c_in = c0 + c1 + c2 + c3
  return total


def resnet_audio(cfg: SparseSyncConfig) -> int:
  """ResNet-18 on one (audio_freq, audio_frames) spectrogram: the 7×7 stem and four stages of two BasicBlocks."""
  w = cfg.resnet_width
  f, t = _out(cfg.audio_freq, 7, 2, 3), _out(cfg.audio_frames, 7, 2, 3)
  total = conv(f * t, 49, 1, w)
  f, t = _out(f, 3, 2, 1), _out(t, 3, 2, 1)
  c_in = w
  for stage in range(4):
    c_out, stride = w * 2 ** stage, 1 if stage == 0 else 2
    f, t = _out(f, 3, stride, 1), _out(t, 3, stride, 1)
    downsample = conv(f * t, 1, c_in, c_out) if stride != 1 or c_in != c_out else 0
    total += conv(f * t, 9, c_in, c_out) + 3 * conv(f * t, 9, c_out, c_out) + downsample
    c_in = c_out
  return total


def cross_block(queries: int, context: int, dim: int, mlp_dim: int) -> int:
  """A selector block: self-attention among the queries and the MLP, then cross-attention to `context` tokens
  (query and output projections of the queries, key and value projections of the context)."""
  cross = linear(queries, dim, dim) * 2 + linear(context, dim, 2 * dim) + _attention_core(queries, context, dim)
  return pre_norm_block(queries, dim, mlp_dim) + cross


def sparsesync_forward_flops(cfg: SparseSyncConfig) -> dict[str, int]:
  """Forward FLOPs of one SparseSync clip by component ('vfeat_extractor', 'afeat_extractor', 'v_bridge',
  'transformer': the selectors and the global transformer over [OFF, selectors, MOD, selectors]) and 'total'."""
  tr, q = cfg.transformer, cfg.num_selectors
  t, h, w = cfg.visual_block_shape
  f, a = cfg.audio_block_shape
  selectors = tr.layers * (cross_block(q, t * h * w, tr.dim, tr.mlp_dim) + cross_block(q, f * a, tr.dim, tr.mlp_dim))
  head = tr.layers * pre_norm_block(2 + 2 * q, tr.dim, tr.mlp_dim) + linear(1, tr.dim, cfg.num_classes)
  parts = {'vfeat_extractor': s3d(cfg), 'afeat_extractor': resnet_audio(cfg),
           'v_bridge': linear(t * h * w, s3d_out_channels(cfg.s3d_width_divisor), tr.dim),
           'transformer': selectors + head}
  return {**parts, 'total': sum(parts.values())}
