"""synchformer_jax: Synchformer (audio-visual synchronisation) in JAX/Flax."""
from synchformer_jax.pretrained import load, save

__all__ = ['load', 'save']
