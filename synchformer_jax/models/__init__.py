"""Flax NNX models. They know nothing of data loading or training."""
from flax import nnx

from synchformer_jax.models.ast import AST
from synchformer_jax.models.avclip import AVCLIP
from synchformer_jax.models.config import (MODEL_KINDS, SIZES, AudioTowerConfig, ModelConfig, SyncTransformerConfig,
                                           VideoTowerConfig, config_for_size, config_from_size_params)
from synchformer_jax.models.motionformer import Motionformer
from synchformer_jax.models.synchformer import Synchformer, audio_tower, classification_loss, video_tower

TOWERS = ('motionformer', 'ast')


def build_model(cfg: ModelConfig, seed: int = 0, *, tower: str | None = None) -> nnx.Module:
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
    if tower is not None:
      raise ValueError(f'tower: expected one of {TOWERS} or None, got {tower!r}')
    return AVCLIP(cfg, rngs=rngs) if cfg.kind == 'avclip' else Synchformer(cfg, rngs=rngs)
