"""Jitted calls of a model's methods, cached per module structure, and chunked over a leading axis."""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from synchformer_jax.errors import InputError
from synchformer_jax.inference.executor import ModelCall

DEFAULT_CHUNK_SIZE = 32


@functools.cache
def _compiled(graphdef: nnx.GraphDef, method: Callable) -> Callable:
  """`method(module, *arrays)` compiled for one module structure (the module's state is an argument), on the
  engine `executor` chooses: XLA, or torch's kernels for bfloat16 on CPUs with bfloat16 matrix units."""
  return ModelCall(lambda state, *arrays: method(nnx.merge(graphdef, state), *arrays))


def bound_call(method: Callable, module: nnx.Module) -> Callable:
  """`lambda *arrays: method(module, *arrays)`, compiled once per module structure and method, with the module
  split once (splitting a large module costs more than a small call): for many calls while it does not change."""
  graphdef, state = nnx.split(module)
  compiled = _compiled(graphdef, method)
  return lambda *arrays: compiled(state, *arrays)


def jitted_call(method: Callable, module: nnx.Module, *arrays):
  """`method(module, *arrays)`, compiled once per module structure and method."""
  return bound_call(method, module)(*arrays)


def in_chunks(fn: Callable[[np.ndarray], jax.Array], items: np.ndarray, chunk_size: int) -> jax.Array:
  """`fn` over the leading axis, `chunk_size` items at a time.

  Chunks are padded to `chunk_size`, or for fewer items to the next power of two, so that a few
  compilations serve inputs of every length.
  """
  if chunk_size < 1:
    raise InputError(f'chunk_size: expected a positive integer, got {chunk_size}')
  size = min(chunk_size, 1 << (len(items) - 1).bit_length())
  outputs = []
  for start in range(0, len(items), size):
    chunk = items[start:start + size]
    n = len(chunk)
    if n < size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
    outputs.append(fn(chunk)[:n])
  return jnp.concatenate(outputs)


def softmax(logits) -> np.ndarray:
  return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))


def _logits(model: nnx.Module, video: jax.Array, audio: jax.Array) -> jax.Array:
  return model(video, audio)[0]


def model_logits(model: nnx.Module, video: np.ndarray, audio: np.ndarray) -> jax.Array:
  """The model on inputs in its own layouts (a batch of `transforms.make_example` outputs), jitted."""
  return jitted_call(_logits, model, video, audio)
