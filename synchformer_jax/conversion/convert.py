"""Checkpoint conversion: the original's files → Flax parameters (and back).

Source kinds, detected from the file's layout and key names:

| source | layout | converts to |
| --- | --- | --- |
| `sync` / `synchability` | Stage II training checkpoint, weights under `'model'` | that model |
| `avclip` | Stage I checkpoint, weights under `'state_dict'` (keys with or without `module.`) | AVCLIP |
| (any of the above) | a bare state dict without the wrapping dict (e.g. MMAudio's `synchformer_state_dict.pth`) | that model |
| `hf_ast` | HF `ASTForAudioClassification` (`.bin` / `.safetensors`) | the AST tower |
| `motionformer` | Motionformer SSv2 release (`.pyth`, weights under `'model_state'`) | the Motionformer tower |
| `sparsesync` | SparseSync training checkpoint (`model_type` `'AVSyncModel'`), weights under `'model'` | SparseSync |
| `s3d` | S3D Kinetics-400 "torchified" plain state dict (`base.*`, `fc.*`) | the S3D trunk (its `fc` dropped) |
| `resnet_audio` | ResNetAudio VGGSound checkpoint (`model_type` `'ResNetAudio'`), weights under `'model'` | the ResNet-18 trunk (its 308-way `fc` dropped) |

A conversion uses every source key and fills every target parameter, or fails listing what did not
match. The gaps a source kind always has (a tower release has no aggregation layer; the classifier
heads are not part of Synchformer) are expected and reported; any other gap (e.g. Stage I weights into
a Stage II target) needs `allow_missing` / `allow_unused`, and the unfilled parameters keep a fresh
initialisation. The two systems do not mix: a Synchformer checkpoint into a SparseSync target (or the reverse)
is refused outright. BatchNorm running statistics and counters are converted with the weights.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import re
from typing import Any

import jax
import numpy as np
from flax import nnx

from synchformer_jax.conversion import mapping
from synchformer_jax.conversion.torch_io import CheckpointError, load_torch_file, opaque_to_plain
from synchformer_jax.models import SPARSESYNC_TOWERS, TARGETS, TOWERS, build_target, stored_variables
from synchformer_jax.models.config import (SIZE_PARAMS, SPARSESYNC_SIZES, AudioTowerConfig, ModelConfig, ModelConfigError,
                                           SparseSyncConfig, SyncTransformerConfig, VideoTowerConfig, config_for_size)

log = logging.getLogger(__name__)

# Key prefixes each target's rules use for its towers.
_TOWER_PREFIX = {'sync': ('vfeat_extractor.', 'afeat_extractor.'), 'synchability': ('vfeat_extractor.', 'afeat_extractor.'),
                 'avclip': ('v_encoder.', 'a_encoder.')}
# Gaps a source kind always has, by target: (missing target parameters, unused source keys), as globs.
_EXPECTED_GAPS = {
    ('hf_ast', 'ast'): (['freq_attn_agg.*'], ['classifier.*']),
    ('motionformer', 'motionformer'): (['spatial_attn_agg.*'], ['head.*', 'pre_logits.*']),
    ('s3d', 's3d'): ([], ['fc.*']),  # the Kinetics-400 classifier, replaced by Identity in the sync model
    ('resnet_audio', 'resnet_audio'): ([], ['fc.*']),  # the 308-way VGGSound classifier, likewise
}
# Which system each source kind and target belongs to: a conversion never crosses from one to the other.
SPARSESYNC_KINDS = ('sparsesync', 's3d', 'resnet_audio')


@dataclasses.dataclass
class SourceCheckpoint:
  """A loaded original checkpoint: its kind, state dict (numpy) and training config if it has one."""
  path: str
  kind: str
  state_dict: dict[str, np.ndarray]
  args: dict[str, Any] | None = None

  @property
  def default_target(self) -> str:
    if self.kind == 'hf_ast':
      return 'ast'
    if self.kind in ('motionformer', 'sync', 'synchability', 'avclip', *SPARSESYNC_KINDS):
      return self.kind
    raise AssertionError(self.kind)


@dataclasses.dataclass
class Conversion:
  """Converted parameters (flat: dotted Flax path → array) and what happened on the way."""
  target: str
  config: ModelConfig | SparseSyncConfig
  params: dict[str, np.ndarray]
  missing: list[str]  # target parameters the source did not have (freshly initialised)
  unused: list[str]  # source keys no parameter took
  truncated: list[str]  # tables whose leading rows were kept

  def report(self) -> dict[str, Any]:
    return {'target': self.target, 'missing': self.missing, 'unused': self.unused, 'truncated': self.truncated}


# ---- reading and detecting -------------------------------------------------------------------------------

def _is_state_dict(obj) -> bool:
  return isinstance(obj, dict) and bool(obj) and all(isinstance(v, np.ndarray) for v in obj.values())


def _strip(sd: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def _kind_of_state_dict(sd: dict[str, np.ndarray], path: str) -> str:
  keys = set(sd)
  if 'transformer.OFF_tok' in keys and 'vfeat_extractor.patch_embed_3d.proj.weight' in keys:
    return 'synchability' if any(k.startswith('transformer.sync_head.') for k in keys) else 'sync'
  if 'v_encoder.patch_embed_3d.proj.weight' in keys and 'a_encoder.ast.embeddings.cls_token' in keys:
    return 'avclip'
  if 'audio_spectrogram_transformer.embeddings.cls_token' in keys:
    return 'hf_ast'
  if 'patch_embed_3d.proj.weight' in keys and 'temp_embed' in keys:
    return 'motionformer'
  if 'transformer.global_transformer.OFF_tok' in keys and 'vfeat_extractor.base.0.conv_s.weight' in keys:
    return 'sparsesync'
  if 'base.0.conv_s.weight' in keys and 'base.15.branch0.0.conv.weight' in keys:
    return 's3d'
  if 'conv1.weight' in keys and 'layer4.1.conv2.weight' in keys and sd['conv1.weight'].ndim == 4:
    return 'resnet_audio'
  sample = ', '.join(sorted(keys)[:6])
  raise CheckpointError(f'{path}: the weights are not of a supported architecture (expected Synchformer, '
                        f'Segment AVCLIP, AST, Motionformer, SparseSync, S3D or ResNetAudio keys such as '
                        f'transformer.OFF_tok, v_encoder.patch_embed_3d.proj.weight or '
                        f'transformer.global_transformer.OFF_tok; found {len(keys)} keys like: {sample})')


def read_source(path: str) -> SourceCheckpoint:
  """Loads an original checkpoint file of any supported kind (see the module docstring)."""
  obj = load_torch_file(path)
  args = None
  if isinstance(obj, dict) and 'args' in obj:
    plain = opaque_to_plain(obj['args'])
    args = plain if isinstance(plain, dict) else None
  if isinstance(obj, dict) and _is_state_dict(obj.get('model')):
    sd = obj['model']
  elif isinstance(obj, dict) and _is_state_dict(obj.get('state_dict')):
    sd = _strip(obj['state_dict'], 'module.')
  elif isinstance(obj, dict) and _is_state_dict(obj.get('model_state')):
    sd = obj['model_state']
  elif _is_state_dict(obj):
    sd = _strip(obj, 'module.')
  else:
    found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{path}: no state dict found (expected the weights under 'model', 'state_dict' or "
                          f"'model_state', or a bare state dict; found {found})")
  return SourceCheckpoint(path, _kind_of_state_dict(sd, path), sd, args)


# ---- architecture ------------------------------------------------------------------------------------------

def _count(sd, pattern: str) -> int:
  rx = re.compile(pattern)
  return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_config(source: SourceCheckpoint, target: str, size: str | None = None) -> ModelConfig:
  """The architecture of `target` for this source.

  With `size`, that named size. Otherwise widths and depths are read off the tensor shapes, the global
  transformer's heads from the checkpoint's `args` when present, and what shapes cannot tell (tower heads,
  crop) from the named size whose shapes match, else the published values (64-d heads, 224 px).
  """
  if source.kind in SPARSESYNC_KINDS:
    return _sparsesync_config(source, size)
  kind = 'avclip' if target in TOWERS else target
  if size is not None:
    return config_for_size(kind, size)
  sd, path = source.state_dict, source.path
  vp, ap = _source_tower_prefixes(source)
  video = audio = None
  if vp is not None:
    dim = sd[vp + 'cls_token'].shape[-1]
    video = VideoTowerConfig(dim=dim, depth=_count(sd, re.escape(vp) + r'blocks\.(\d+)\.'),
                             heads=max(dim // 64, 1), mlp_dim=sd[vp + 'blocks.0.mlp.fc1.weight'].shape[0])
  if ap is not None:
    dim = sd[ap + 'embeddings.cls_token'].shape[-1]
    audio = AudioTowerConfig(dim=dim, depth=_count(sd, re.escape(ap) + r'encoder\.layer\.(\d+)\.'),
                             heads=max(dim // 64, 1),
                             mlp_dim=sd[ap + 'encoder.layer.0.intermediate.dense.weight'].shape[0])
  transformer = SyncTransformerConfig(n_segments=13 if kind == 'synchability' else 14)
  if 'transformer.OFF_tok' in sd:
    dim = sd['transformer.OFF_tok'].shape[-1]
    rows = sd['transformer.pos_emb_cfg.pos_emb'].shape[1]
    heads = _arg(source.args, 'model.params.transformer.params.n_head') or max(dim // 96, 1)
    n_segments = 13 if kind == 'synchability' else (rows - 2) // 14
    transformer = SyncTransformerConfig(dim=dim, layers=_count(sd, r'transformer\.blocks\.(\d+)\.'), heads=int(heads),
                                        mlp_dim=sd['transformer.blocks.0.mlp.0.weight'].shape[0],
                                        n_segments=n_segments)
  cfg = ModelConfig(kind=kind, video=video or VideoTowerConfig(), audio=audio or AudioTowerConfig(),
                    transformer=transformer)
  for name in SIZE_PARAMS:
    preset = config_for_size(kind, name)
    if _same_shapes(preset, cfg, video is not None, audio is not None, 'transformer.OFF_tok' in sd):
      return preset.replace(transformer=dataclasses.replace(
          preset.transformer, n_segments=transformer.n_segments,
          heads=int(_arg(source.args, 'model.params.transformer.params.n_head') or preset.transformer.heads)))
  log.warning('%s: architecture not one of the named sizes; assuming 64-d tower heads and a 224 px crop '
              '(pass a size to override)', path)
  return cfg


def _sparsesync_config(source: SourceCheckpoint, size: str | None) -> SparseSyncConfig:
  """A SparseSync architecture from the shapes: the trunks' widths, the head's width, depth, MLP and selector
  count, the classes from `off_head`, and the input size from the positional tables (5 s at 224 px when the
  source has no head, as the trunk checkpoints do). Heads from `args` when present, else those of the named size
  whose head has these shapes, else 64-d heads."""
  base = config_for_size('sparsesync', size or 'full')
  if size is not None:
    return base
  sd = source.state_dict
  prefix = {'sparsesync': ('vfeat_extractor.', 'afeat_extractor.'), 's3d': ('', None), 'resnet_audio': (None, '')}
  vp, ap = prefix[source.kind]
  fields = {}
  if vp is not None:
    fields['s3d_width_divisor'] = max(64 // sd[vp + 'base.0.conv_s.weight'].shape[0], 1)
  if ap is not None:
    fields['resnet_width'] = int(sd[ap + 'conv1.weight'].shape[0])
    fields['transformer'] = dataclasses.replace(base.transformer, dim=8 * fields['resnet_width'])
  if source.kind == 'sparsesync':
    t = 'transformer.'
    shapes = (int(sd[t + 'pre_lnorm_vis.weight'].shape[0]), _count(sd, r'transformer\.global_transformer\.blocks\.(\d+)\.'),
              int(sd[t + 'global_transformer.blocks.0.mlp.0.weight'].shape[0]))
    named = [p.transformer.heads for p in SPARSESYNC_SIZES.values()
             if (p.transformer.dim, p.transformer.layers, p.transformer.mlp_dim) == shapes]
    heads = _arg(source.args, 'model.params.transformer.params.n_head') or (named + [max(shapes[0] // 64, 1)])[0]
    fields['transformer'] = dataclasses.replace(base.transformer, dim=shapes[0], heads=int(heads), layers=shapes[1],
                                                mlp_dim=shapes[2])
    fields['num_classes'] = int(sd[t + 'off_head.weight'].shape[0])
    fields['num_selectors'] = int(sd[t + 'v_selector.selectors'].shape[0])
    fields.update(_input_size(sd, t, base))
  try:
    return base.replace(**fields)
  except ModelConfigError as e:  # the shapes describe no valid SparseSync
    origin = 'transformer.off_head.weight'
    read_from = f' (read from {origin} {sd[origin].shape})' if e.field == 'num_classes' else ''
    raise CheckpointError(f'{source.path}: {e}{read_from}') from None


def _input_size(sd: dict[str, np.ndarray], t: str, base: SparseSyncConfig) -> dict[str, int]:
  """The clip length and crop whose token grids the positional tables hold (the original tried 2–8 s crops)."""
  video_rows = (sd[t + 'vis_pos_emb.time_embed.weight'].shape[0], sd[t + 'vis_pos_emb.height_embed.weight'].shape[0])
  audio_rows = (sd[t + 'aud_pos_emb.freq_embed.weight'].shape[0], sd[t + 'aud_pos_emb.time_embed.weight'].shape[0])
  for seconds in range(1, 11):
    for crop in range(32, 449, 32):
      candidate = base.replace(frames=25 * seconds, crop=crop, audio_frames=1 + seconds * 16000 // 128)
      if candidate.visual_block_shape[:2] == video_rows and candidate.audio_block_shape == audio_rows:
        return {'frames': candidate.frames, 'crop': crop, 'audio_frames': candidate.audio_frames}
  raise CheckpointError(f'positional tables of {video_rows} video and {audio_rows} audio rows match no clip of 1–10 s '
                        'at a crop of 32–448 px')


def _same_shapes(a: ModelConfig, b: ModelConfig, video: bool, audio: bool, transformer: bool) -> bool:
  shape_fields = lambda t: (t.dim, t.depth, t.mlp_dim)
  return ((not video or shape_fields(a.video) == shape_fields(b.video))
          and (not audio or shape_fields(a.audio) == shape_fields(b.audio))
          and (not transformer or (a.transformer.dim, a.transformer.layers, a.transformer.mlp_dim)
               == (b.transformer.dim, b.transformer.layers, b.transformer.mlp_dim)))


def _arg(args: dict | None, dotted: str):
  node = args
  for part in dotted.split('.'):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def _source_tower_prefixes(source: SourceCheckpoint) -> tuple[str | None, str | None]:
  """Where the video tower and the HF ASTModel sit in the source's keys."""
  return {'sync': ('vfeat_extractor.', 'afeat_extractor.ast.'),
          'synchability': ('vfeat_extractor.', 'afeat_extractor.ast.'),
          'avclip': ('v_encoder.', 'a_encoder.ast.'),
          'hf_ast': (None, 'audio_spectrogram_transformer.'),
          'motionformer': ('', None)}[source.kind]


def _keys_for_target(source: SourceCheckpoint, target: str) -> dict[str, np.ndarray]:
  """Renames the source's tower prefixes to the ones the target's rules use."""
  sd = source.state_dict
  if source.kind in SPARSESYNC_KINDS:
    return sd
  if source.kind == 'hf_ast':
    return {('ast.' + k[len('audio_spectrogram_transformer.'):] if k.startswith('audio_spectrogram_transformer.')
             else k): v for k, v in sd.items()}
  if source.kind == 'motionformer' or target in ('sync', 'synchability', 'avclip') and source.kind == target:
    return sd
  src_v, src_a = _TOWER_PREFIX['avclip' if source.kind == 'avclip' else 'sync']
  dst_v, dst_a = ('', '') if target in TOWERS else _TOWER_PREFIX[target]
  keep = {'motionformer': (src_v,), 'ast': (src_a,)}.get(target, (src_v, src_a))
  renamed = {}
  for k, v in sd.items():
    if k.startswith(src_v) and src_v in keep:
      k = dst_v + k[len(src_v):]
    elif k.startswith(src_a) and src_a in keep:
      k = dst_a + k[len(src_a):]
    renamed[k] = v
  return renamed


# ---- conversion ---------------------------------------------------------------------------------------------

def target_rules(target: str, cfg: ModelConfig | SparseSyncConfig) -> list[mapping.Rule]:
  return mapping.tower_rules(target, cfg) if target in TOWERS else mapping.model_rules(cfg)


def dotted(path: tuple) -> str:
  return '.'.join(map(str, path))


def convert(source: SourceCheckpoint, target: str | None = None, *, size: str | None = None,
            config: ModelConfig | None = None, allow_missing: bool = False, allow_unused: bool = False,
            seed: int = 0) -> Conversion:
  """Converts a loaded original checkpoint into Flax parameters of `target` (default: the source's own kind)."""
  target = target or source.default_target
  if target not in TARGETS:
    raise CheckpointError(f'{source.path}: target: expected one of {TARGETS}, got {target!r}')
  sparsesync_target = target == 'sparsesync' or target in SPARSESYNC_TOWERS
  if sparsesync_target != (source.kind in SPARSESYNC_KINDS):
    systems = ('SparseSync', 'Synchformer') if sparsesync_target else ('Synchformer', 'SparseSync')
    raise CheckpointError(f'{source.path}: a {systems[1]} checkpoint ({source.kind}) cannot become a {systems[0]} '
                          f'{target!r} model: the two systems share no layer')
  if source.kind in SPARSESYNC_KINDS and target != source.kind:
    raise CheckpointError(f'{source.path}: a {source.kind} checkpoint converts to the {source.kind!r} target only, '
                          f'not {target!r}')
  cfg = config or infer_config(source, target, size)
  sd = _keys_for_target(source, target)
  abstract = {k: v.shape for k, v in stored_variables(nnx.eval_shape(lambda: build_target(target, cfg))).items()}
  rules = target_rules(target, cfg)
  by_path = {dotted(r.path): r for r in rules}
  if set(by_path) != set(abstract):  # a bug in the tables, not in the checkpoint
    raise AssertionError(f'conversion table out of sync with the model: {sorted(set(by_path) ^ set(abstract))[:10]}')
  params, missing, truncated, used = {}, [], [], set()
  for name, rule in by_path.items():
    if not all(k in sd for k in rule.sources):
      missing.append(name)
      continue
    tensors = [sd[k] for k in rule.sources]
    try:
      params[name] = mapping.to_flax(rule, tensors, abstract[name])
    except ValueError as e:
      raise CheckpointError(f'{source.path}: {e}') from None
    if rule.layout == 'rows' and tensors[0].shape != params[name].shape:
      truncated.append(f'{rule.sources[0]}: {tensors[0].shape[1]} → {params[name].shape[1]} rows')
    used.update(rule.sources)
  unused = sorted(set(sd) - used)
  expected_missing, expected_unused = _EXPECTED_GAPS.get((source.kind, target), ([], []))
  unexpected_missing = [m for m in missing if not _matches(m, expected_missing)]
  unexpected_unused = [u for u in unused if not _matches(u, expected_unused)]
  problems = []
  if unexpected_missing and not allow_missing:
    problems.append(f'{len(unexpected_missing)} target parameters have no source key: {_listing(unexpected_missing)}')
  if unexpected_unused and not allow_unused:
    problems.append(f'{len(unexpected_unused)} source keys are not used: {_listing(unexpected_unused)}')
  if problems:
    raise CheckpointError(f'{source.path} ({source.kind}) → {target}: ' + '; '.join(problems)
                          + ' (allow_missing / allow_unused accept such gaps)')
  if missing:
    fresh = stored_variables(build_target(target, cfg, seed))
    params.update({m: np.asarray(fresh[m].get_value()) for m in missing})
  return Conversion(target, cfg, params, sorted(missing), unused, truncated)


def _matches(name: str, globs: list[str]) -> bool:
  return any(fnmatch.fnmatchcase(name, g) for g in globs)


def _listing(names: list[str], limit: int = 20) -> str:
  shown = ', '.join(names[:limit])
  return shown + (f', … ({len(names) - limit} more)' if len(names) > limit else '')


def to_original_state_dict(target: str, cfg: ModelConfig | SparseSyncConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
  """Flax parameters → the original's state dict, in the order of the original modules (a fused q|k|v projection
  gives its three weights, then its three biases; torch's loading does not depend on the order)."""
  out = {}
  for rule in target_rules(target, cfg):
    out.update(mapping.to_torch(rule, np.asarray(jax.device_get(params[dotted(rule.path)]))))
  return out
