"""A PyTorch mirror of the original Synchformer Stage II forward, for side-by-side CPU timings.

Written from the model specification (`shared/specs/model.md`, sections 3-5): the same operations in the
same order as the original's modules, on the original's state-dict keys, so it loads a parity case's
checkpoint as it is and reproduces the case's logits (checked by the tests). It stands in for the
original code, which this project does not vendor:
- Motionformer `DividedSpaceTimeBlock` / `DividedAttention`: fused qkv, q scaled before the products,
  the CLS query over all keys, einops regrouping as the original;
- the aggregators are real `torch.nn.TransformerEncoderLayer`s (pre-LN, eval fast path as in the original);
- AST layers as Hugging Face's `ASTLayer` in its eager attention form (separate q/k/v, matmul-softmax-matmul);
- minGPT blocks of the global transformer.

Only the forward of Stage II in eval mode is mirrored (dropouts are identities there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MirrorSizes:
  """Heads per attention: the only architecture facts that the state dict's shapes do not give."""
  video_heads: int = 12
  audio_heads: int = 12
  transformer_heads: int = 8


def _linear(x, sd, prefix):
  return F.linear(x, sd[prefix + '.weight'], sd[prefix + '.bias'])


def _ln(x, sd, prefix, eps):
  w = sd[prefix + '.weight']
  return F.layer_norm(x, w.shape, w, sd[prefix + '.bias'], eps)


def _qkv_attn(q, k, v):
  # The original's `qkv_attn`: einsum scores, softmax, einsum with values (q is already scaled).
  sim = torch.einsum('b i d, b j d -> b i j', q, k)
  return torch.einsum('b i j, b j d -> b i d', sim.softmax(dim=-1), v)


def _divided_attention(x, sd, prefix, heads, einops_from, einops_to, **dims):
  h = heads
  q, k, v = _linear(x, sd, prefix + '.qkv').chunk(3, dim=-1)
  q, k, v = (einops.rearrange(t, 'b n (h d) -> (b h) n d', h=h) for t in (q, k, v))
  q = q * (q.shape[-1] ** -0.5)
  (cls_q, q_), (cls_k, k_), (cls_v, v_) = ((t[:, :1], t[:, 1:]) for t in (q, k, v))
  cls_out = _qkv_attn(cls_q, k, v)
  q_, k_, v_ = (einops.rearrange(t, f'{einops_from} -> {einops_to}', **dims) for t in (q_, k_, v_))
  r = q_.shape[0] // cls_k.shape[0]
  cls_k, cls_v = (einops.repeat(t, 'b () d -> (b r) () d', r=r) for t in (cls_k, cls_v))
  out = _qkv_attn(q_, torch.cat((cls_k, k_), dim=1), torch.cat((cls_v, v_), dim=1))
  out = einops.rearrange(out, f'{einops_to} -> {einops_from}', **dims)
  out = einops.rearrange(torch.cat((cls_out, out), dim=1), '(b h) n d -> b n (h d)', h=h)
  return _linear(out, sd, prefix + '.proj')


def _aggregator(sd, prefix, heads, eps) -> torch.nn.TransformerEncoderLayer:
  dim = sd[prefix + '.norm1.weight'].shape[0]
  layer = torch.nn.TransformerEncoderLayer(dim, heads, sd[prefix + '.linear1.weight'].shape[0], dropout=0.0,
                                           activation=torch.nn.GELU(), layer_norm_eps=eps, batch_first=True,
                                           norm_first=True)
  layer.load_state_dict({k[len(prefix) + 1:]: v for k, v in sd.items()
                         if k.startswith(prefix + '.') and k != prefix + '.cls_token'})
  return layer.eval()


class SynchformerMirror:
  """`SynchformerMirror(state_dict)(video, audio)` → logits, with the original's input layouts:
  video (B, S, 16, 3, H, W), audio (B, S, 1, 128, 66)."""

  def __init__(self, state_dict: dict[str, torch.Tensor], sizes: MirrorSizes = MirrorSizes()):
    self.sd = {k: v.detach().float() for k, v in state_dict.items()}
    self.sizes = sizes
    self.spatial_agg = _aggregator(self.sd, 'vfeat_extractor.spatial_attn_agg', sizes.video_heads, 1e-6)
    self.freq_agg = _aggregator(self.sd, 'afeat_extractor.freq_attn_agg', sizes.audio_heads, 1e-6)
    self.video_depth = 1 + max(int(k.split('.')[2]) for k in self.sd if k.startswith('vfeat_extractor.blocks.'))
    self.audio_depth = 1 + max(int(k.split('.')[4]) for k in self.sd
                               if k.startswith('afeat_extractor.ast.encoder.layer.'))
    self.transformer_depth = 1 + max(int(k.split('.')[2]) for k in self.sd if k.startswith('transformer.blocks.'))

  def _aggregate(self, layer, cls_token, x):
    x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    return layer(x)[:, 0]

  def motionformer(self, x):
    """(N, 3, 16, H, W) → (N, 8, D)."""
    sd, p = self.sd, 'vfeat_extractor'
    w = sd[p + '.patch_embed_3d.proj.weight']
    x = F.conv3d(x, w, sd[p + '.patch_embed_3d.proj.bias'], stride=w.shape[2:])
    n, d, t, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    cls = (sd[p + '.cls_token'] + sd[p + '.pos_embed'][:, :1]).expand(n, -1, -1)
    spatial = sd[p + '.pos_embed'][:, 1:]
    grid = math.isqrt(spatial.shape[1])
    if grid != gh:  # a crop other than 224: the original resizes the table bicubically by a scale factor
      table = spatial.reshape(1, grid, grid, d).permute(0, 3, 1, 2)
      table = F.interpolate(table, scale_factor=math.sqrt(gh * gw / spatial.shape[1]), mode='bicubic')
      spatial = table.permute(0, 2, 3, 1).reshape(1, gh * gw, d)
    pos = spatial.repeat(1, t, 1) + torch.repeat_interleave(sd[p + '.temp_embed'], gh * gw, 1)
    x = torch.cat((cls, x + pos), dim=1)
    heads = self.sizes.video_heads
    for i in range(self.video_depth):
      b = f'{p}.blocks.{i}'
      x = x + _divided_attention(_ln(x, sd, b + '.norm3', 1e-6), sd, b + '.timeattn', heads,
                                 'b (f n) d', '(b n) f d', n=gh * gw)
      x = x + _divided_attention(_ln(x, sd, b + '.norm1', 1e-6), sd, b + '.attn', heads,
                                 'b (f n) d', '(b f) n d', f=t)
      x = x + _linear(F.gelu(_linear(_ln(x, sd, b + '.norm2', 1e-6), sd, b + '.mlp.fc1')), sd, b + '.mlp.fc2')
    x = _ln(x[:, 1:], sd, p + '.norm', 1e-6)
    frames = einops.rearrange(x, 'n (t p) d -> (n t) p d', t=t)
    return self._aggregate(self.spatial_agg, sd[p + '.spatial_attn_agg.cls_token'], frames).reshape(n, t, d)

  def ast(self, spec):
    """(N, 1, F, T) → (N, 6, D)."""
    sd, p = self.sd, 'afeat_extractor.ast'
    x = F.conv2d(spec, sd[p + '.embeddings.patch_embeddings.projection.weight'],
                 sd[p + '.embeddings.patch_embeddings.projection.bias'], stride=(10, 10))
    n, d, f, t = x.shape
    x = x.flatten(2).transpose(1, 2)
    aux = torch.cat((sd[p + '.embeddings.cls_token'], sd[p + '.embeddings.distillation_token']), dim=1)
    x = torch.cat((aux.expand(n, -1, -1), x), dim=1) + sd[p + '.embeddings.position_embeddings']
    h = self.sizes.audio_heads
    for i in range(self.audio_depth):
      b = f'{p}.encoder.layer.{i}'
      y = _ln(x, sd, b + '.layernorm_before', 1e-12)
      q, k, v = (_linear(y, sd, f'{b}.attention.attention.{name}').view(n, -1, h, d // h).transpose(1, 2)
                 for name in ('query', 'key', 'value'))
      scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d // h)
      context = torch.matmul(scores.softmax(dim=-1), v).transpose(1, 2).reshape(n, -1, d)
      x = x + _linear(context, sd, b + '.attention.output.dense')
      y = _ln(x, sd, b + '.layernorm_after', 1e-12)
      x = x + _linear(F.gelu(_linear(y, sd, b + '.intermediate.dense')), sd, b + '.output.dense')
    x = _ln(x, sd, p + '.layernorm', 1e-12)[:, 2:]
    columns = einops.rearrange(x, 'n (f t) d -> (n t) f d', f=f)
    agg = 'afeat_extractor.freq_attn_agg.cls_token'
    return self._aggregate(self.freq_agg, sd[agg], columns).reshape(n, t, d)

  def transformer(self, v, a):
    sd, p = self.sd, 'transformer'
    v, a = _ln(v, sd, p + '.vis_in_lnorm', 1e-5), _ln(a, sd, p + '.aud_in_lnorm', 1e-5)
    b = v.shape[0]
    x = torch.cat((sd[p + '.OFF_tok'].expand(b, -1, -1), v, sd[p + '.MOD_tok'].expand(b, -1, -1), a), dim=1)
    x = x + sd[p + '.pos_emb_cfg.pos_emb']
    h = self.sizes.transformer_heads
    for i in range(self.transformer_depth):
      blk = f'{p}.blocks.{i}'
      y = _ln(x, sd, blk + '.ln1', 1e-5)
      n, t, c = y.shape
      k, q, v_ = (_linear(y, sd, f'{blk}.attn.{name}').view(n, t, h, c // h).transpose(1, 2)
                  for name in ('key', 'query', 'value'))
      att = ((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))).softmax(dim=-1)
      x = x + _linear((att @ v_).transpose(1, 2).contiguous().view(n, t, c), sd, blk + '.attn.proj')
      y = _ln(x, sd, blk + '.ln2', 1e-5)
      x = x + _linear(F.gelu(_linear(y, sd, blk + '.mlp.0')), sd, blk + '.mlp.2')
    x = _ln(x, sd, p + '.ln_f', 1e-5)
    return _linear(x[:, 0], sd, p + '.off_head')

  @torch.inference_mode()
  def __call__(self, video: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    b, s = video.shape[:2]
    vfeat = self.motionformer(video.permute(0, 1, 3, 2, 4, 5).flatten(0, 1))
    afeat = self.ast(audio.flatten(0, 1))
    vfeat, afeat = vfeat.reshape(b, s, *vfeat.shape[1:]), afeat.reshape(b, s, *afeat.shape[1:])
    v = _linear(vfeat, self.sd, 'vproj').flatten(1, 2)
    a = _linear(afeat, self.sd, 'aproj').flatten(1, 2)
    return {'logits': self.transformer(v, a), 'vfeat_extractor': vfeat, 'afeat_extractor': afeat}
