"""Flax NNX models. They know nothing of data loading or training."""
from flax import nnx

from synchformer_jax.models.ast import AST
from synchformer_jax.models.avclip import AVCLIP
from synchformer_jax.models.config import (MODEL_KINDS, SIZES, AudioTowerConfig, ModelConfig, SparseSyncConfig,
                                           SyncTransformerConfig, VideoTowerConfig, config_for_size, config_from_dict,
                                           config_from_size_params)
from synchformer_jax.models.layers import Buffer
from synchformer_jax.models.motionformer import Motionformer
from synchformer_jax.models.sparsesync import S3D, ResNetAudio, SparseSync, sparsesync_tower
from synchformer_jax.models.synchformer import Synchformer, audio_tower, classification_loss, video_tower

# The towers a model directory or a converted checkpoint can hold alone: Synchformer's (the Stage I
# initialisations) and SparseSync's trunks (its initialisations).
SYNCHFORMER_TOWERS = ('motionformer', 'ast')
SPARSESYNC_TOWERS = ('s3d', 'resnet_audio')
TOWERS = (*SYNCHFORMER_TOWERS, *SPARSESYNC_TOWERS)
_TOWER_CLASSES = {Motionformer: 'motionformer', AST: 'ast', S3D: 's3d', ResNetAudio: 'resnet_audio'}
# What a model directory or a converted checkpoint can hold: a whole model of a kind, or one tower.
TARGETS = (*MODEL_KINDS, *TOWERS)


def build_model(cfg: ModelConfig | SparseSyncConfig, seed: int = 0, *, tower: str | None = None) -> nnx.Module:
  """A freshly initialised model of the config's kind, or with `tower` only that tower of it.

  Parameters carry logical sharding axes as metadata; `synchformer_jax.sharding` creates them
  already sharded on a mesh by jitting this function with output shardings.
  """
  rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  with nnx.use_eager_sharding(False):
    if tower == 'motionformer':
      return video_tower(cfg, rngs)
    if tower == 'ast':
      return audio_tower(cfg, rngs)
    if tower in SPARSESYNC_TOWERS:
      if cfg.kind != 'sparsesync':
        raise ValueError(f'tower {tower!r} is a SparseSync trunk; the config is of kind {cfg.kind!r}')
      return sparsesync_tower(tower, cfg, rngs)
    if tower is not None:
      raise ValueError(f'tower: expected one of {TOWERS} or None, got {tower!r}')
    if cfg.kind == 'sparsesync':
      return SparseSync(cfg, rngs=rngs)
    return AVCLIP(cfg, rngs=rngs) if cfg.kind == 'avclip' else Synchformer(cfg, rngs=rngs)


def build_target(target: str, cfg: ModelConfig, seed: int = 0) -> nnx.Module:
  """A fresh module for a target (one of TARGETS): the config's whole model, or one of its towers."""
  if target not in TARGETS:
    raise ValueError(f'target: expected one of {TARGETS}, got {target!r}')
  return build_model(cfg, seed, tower=target if target in TOWERS else None)


def target_of(module: nnx.Module) -> str:
  """What a module is, as a target ('sync', 'avclip', 'motionformer', …)."""
  return _TOWER_CLASSES.get(type(module)) or module.cfg.kind


def stored_variables(module: nnx.Module) -> dict[str, nnx.Variable]:
  """Every parameter and buffer a checkpoint holds, by dotted path."""
  return {'.'.join(map(str, path)): var for path, var in nnx.to_flat_state(nnx.state(module, (nnx.Param, Buffer)))}
