"""synchformer_jax: Synchformer (audio-visual synchronisation) in JAX/Flax.

`synchformer_jax.load(DIR)` / `synchformer_jax.save(model, DIR)` read and write model directories.
They are imported on first use, so that data-loading worker processes, which import only
`synchformer_jax.data`, do not pay for importing JAX and Flax.
"""
__all__ = ['load', 'save']


def __getattr__(name):
  if name in __all__:
    from synchformer_jax import pretrained
    return getattr(pretrained, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
