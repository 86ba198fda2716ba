"""Data: decoding, the original's transforms, datasets and grain loaders.

It knows nothing of models, and imports no JAX: data-loading worker processes import this package alone.
"""
