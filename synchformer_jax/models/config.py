"""Architecture configs for the Synchformer towers and heads.

Frozen dataclasses so a config can be hashed, compared and stored beside a checkpoint as JSON.
`full` is the published architecture; `tiny` is the reduced size of the parity cases; `small`
is a CPU-trainable size for the embedded synthetic dataset.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from synchformer_jax.constants import (MEL_BINS, NUM_OFFSET_CLASSES, NUM_SYNCHABILITY_CLASSES, SEGMENT_FRAMES,
                                       SEGMENT_MEL_FRAMES, STAGES)
from synchformer_jax.errors import InputError

ModelKind = Literal['avclip', 'sync', 'synchability']
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
    if self.kind not in MODEL_KINDS:
      raise ModelConfigError('kind', f'one of {MODEL_KINDS}', self.kind)
    if self.dtype not in DTYPES:
      raise ModelConfigError('dtype', f'one of {DTYPES}', self.dtype)
    if self.remat_policy not in REMAT_POLICY_NAMES:
      raise ModelConfigError('remat_policy', f'one of {REMAT_POLICY_NAMES}', self.remat_policy)
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ModelConfigError('attention_impl', f'one of {ATTENTION_IMPLS}', self.attention_impl)
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
    d = dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ModelConfigError(sorted(unknown)[0], 'a field of ModelConfig', d[sorted(unknown)[0]])
    for name, sub in (('video', VideoTowerConfig), ('audio', AudioTowerConfig),
                      ('transformer', SyncTransformerConfig)):
      if name in d and isinstance(d[name], dict):
        sub_known = {f.name for f in dataclasses.fields(sub)}
        bad = set(d[name]) - sub_known
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


def config_for_size(kind: ModelKind, size: str, **overrides) -> ModelConfig:
  if size not in SIZE_PARAMS:
    raise ModelConfigError('size', f'one of {SIZES}', size)
  return config_from_size_params(kind, SIZE_PARAMS[size], **overrides)
