"""Architecture configs: Synchformer's towers and heads (`ModelConfig`) and SparseSync's (`SparseSyncConfig`).

Frozen dataclasses so a config can be hashed, compared and stored beside a checkpoint as JSON
(`config_from_dict` reads either back, by its `kind`). `full` is the published architecture; `tiny` is the
reduced size of the parity cases; `small` is a CPU-trainable size for the embedded synthetic dataset.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from synchformer_jax.constants import (MEL_BINS, NUM_OFFSET_CLASSES, NUM_SYNCHABILITY_CLASSES, SEGMENT_FRAMES,
                                       SEGMENT_MEL_FRAMES, SPARSESYNC_MAX_OFFSET_SEC, STAGES, SYNCHFORMER_STAGES)
from synchformer_jax.errors import InputError

ModelKind = Literal['avclip', 'sync', 'synchability', 'sparsesync']
MODEL_KINDS = STAGES
# Rematerialisation policies: names in `jax.checkpoint_policies` (this module imports no JAX).
REMAT_POLICY_NAMES = ('nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable')
DTYPES = ('float32', 'bfloat16')
# None lets JAX choose; 'cudnn' forces the fused flash kernel on NVIDIA GPUs.
ATTENTION_IMPLS = (None, 'xla', 'cudnn')


class ModelConfigError(InputError):
  """An invalid architecture field; `field` is its dotted name within the model config ('transformer.layers')."""

  def __init__(self, field: str, expected: str, value: Any):
    super().__init__(f'model config {field}: expected {expected}, got {value!r}')
    self.field, self.expected, self.value = field, expected, value


def _check_compute_fields(cfg) -> None:
  """The switches every model config has: compute dtype, rematerialisation policy, attention kernel."""
  if cfg.dtype not in DTYPES:
    raise ModelConfigError('dtype', f'one of {DTYPES}', cfg.dtype)
  if cfg.remat_policy not in REMAT_POLICY_NAMES:
    raise ModelConfigError('remat_policy', f'one of {REMAT_POLICY_NAMES}', cfg.remat_policy)
  if cfg.attention_impl not in ATTENTION_IMPLS:
    raise ModelConfigError('attention_impl', f'one of {ATTENTION_IMPLS}', cfg.attention_impl)


def _check_fields(section: str, config) -> None:
  """Every integer field is positive and every float in [0, 1) except the LayerNorm epsilons, which are > 0."""
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    field = f'{section}.{f.name}'
    if f.type == 'int' and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
      raise ModelConfigError(field, 'a positive integer', value)
    if f.type == 'float' and not isinstance(value, (int, float)):
      raise ModelConfigError(field, 'a number', value)
    if f.type == 'float' and 'eps' in f.name and not value > 0:
      raise ModelConfigError(field, 'a positive number', value)
    if f.type == 'float' and 'eps' not in f.name and not 0 <= value < 1:
      raise ModelConfigError(field, 'a rate in [0, 1)', value)
  if config.dim % config.heads:
    raise ModelConfigError(f'{section}.heads', f'a divisor of dim {config.dim}', config.heads)


@dataclasses.dataclass(frozen=True)
class VideoTowerConfig:
  """Motionformer (divided space-time ViT) plus its spatial aggregation layer."""
  dim: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072  # also the aggregation layer's feed-forward width
  crop: int = 224  # input height = width in pixels
  frames: int = SEGMENT_FRAMES
  patch: int = 16
  tubelet: int = 2
  # The positional table is stored for a 14×14 grid (224 px) and resized bicubically for other crops.
  pos_grid: int = 14
  drop_path: float = 0.2
  eps: float = 1e-6

  @property
  def grid(self) -> int:
    return self.crop // self.patch

  @property
  def time_tokens(self) -> int:
    return self.frames // self.tubelet


@dataclasses.dataclass(frozen=True)
class AudioTowerConfig:
  """AST (ViT on log-mel patches with stride 10) plus its frequency aggregation layer."""
  dim: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072  # also the aggregation layer's feed-forward width
  n_mels: int = MEL_BINS
  n_frames: int = SEGMENT_MEL_FRAMES
  patch: int = 16
  stride: int = 10
  eps: float = 1e-12  # HF ASTConfig.layer_norm_eps
  agg_eps: float = 1e-6

  @property
  def freq_tokens(self) -> int:
    return (self.n_mels - self.patch) // self.stride + 1

  @property
  def time_tokens(self) -> int:
    return (self.n_frames - self.patch) // self.stride + 1


@dataclasses.dataclass(frozen=True)
class SyncTransformerConfig:
  """The minGPT-style global transformer of Stage II over [OFF, video, MOD, audio] tokens."""
  dim: int = 768
  layers: int = 3
  heads: int = 8
  mlp_dim: int = 3072
  n_segments: int = 14
  embd_dropout: float = 0.1
  attn_dropout: float = 0.1
  resid_dropout: float = 0.1
  eps: float = 1e-5  # torch LayerNorm default


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  kind: ModelKind = 'sync'
  video: VideoTowerConfig = VideoTowerConfig()
  audio: AudioTowerConfig = AudioTowerConfig()
  transformer: SyncTransformerConfig = SyncTransformerConfig()
  # Compute dtype of matmuls/convolutions; parameters stay float32.
  dtype: str = 'float32'
  # Rematerialise every transformer block in the backward pass, keeping what `remat_policy` names
  # (a key of `layers.REMAT_POLICIES`); the blocks of a stack then run as a scan (`layers.run_blocks`).
  remat: bool = False
  remat_policy: str = 'nothing_saveable'
  attention_impl: str | None = None  # one of ATTENTION_IMPLS

  def __post_init__(self):
    """The one validation of a model's fields; training configs reach it through `train.config.validate`."""
    if self.kind not in SYNCHFORMER_STAGES:
      raise ModelConfigError('kind', f'one of {SYNCHFORMER_STAGES}', self.kind)
    _check_compute_fields(self)
    for section in ('video', 'audio', 'transformer'):
      _check_fields(section, getattr(self, section))
    if self.video.crop % self.video.patch:
      raise ModelConfigError('video.crop', f'a multiple of the patch size {self.video.patch}', self.video.crop)
    if self.video.frames % self.video.tubelet:
      raise ModelConfigError('video.frames', f'a multiple of the tubelet length {self.video.tubelet}', self.video.frames)
    if self.kind == 'avclip' and self.audio.dim != self.video.dim:  # segment embeddings are compared by dot product
      raise ModelConfigError('audio.dim', f'the video tower\'s dim {self.video.dim} (Stage I compares the towers\' '
                             'embeddings)', self.audio.dim)
    for name, tower in (('audio.n_mels', self.audio.n_mels), ('audio.n_frames', self.audio.n_frames)):
      if tower < self.audio.patch:
        raise ModelConfigError(name, f'at least the patch size {self.audio.patch}', tower)

  @property
  def num_classes(self) -> int:
    return NUM_SYNCHABILITY_CLASSES if self.kind == 'synchability' else NUM_OFFSET_CLASSES

  @property
  def num_positions(self) -> int:
    """Rows of the global transformer's positional table: OFF + video tokens + MOD + audio tokens."""
    per_segment = self.video.time_tokens + self.audio.time_tokens
    return 2 + self.transformer.n_segments * per_segment

  def replace(self, **changes) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'ModelConfig':
    return _from_dict(cls, d, {'video': VideoTowerConfig, 'audio': AudioTowerConfig,
                               'transformer': SyncTransformerConfig})


def _from_dict(cls, d: dict[str, Any], sections: dict[str, type]):
  """A config dataclass from its `to_dict`, naming the first unknown field (of the config or a section)."""
  d = dict(d)
  unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
  if unknown:
    raise ModelConfigError(sorted(unknown)[0], f'a field of {cls.__name__}', d[sorted(unknown)[0]])
  for name, sub in sections.items():
    if name in d and isinstance(d[name], dict):
      bad = set(d[name]) - {f.name for f in dataclasses.fields(sub)}
      if bad:
        raise ModelConfigError(f'{name}.{sorted(bad)[0]}', f'a field of {sub.__name__}', d[name][sorted(bad)[0]])
      d[name] = sub(**d[name])
  return cls(**d)


# Parameters of the reduced sizes, in the vocabulary of the parity cases' `size_params`.
SIZE_PARAMS: dict[str, dict[str, int] | None] = {
    'full': None,
    'small': dict(v_dim=128, v_depth=4, v_heads=4, crop=112, a_dim=128, a_depth=4, a_heads=4,
                  a_ff=512, t_dim=128, t_layers=2, t_heads=4),
    'tiny': dict(v_dim=64, v_depth=2, v_heads=4, crop=64, a_dim=64, a_depth=2, a_heads=4,
                 a_ff=128, t_dim=64, t_layers=1, t_heads=4),
}
SIZES = tuple(SIZE_PARAMS)


def config_from_size_params(kind: ModelKind, size_params: dict[str, int] | None, **overrides) -> ModelConfig:
  """Builds a config from a parity case's `size_params` (None = the published full size)."""
  n_segments = 13 if kind == 'synchability' else 14
  if size_params is None:
    return ModelConfig(kind=kind, transformer=SyncTransformerConfig(n_segments=n_segments), **overrides)
  expected = set(SIZE_PARAMS['tiny'])
  if set(size_params) != expected:
    raise ModelConfigError('size_params', f'the keys {sorted(expected)}', sorted(size_params))
  p = size_params
  video = VideoTowerConfig(dim=p['v_dim'], depth=p['v_depth'], heads=p['v_heads'], mlp_dim=4 * p['v_dim'],
                           crop=p['crop'])
  audio = AudioTowerConfig(dim=p['a_dim'], depth=p['a_depth'], heads=p['a_heads'], mlp_dim=p['a_ff'])
  transformer = SyncTransformerConfig(dim=p['t_dim'], layers=p['t_layers'], heads=p['t_heads'],
                                      mlp_dim=4 * p['t_dim'], n_segments=n_segments)
  return ModelConfig(kind=kind, video=video, audio=audio, transformer=transformer, **overrides)


def config_for_size(kind: ModelKind, size: str, **overrides) -> 'ModelConfig | SparseSyncConfig':
  if kind == 'sparsesync':
    if size not in SPARSESYNC_SIZES:
      raise ModelConfigError('size', f'one of {tuple(SPARSESYNC_SIZES)}', size)
    return dataclasses.replace(SPARSESYNC_SIZES[size], **overrides)
  if size not in SIZE_PARAMS:
    raise ModelConfigError('size', f'one of {SIZES}', size)
  return config_from_size_params(kind, SIZE_PARAMS[size], **overrides)


# ---- SparseSync ------------------------------------------------------------------------------------------------

def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
  return (n + 2 * padding - kernel) // stride + 1


@dataclasses.dataclass(frozen=True)
class SparseSyncConfig:
  """SparseSync (BMVC 2022): S3D and ResNet-18 trunks, two selector stacks and a global transformer.

  The input size (`frames` × `crop`² video, `audio_freq` × `audio_frames` spectrogram) fixes the token grids
  and so the positional tables (`visual_block_shape`, `audio_block_shape`). `transformer` holds the head's
  width, depth, heads, MLP width, dropouts and LayerNorm eps, for the selectors and the global transformer
  alike (its `n_segments` is Synchformer's and unused here). `s3d_width_divisor` and `resnet_width` shrink the
  trunks for CPU-sized runs (1 and 64: the published trunks); the ResNet's output width, 8 × `resnet_width`,
  is the head's width (the audio bridge is the identity).
  """
  kind: str = 'sparsesync'
  num_classes: int = 21  # 21: offsets in ±2 s every 0.2 s; 3: -1, 0, +1 s
  frames: int = 125  # 5 s at 25 fps
  crop: int = 224
  audio_freq: int = 257  # n_fft 512
  audio_frames: int = 626  # 80,000 samples, hop 128
  s3d_width_divisor: int = 1
  resnet_width: int = 64
  num_selectors: int = 16
  transformer: SyncTransformerConfig = SyncTransformerConfig(dim=512, layers=3, heads=8, mlp_dim=2048)
  dtype: str = 'float32'
  remat: bool = False
  remat_policy: str = 'nothing_saveable'
  attention_impl: str | None = None

  def __post_init__(self):
    if self.kind != 'sparsesync':
      raise ModelConfigError('kind', "'sparsesync'", self.kind)
    if self.num_classes not in SPARSESYNC_MAX_OFFSET_SEC:
      raise ModelConfigError('num_classes', f'one of {tuple(SPARSESYNC_MAX_OFFSET_SEC)}', self.num_classes)
    _check_compute_fields(self)
    for name in ('frames', 'crop', 'audio_freq', 'audio_frames', 's3d_width_divisor', 'resnet_width',
                 'num_selectors'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelConfigError(name, 'a positive integer', value)
    _check_fields('transformer', self.transformer)
    if self.transformer.dim != 8 * self.resnet_width:
      raise ModelConfigError('transformer.dim', f'8 × resnet_width = {8 * self.resnet_width} (the audio features '
                             'enter the head without a bridge)', self.transformer.dim)
    if self.transformer.dim < 3:
      raise ModelConfigError('transformer.dim', 'at least 3 (the visual positions split it in three)',
                             self.transformer.dim)
    if min(self.visual_block_shape + self.audio_block_shape) < 1:
      raise ModelConfigError('crop', 'an input large enough for the trunks to leave at least one token', self.crop)

  @property
  def max_offset_sec(self) -> float:
    return SPARSESYNC_MAX_OFFSET_SEC[self.num_classes]

  @property
  def visual_block_shape(self) -> tuple[int, int, int]:
    """(T, H, W) of the S3D output: its stem conv (stride 2) and four max pools."""
    t, h = _conv_out(self.frames, 7, 2, 3), _conv_out(self.crop, 7, 2, 3)
    for (kt, kh), (st, sh), (pt, ph) in (((1, 3), (1, 2), (0, 1)), ((1, 3), (1, 2), (0, 1)),
                                         ((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (0, 0))):
      t, h = _conv_out(t, kt, st, pt), _conv_out(h, kh, sh, ph)
    return t, h, h

  @property
  def audio_block_shape(self) -> tuple[int, int]:
    """(F, T) of the ResNet output: the stem conv and max pool (stride 2 each), then three stride-2 stages."""
    sizes = []
    for n in (self.audio_freq, self.audio_frames):
      n = _conv_out(_conv_out(n, 7, 2, 3), 3, 2, 1)
      for _ in range(3):
        n = _conv_out(n, 3, 2, 1)
      sizes.append(n)
    return sizes[0], sizes[1]

  def replace(self, **changes) -> 'SparseSyncConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'SparseSyncConfig':
    return _from_dict(cls, d, {'transformer': SyncTransformerConfig})


SPARSESYNC_SIZES = {
    'full': SparseSyncConfig(),
    # A CPU-trainable SparseSync: trunks an eighth as wide, 64-px frames, a 64-wide one-layer head.
    'tiny': SparseSyncConfig(crop=64, s3d_width_divisor=8, resnet_width=8,
                             transformer=SyncTransformerConfig(dim=64, layers=1, heads=4, mlp_dim=256)),
}


def config_from_dict(d: dict[str, Any]) -> 'ModelConfig | SparseSyncConfig':
  """A stored model config (`to_dict` of either class), by its `kind`."""
  return (SparseSyncConfig if d.get('kind') == 'sparsesync' else ModelConfig).from_dict(d)
