"""Architecture configs for the Synchformer towers and heads.

Frozen dataclasses so a config can be hashed, compared and stored beside a checkpoint as JSON.
`full` is the published architecture; `tiny` is the reduced size of the parity cases; `small`
is a CPU-trainable size for the embedded synthetic dataset.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

ModelKind = Literal['sync', 'synchability', 'avclip']
MODEL_KINDS = ('sync', 'synchability', 'avclip')
# Stage II predicts one of 21 offsets on a 0.2 s grid over [-2, 2] s; the fine-tune predicts in/out of sync.
NUM_OFFSET_CLASSES = 21
NUM_SYNCHABILITY_CLASSES = 2
# Rematerialisation policies: names in `jax.checkpoint_policies` (this module imports no JAX).
REMAT_POLICY_NAMES = ('nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable')


@dataclasses.dataclass(frozen=True)
class VideoTowerConfig:
  """Motionformer (divided space-time ViT) plus its spatial aggregation layer."""
  dim: int = 768
  depth: int = 12
  heads: int = 12
  mlp_dim: int = 3072  # also the aggregation layer's feed-forward width
  crop: int = 224  # input height = width in pixels
  frames: int = 16
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
  n_mels: int = 128
  n_frames: int = 66
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
  # None lets JAX choose; 'cudnn' forces the fused flash kernel on NVIDIA GPUs.
  attention_impl: str | None = None

  def __post_init__(self):
    if self.kind not in MODEL_KINDS:
      raise ValueError(f'ModelConfig.kind: expected one of {MODEL_KINDS}, got {self.kind!r}')
    if self.remat_policy not in REMAT_POLICY_NAMES:
      raise ValueError(f'ModelConfig.remat_policy: expected one of {REMAT_POLICY_NAMES}, got {self.remat_policy!r}')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"ModelConfig.dtype: expected 'float32' or 'bfloat16', got {self.dtype!r}")
    for name, tower in (('video', self.video), ('audio', self.audio), ('transformer', self.transformer)):
      if tower.dim % tower.heads:
        raise ValueError(f'ModelConfig.{name}: dim {tower.dim} is not divisible by heads {tower.heads}')
    if self.video.crop % self.video.patch or self.video.frames % self.video.tubelet:
      raise ValueError(f'ModelConfig.video: crop {self.video.crop} / frames {self.video.frames} must be '
                       f'multiples of patch {self.video.patch} / tubelet {self.video.tubelet}')

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
      raise ValueError(f'ModelConfig: unknown fields {sorted(unknown)}')
    for name, sub in (('video', VideoTowerConfig), ('audio', AudioTowerConfig),
                      ('transformer', SyncTransformerConfig)):
      if name in d and isinstance(d[name], dict):
        sub_known = {f.name for f in dataclasses.fields(sub)}
        bad = set(d[name]) - sub_known
        if bad:
          raise ValueError(f'ModelConfig.{name}: unknown fields {sorted(bad)}')
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
    raise ValueError(f'size_params: expected keys {sorted(expected)}, got {sorted(size_params)}')
  p = size_params
  video = VideoTowerConfig(dim=p['v_dim'], depth=p['v_depth'], heads=p['v_heads'], mlp_dim=4 * p['v_dim'],
                           crop=p['crop'])
  audio = AudioTowerConfig(dim=p['a_dim'], depth=p['a_depth'], heads=p['a_heads'], mlp_dim=p['a_ff'])
  transformer = SyncTransformerConfig(dim=p['t_dim'], layers=p['t_layers'], heads=p['t_heads'],
                                      mlp_dim=4 * p['t_dim'], n_segments=n_segments)
  return ModelConfig(kind=kind, video=video, audio=audio, transformer=transformer, **overrides)


def config_for_size(kind: ModelKind, size: str, **overrides) -> ModelConfig:
  if size not in SIZE_PARAMS:
    raise ValueError(f'model size: expected one of {SIZES}, got {size!r}')
  return config_from_size_params(kind, SIZE_PARAMS[size], **overrides)
