"""Stage I: Segment AVCLIP, contrastive pre-training of both towers on 0.64 s segments.

Each tower's per-segment tokens are mean-pooled and L2-normalised; the loss is the symmetric
cross-entropy of segment-to-segment similarities divided by a learned temperature. Negatives are all
other segments in the batch, including the other segments of the same clip.
"""
from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from synchformer_jax.models.config import ModelConfig
from synchformer_jax.models.synchformer import audio_tower, video_tower

# The original clamps its temperature into this range at the start of every training step.
LOGIT_SCALE_RANGE = (0.001, 0.5)
LOGIT_SCALE_INIT = 0.07


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """torch.nn.functional.normalize: x / max(||x||, eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def segment_contrastive_loss(vfeat: jax.Array, afeat: jax.Array, temperature: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE over (M, D) normalised segment embeddings; row i matches column i.

  Returns (loss, v2a similarity matrix).
  """
  sim_v2a = vfeat @ afeat.T / temperature
  labels = jnp.arange(sim_v2a.shape[0])
  ce = optax.softmax_cross_entropy_with_integer_labels
  loss = 0.5 * (ce(sim_v2a, labels).mean() + ce(sim_v2a.T, labels).mean())
  return loss, sim_v2a


class AVCLIP(nnx.Module):
  """Inputs in the original's Stage I layouts: video (B, S, 3, 16, H, W), audio (B, S, 66, 128)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind != 'avclip':
      raise ValueError(f"AVCLIP: config kind must be 'avclip', got {cfg.kind!r}")
    self.cfg = cfg
    self.v_encoder = video_tower(cfg, rngs)
    self.a_encoder = audio_tower(cfg, rngs)
    # Despite the original's name this is a temperature (similarities are divided by it), not a log-scale.
    self.logit_scale = nnx.Param(jnp.asarray(LOGIT_SCALE_INIT, jnp.float32))

  def clamp_logit_scale(self) -> None:
    """The original's in-place clamp, done by the train step before each forward."""
    self.logit_scale.set_value(jnp.clip(self.logit_scale[...], *LOGIT_SCALE_RANGE))

  def embed_segments(self, video: jax.Array, audio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B·S, Dv), (B·S, Da) L2-normalised segment embeddings in batch-major, segment-minor order."""
    vtok = self.v_encoder(einops.rearrange(video, 'b s c t h w -> (b s) c t h w'))
    atok = self.a_encoder(einops.rearrange(audio, 'b s t f -> (b s) t f'))
    return (l2_normalize(vtok.astype(jnp.float32).mean(axis=1)),
            l2_normalize(atok.astype(jnp.float32).mean(axis=1)))

  def __call__(self, video: jax.Array, audio: jax.Array):
    vfeat, afeat = self.embed_segments(video, audio)
    loss, sim_v2a = segment_contrastive_loss(vfeat, afeat, self.logit_scale[...])
    aux = {'segment_vfeat': vfeat, 'segment_afeat': afeat, 'segment_sim_v2a': sim_v2a,
           'logit_scale': self.logit_scale[...]}
    return loss, aux
