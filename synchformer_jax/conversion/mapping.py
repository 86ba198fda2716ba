"""The PyTorch ↔ Flax parameter table.

Each `Rule` says which original state-dict key(s) fill one Flax parameter and how the layout changes.
The tables mirror the original module tree, so reading `motionformer_rules` next to the original
`vit_helper.py` is a line-by-line comparison.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from synchformer_jax.models.config import (AudioTowerConfig, ModelConfig, SparseSyncConfig, SyncTransformerConfig,
                                           VideoTowerConfig)
from synchformer_jax.models.sparsesync import S3D_MIXED

Path = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
  """Flax parameter `path` ← torch keys `sources`, through layout `layout`.

  Layouts: 'copy'; 'linear' (weight (O, I) → kernel (I, O); several sources are fused along O);
  'bias' (several sources are concatenated); 'qkv' and 'qkv_bias' (a fused q|k|v projection, one torch
  tensor or three: kernel (I, 3, D) and bias (3, D), see `models.layers.QkvProjection`); 'patch3d' (Conv3d (O, C, kt, kh, kw) → (C·kt·kh·kw, O));
  'conv2d' (Conv2d (O, C, kh, kw) → (kh, kw, C, O)); 'conv3d' (Conv3d (O, C, kt, kh, kw) → (kt, kh, kw, C, O));
  'pointwise' (a 1×1×1 Conv3d (O, C, 1, 1, 1) → a Dense kernel (C, O)); 'counter' (BatchNorm's int64
  `num_batches_tracked`, int32 here); 'rows' (a (1, R, D) table whose leading rows are
  kept when the target is shorter, as the original does for the AST and the synchronizability
  positional tables).
  """
  path: Path
  sources: tuple[str, ...]
  layout: str = 'copy'
  torch_shape: tuple[int, ...] | None = None  # for 'patch3d', whose flattening loses the kernel shape


def _linear(path: Path, torch_prefix: str | tuple[str, ...]) -> list[Rule]:
  prefixes = (torch_prefix,) if isinstance(torch_prefix, str) else torch_prefix
  return [Rule(path + ('kernel',), tuple(p + '.weight' for p in prefixes), 'linear'),
          Rule(path + ('bias',), tuple(p + '.bias' for p in prefixes), 'bias')]


def _qkv(path: Path, weights: tuple[str, ...], biases: tuple[str, ...]) -> list[Rule]:
  return [Rule(path + ('kernel',), weights, 'qkv'), Rule(path + ('bias',), biases, 'qkv_bias')]


def _norm(path: Path, torch_prefix: str) -> list[Rule]:
  return [Rule(path + ('scale',), (torch_prefix + '.weight',)),
          Rule(path + ('bias',), (torch_prefix + '.bias',))]


def _pre_norm_block(path: Path, t: str, *, norm1: str, qkv: tuple[str, ...], proj: str, norm2: str, fc1: str,
                    fc2: str) -> list[Rule]:
  return (_norm(path + ('norm1',), t + norm1) + _qkv(path + ('attn', 'qkv'), tuple(t + q + '.weight' for q in qkv),
                                                                tuple(t + q + '.bias' for q in qkv))
          + _linear(path + ('attn', 'proj'), t + proj) + _norm(path + ('norm2',), t + norm2)
          + _linear(path + ('mlp', 'fc1'), t + fc1) + _linear(path + ('mlp', 'fc2'), t + fc2))


def aggregator_rules(path: Path, t: str) -> list[Rule]:
  """A torch TransformerEncoderLayer (norm_first) with a learned CLS: `spatial_attn_agg` / `freq_attn_agg`."""
  layer = path + ('layer',)
  return ([Rule(path + ('cls_token',), (t + 'cls_token',))]
          + _norm(layer + ('norm1',), t + 'norm1')
          + _qkv(layer + ('attn', 'qkv'), (t + 'self_attn.in_proj_weight',), (t + 'self_attn.in_proj_bias',))
          + _linear(layer + ('attn', 'proj'), t + 'self_attn.out_proj')
          + _norm(layer + ('norm2',), t + 'norm2')
          + _linear(layer + ('mlp', 'fc1'), t + 'linear1') + _linear(layer + ('mlp', 'fc2'), t + 'linear2'))


def motionformer_rules(path: Path, t: str, cfg: VideoTowerConfig) -> list[Rule]:
  """`vfeat_extractor.` / `v_encoder.` (or no prefix: the Motionformer SSv2 release)."""
  rules = [Rule(path + ('cls_token',), (t + 'cls_token',)), Rule(path + ('pos_embed',), (t + 'pos_embed',)),
           Rule(path + ('temp_embed',), (t + 'temp_embed',)),
           Rule(path + ('patch_embed',), (t + 'patch_embed.proj.weight',)),
           Rule(path + ('patch_embed_bias',), (t + 'patch_embed.proj.bias',)),
           Rule(path + ('patch_embed_3d', 'proj', 'kernel'), (t + 'patch_embed_3d.proj.weight',), 'patch3d',
                (cfg.dim, 3, cfg.tubelet, cfg.patch, cfg.patch)),
           Rule(path + ('patch_embed_3d', 'proj', 'bias'), (t + 'patch_embed_3d.proj.bias',))]
  for i in range(cfg.depth):
    b, tb = path + ('blocks', i), f'{t}blocks.{i}.'
    for norm in ('norm1', 'norm2', 'norm3'):
      rules += _norm(b + (norm,), tb + norm)
    for attn in ('attn', 'timeattn'):
      rules += (_qkv(b + (attn, 'qkv'), (tb + attn + '.qkv.weight',), (tb + attn + '.qkv.bias',))
                + _linear(b + (attn, 'proj'), tb + attn + '.proj'))
    rules += _linear(b + ('mlp', 'fc1'), tb + 'mlp.fc1') + _linear(b + ('mlp', 'fc2'), tb + 'mlp.fc2')
  rules += _norm(path + ('norm',), t + 'norm')
  return rules + aggregator_rules(path + ('spatial_attn_agg',), t + 'spatial_attn_agg.')


def ast_rules(path: Path, t: str, cfg: AudioTowerConfig) -> list[Rule]:
  """`afeat_extractor.` / `a_encoder.`; `t + 'ast.'` is HF's ASTModel (`audio_spectrogram_transformer.`)."""
  return ast_model_rules(path, t + 'ast.', cfg) + aggregator_rules(path + ('freq_attn_agg',), t + 'freq_attn_agg.')


def ast_model_rules(path: Path, t: str, cfg: AudioTowerConfig) -> list[Rule]:
  emb = t + 'embeddings.'
  rules = [Rule(path + ('cls_token',), (emb + 'cls_token',)),
           Rule(path + ('distillation_token',), (emb + 'distillation_token',)),
           Rule(path + ('position_embeddings',), (emb + 'position_embeddings',), 'rows'),
           Rule(path + ('patch_embed', 'kernel'), (emb + 'patch_embeddings.projection.weight',), 'conv2d'),
           Rule(path + ('patch_embed', 'bias'), (emb + 'patch_embeddings.projection.bias',))]
  for i in range(cfg.depth):
    rules += _pre_norm_block(
        path + ('layers', i), f'{t}encoder.layer.{i}.', norm1='layernorm_before',
        qkv=tuple(f'attention.attention.{n}' for n in ('query', 'key', 'value')), proj='attention.output.dense',
        norm2='layernorm_after', fc1='intermediate.dense', fc2='output.dense')
  return rules + _norm(path + ('layernorm',), t + 'layernorm')


def global_transformer_rules(path: Path, t: str, cfg: SyncTransformerConfig, head: str,
                             with_positions: bool = True) -> list[Rule]:
  rules = (_norm(path + ('vis_in_lnorm',), t + 'vis_in_lnorm') + _norm(path + ('aud_in_lnorm',), t + 'aud_in_lnorm')
           + [Rule(path + ('OFF_tok',), (t + 'OFF_tok',)), Rule(path + ('MOD_tok',), (t + 'MOD_tok',))])
  if with_positions:
    rules.append(Rule(path + ('pos_emb',), (t + 'pos_emb_cfg.pos_emb',), 'rows'))
  for i in range(cfg.layers):
    rules += _pre_norm_block(path + ('blocks', i), f'{t}blocks.{i}.', norm1='ln1',
                             qkv=('attn.query', 'attn.key', 'attn.value'), proj='attn.proj', norm2='ln2',
                             fc1='mlp.0', fc2='mlp.2')
  return rules + _norm(path + ('ln_f',), t + 'ln_f') + _linear(path + (head,), t + head)


def batch_norm_rules(path: Path, t: str) -> list[Rule]:
  """A torch BatchNorm: affine weight and bias, running statistics and the update counter."""
  return (_norm(path, t) + [Rule(path + ('mean',), (t + '.running_mean',)), Rule(path + ('var',), (t + '.running_var',)),
                            Rule(path + ('num_batches_tracked',), (t + '.num_batches_tracked',), 'counter')])


def _conv_bn(path: Path, t: str, conv: str, bn: str, layout: str) -> list[Rule]:
  """A convolution `t + conv` and the BatchNorm `t + bn` after it (`t`: a key prefix, '' or ending in '.')."""
  return [Rule(path + (conv, 'kernel'), (f'{t}{conv}.weight',), layout)] + batch_norm_rules(path + (bn,), t + bn)


def _s3d_unit(path: Path, t: str, separable: bool) -> list[Rule]:
  """A BasicConv3d (`conv`, `bn`) or a SepConv3d (`conv_s`, `bn_s`, `conv_t`, `bn_t`)."""
  if not separable:
    return _conv_bn(path, t, 'conv', 'bn', 'conv3d')
  return _conv_bn(path, t, 'conv_s', 'bn_s', 'conv3d') + _conv_bn(path, t, 'conv_t', 'bn_t', 'conv3d')


def s3d_rules(path: Path, t: str) -> list[Rule]:
  """S3D's `base.*` (`t` = 'vfeat_extractor.' in a sync model): the stem, two units and the mixed blocks (the
  max pools between them have no parameters)."""
  base = path + ('base',)
  rules = (_s3d_unit(base + (0,), f'{t}base.0.', True) + _s3d_unit(base + (2,), f'{t}base.2.', False)
           + _s3d_unit(base + (3,), f'{t}base.3.', True))
  for index in S3D_MIXED:
    b, tb = base + (index,), f'{t}base.{index}.'
    rules += _s3d_unit(b + ('branch0', 0), tb + 'branch0.0.', False)
    for branch in ('branch1', 'branch2'):
      rules += (_s3d_unit(b + (branch, 0), f'{tb}{branch}.0.', False)
                + _s3d_unit(b + (branch, 1), f'{tb}{branch}.1.', True))
    rules += _s3d_unit(b + ('branch3', 1), tb + 'branch3.1.', False)
  return rules


def resnet_rules(path: Path, t: str) -> list[Rule]:
  """torchvision's ResNet-18 without `fc` (`t` = 'afeat_extractor.' in a sync model)."""
  rules = _conv_bn(path, t, 'conv1', 'bn1', 'conv2d')
  for stage in range(1, 5):
    for block in range(2):
      b, tb = path + (f'layer{stage}', block), f'{t}layer{stage}.{block}.'
      rules += _conv_bn(b, tb, 'conv1', 'bn1', 'conv2d') + _conv_bn(b, tb, 'conv2', 'bn2', 'conv2d')
      if stage > 1 and block == 0:
        rules += ([Rule(b + ('downsample', 0, 'kernel'), (tb + 'downsample.0.weight',), 'conv2d')]
                  + batch_norm_rules(b + ('downsample', 1), tb + 'downsample.1'))
  return rules


def _attention(path: Path, t: str, fused: bool) -> list[Rule]:
  """The original's attention (`key`, `query`, `value`, `proj`): q|k|v fused for self-attention, kept
  apart for the cross-attention, whose queries and keys come from different inputs."""
  if fused:
    return (_qkv(path + ('qkv',), tuple(f'{t}.{n}.weight' for n in ('query', 'key', 'value')),
                 tuple(f'{t}.{n}.bias' for n in ('query', 'key', 'value')))
            + _linear(path + ('proj',), t + '.proj'))
  return [r for n in ('query', 'key', 'value', 'proj') for r in _linear(path + (n,), f'{t}.{n}')]


def _mlp(path: Path, t: str) -> list[Rule]:
  return _linear(path + ('fc1',), t + '.0') + _linear(path + ('fc2',), t + '.2')


def sparsesync_head_rules(path: Path, t: str, cfg: SparseSyncConfig) -> list[Rule]:
  """`transformer.*`: the original's `feature_selector.SparseSync`."""
  embed = lambda p, key: Rule(p + ('embedding',), (key,))
  rules = _norm(path + ('pre_lnorm_vis',), t + 'pre_lnorm_vis') + _norm(path + ('pre_lnorm_aud',), t + 'pre_lnorm_aud')
  rules += [embed(path + ('vis_pos_emb', f'{axis}_embed'), f'{t}vis_pos_emb.{axis}_embed.weight')
            for axis in ('time', 'height', 'width')]
  rules += [embed(path + ('aud_pos_emb', f'{axis}_embed'), f'{t}aud_pos_emb.{axis}_embed.weight')
            for axis in ('freq', 'time')]
  for selector in ('v_selector', 'a_selector'):
    s, ts = path + (selector,), f'{t}{selector}.'
    rules += [Rule(s + ('selectors',), (ts + 'selectors',)),
              embed(s + ('selectors_pos_emb',), ts + 'selectors_pos_emb.time_embed.weight')]
    for i in range(cfg.transformer.layers):
      b, tb = s + ('blocks', i), f'{ts}blocks.{i}'
      rules += (_norm(b + ('ln1',), tb + '.ln1') + _attention(b + ('attn',), tb + '.attn', fused=True)
                + _norm(b + ('ln2',), tb + '.ln2') + _attention(b + ('xattn',), tb + '.xattn', fused=False)
                + _norm(b + ('ln3',), tb + '.ln3') + _mlp(b + ('mlp',), tb + '.mlp'))
  g = path + ('global_transformer',)
  gt = [r for r in global_transformer_rules(g, t + 'global_transformer.', cfg.transformer, 'off_head',
                                           with_positions=False) if r.path[len(g)] != 'off_head']
  return rules + gt + [Rule(g + ('off_head', 'kernel'), (t + 'off_head.weight',), 'linear')]


def sparsesync_rules(cfg: SparseSyncConfig) -> list[Rule]:
  """Every stored variable of a SparseSync model (the original's `AVSyncModel`), with its state-dict keys."""
  return (s3d_rules(('vfeat_extractor',), 'vfeat_extractor.') + resnet_rules(('afeat_extractor',), 'afeat_extractor.')
          + [Rule(('v_bridge', 'proj', 'kernel'), ('v_bridge.bridge.0.weight',), 'pointwise'),
             Rule(('v_bridge', 'proj', 'bias'), ('v_bridge.bridge.0.bias',))]
          + sparsesync_head_rules(('transformer',), 'transformer.', cfg))


def model_rules(cfg: ModelConfig | SparseSyncConfig) -> list[Rule]:
  """Every parameter of a model of this config, with its original state-dict keys."""
  if cfg.kind == 'sparsesync':
    return sparsesync_rules(cfg)
  if cfg.kind == 'avclip':
    return ([Rule(('logit_scale',), ('logit_scale',))] + motionformer_rules(('v_encoder',), 'v_encoder.', cfg.video)
            + ast_rules(('a_encoder',), 'a_encoder.', cfg.audio))
  head = 'sync_head' if cfg.kind == 'synchability' else 'off_head'
  return (motionformer_rules(('vfeat_extractor',), 'vfeat_extractor.', cfg.video)
          + ast_rules(('afeat_extractor',), 'afeat_extractor.', cfg.audio)
          + _linear(('vproj',), 'vproj') + _linear(('aproj',), 'aproj')
          + global_transformer_rules(('transformer',), 'transformer.', cfg.transformer, head))


def tower_rules(tower: str, cfg: ModelConfig | SparseSyncConfig, torch_prefix: str = '') -> list[Rule]:
  """A single tower's parameters (the initialisations of Stage I and of SparseSync), at Flax path root."""
  if tower == 'motionformer':
    return motionformer_rules((), torch_prefix, cfg.video)
  if tower == 'ast':
    return ast_rules((), torch_prefix, cfg.audio)
  if tower == 's3d':
    return s3d_rules((), torch_prefix)
  if tower == 'resnet_audio':
    return resnet_rules((), torch_prefix)
  raise ValueError(f"tower: expected one of 'motionformer', 'ast', 's3d', 'resnet_audio', got {tower!r}")


# ---- layouts ----------------------------------------------------------------------------------------------

def to_flax(rule: Rule, tensors: list[np.ndarray], target_shape: tuple[int, ...]) -> np.ndarray:
  """Original tensors → the Flax parameter; raises ValueError naming the key and both shapes."""
  layout = rule.layout
  if layout == 'linear':
    value = np.concatenate(tensors, axis=0).T
  elif layout == 'bias':
    value = np.concatenate(tensors, axis=0)
  elif layout == 'qkv':
    value = np.concatenate(tensors, axis=0).T
    value = value.reshape(value.shape[0], 3, -1)
  elif layout == 'qkv_bias':
    value = np.concatenate(tensors, axis=0).reshape(3, -1)
  elif layout == 'patch3d':
    value = tensors[0].reshape(tensors[0].shape[0], -1).T
  elif layout == 'conv2d':
    value = tensors[0].transpose(2, 3, 1, 0)
  elif layout == 'conv3d':
    value = tensors[0].transpose(2, 3, 4, 1, 0)
  elif layout == 'pointwise':
    value = tensors[0].reshape(tensors[0].shape[:2]).T
  elif layout == 'counter':
    value = tensors[0].astype(np.int32)
  elif layout == 'rows':
    value = tensors[0]
    if value.ndim == 3 and len(target_shape) == 3 and value.shape[1] > target_shape[1]:
      value = value[:, :target_shape[1]]
  else:
    value = tensors[0]
  if tuple(value.shape) != tuple(target_shape):
    source_shapes = ', '.join(f'{k} {tuple(t.shape)}' for k, t in zip(rule.sources, tensors))
    raise ValueError(f'shape mismatch: {source_shapes} → {"/".join(map(str, rule.path))} needs '
                     f'{tuple(target_shape)} but the checkpoint gives {tuple(value.shape)}')
  return np.asarray(value, order="C")


def to_torch(rule: Rule, value: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
  """The inverse of `to_flax`: the Flax parameter → (torch key, tensor) pairs in the original layout."""
  layout = rule.layout
  value = np.asarray(value)
  if layout in ('qkv', 'qkv_bias'):  # back to the flat fused layout
    value = value.reshape(value.shape[0], -1) if layout == 'qkv' else value.reshape(-1)
    layout = 'linear' if layout == 'qkv' else 'bias'
  if layout == 'linear':
    for key, part in zip(rule.sources, np.split(value.T, len(rule.sources), axis=0)):
      yield key, part
  elif layout == 'bias':
    for key, part in zip(rule.sources, np.split(value, len(rule.sources), axis=0)):
      yield key, part
  elif layout == 'patch3d':
    yield rule.sources[0], value.T.reshape(rule.torch_shape)
  elif layout == 'conv2d':
    yield rule.sources[0], value.transpose(3, 2, 0, 1)
  elif layout == 'conv3d':
    yield rule.sources[0], value.transpose(4, 3, 0, 1, 2)
  elif layout == 'pointwise':
    yield rule.sources[0], value.T[:, :, None, None, None]
  elif layout == 'counter':
    yield rule.sources[0], value.astype(np.int64)
  else:
    yield rule.sources[0], value

