"""Building blocks shared by the towers and the global transformer.

Parameters carry logical sharding axes (`embed`, `mlp`, `qkv`); `synchformer_jax.sharding` maps them to
mesh axes. Activations between blocks are pinned to logical axes too (`constrain`), under the rules a caller sets
(`sharding.activation_sharding`); without them, on one device or in inference, nothing is pinned. Every attention in the model is a `MultiHeadAttention` with a fused q|k|v projection: the
converter fuses the original's separate query/key/value weights where it has them.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd
from jax.sharding import PartitionSpec

from synchformer_jax.models.config import REMAT_POLICY_NAMES

Initializer = Callable[..., jax.Array]
trunc_normal_02 = nnx.initializers.truncated_normal(stddev=0.02)
normal_02 = nnx.initializers.normal(stddev=0.02)
standard_normal = nnx.initializers.normal(stddev=1.0)


def constrain(x: jax.Array, *logical_axes: str | None) -> jax.Array:
  """`x` laid out by logical axis names, one a dimension, under the current mesh and logical-axis rules; a
  dimension its mesh axes do not divide (a padded eval batch) is left to XLA. Without rules or mesh: `x`."""
  rules, mesh = dict(spmd.get_logical_axis_rules()), jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  spec = []
  for size, name in zip(x.shape, logical_axes):
    axes = rules.get(name)
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    spec.append(axes if names and size % math.prod(mesh.shape[a] for a in names) == 0 else None)
  return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def constrain_tokens(x: jax.Array) -> jax.Array:
  """A block's (batch, tokens, width) output: split over the batch, whole along tokens and width."""
  return constrain(x, 'activation_batch', 'activation_length', 'activation_embed')


class Buffer(nnx.Variable):
  """A stored tensor that is not trained: kept so original checkpoints round-trip exactly."""


# Named computations: each is a `jax.jit` whose name (the jaxpr's `pjit` name) says what it computes, so the
# CPU torch executor (`synchformer_jax.torch_exec`) can run it as one library kernel; XLA inlines them.
ATTENTION_NAME = 'softmax_attention'
LAYER_NORM_NAME = 'layer_norm'


def affine_map(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
  """x · kernel (+ bias): x's last axis contracted with the kernel's first; the bias has the kernel's other axes."""
  y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
  return y if bias is None else y + bias


affine = jax.jit(affine_map)
AFFINE_NAME = affine_map.__name__


class Linear(nnx.Linear):
  """`nnx.Linear` (same variables, same dtype promotion) computed by the named `affine`."""

  def __call__(self, x: jax.Array) -> jax.Array:
    bias = None if self.bias is None else self.bias[...]
    return affine(*self.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype))


def dense(in_features: int, out_features: int, axes: tuple[str | None, str | None], *, dtype, rngs: nnx.Rngs,
          kernel_init: Initializer = trunc_normal_02, use_bias: bool = True) -> Linear:
  return Linear(in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                kernel_init=nnx.with_partitioning(kernel_init, axes),
                bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)), rngs=rngs)


@functools.cache
def _layer_norm(eps: float) -> Callable:
  """LayerNorm over the last axis in float32 with the two-pass variance, as torch computes it (and in nnx's
  order of operations), as a named jit whose name carries eps ('name:eps')."""
  def norm(x, scale, bias):
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    variance = jnp.square(centred).mean(-1, keepdims=True)
    return centred * (jax.lax.rsqrt(variance + eps) * scale) + bias
  norm.__name__ = f'{LAYER_NORM_NAME}:{float(eps)!r}'
  return jax.jit(norm)


class LayerNorm(nnx.LayerNorm):
  """`nnx.LayerNorm` (same variables) computed by the named `_layer_norm`."""

  def __call__(self, x: jax.Array, *, mask=None) -> jax.Array:
    if mask is not None:
      raise ValueError('LayerNorm: masks are not used by these models')
    return _layer_norm(self.epsilon)(x, self.scale[...], self.bias[...])


def layer_norm(dim: int, eps: float, *, rngs: nnx.Rngs) -> LayerNorm:
  # Statistics in float32 with the two-pass variance, as torch computes them.
  return LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=jnp.float32,
                   scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ('embed',)),
                   bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ('embed',)), rngs=rngs)


def token(shape: Sequence[int], init: Initializer, rngs: nnx.Rngs) -> nnx.Param:
  """A learned token or table, stored float32; its channel axis is split with the rest of `embed`."""
  axes = (None,) * (len(shape) - 1) + ('embed',)
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), out_sharding=axes)


def exact_gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)  # torch's nn.GELU is the exact erf form


gelu = jax.jit(exact_gelu)
GELU_NAME = exact_gelu.__name__


@functools.cache
def _softmax_attention(scale: float, implementation: str | None) -> Callable:
  """Softmax attention with a fixed scale, as a named jit whose name carries the scale ('name:scale')."""
  def attention(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=implementation)
  attention.__name__ = f'{ATTENTION_NAME}:{float(scale)!r}'
  return jax.jit(attention)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float, dropout: nnx.Dropout | None = None,
           implementation: str | None = None) -> jax.Array:
  """Softmax attention over (batch, length, heads, head_dim) tensors.

  The fused kernel (`jax.nn.dot_product_attention`) is used unless attention-probability dropout is
  active, which that kernel does not support.
  """
  if dropout is None or dropout.deterministic or dropout.rate == 0.0:
    if implementation == 'cudnn' and q.dtype == jnp.float32:
      implementation = None  # cuDNN flash attention takes half precision only
    return _softmax_attention(float(scale), implementation)(q, k, v)
  return weighted_values(dropout(attention_weights(q, k, scale=scale)), v)


def attention_logits(q: jax.Array, k: jax.Array, *, scale: float) -> jax.Array:
  """Scaled query-key products (batch, heads, queries, keys) in float32."""
  return jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale


def attention_weights(q: jax.Array, k: jax.Array, *, scale: float) -> jax.Array:
  """Softmax attention weights (batch, heads, queries, keys) in float32."""
  return jax.nn.softmax(attention_logits(q, k, scale=scale), axis=-1)


def weighted_values(weights: jax.Array, v: jax.Array) -> jax.Array:
  return jnp.einsum('bhqk,bkhd->bqhd', weights.astype(v.dtype), v)


class DropPath(nnx.Module):
  """Stochastic depth: drops a whole residual branch per sample (timm's DropPath).

  The rate is an array, not a static attribute, so that blocks with different rates have one structure and
  can run as a scan (`run_blocks`); at rate 0 every sample is kept and the branch passes unchanged.
  """

  def __init__(self, rate: float, *, rngs: nnx.Rngs):
    self.rate = nnx.data(jnp.asarray(rate, jnp.float32))
    self.deterministic = False
    self.rngs = rngs.dropout.fork()

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


class Mlp(nnx.Module):
  """fc1 → exact GELU → fc2 → dropout."""

  def __init__(self, dim: int, hidden: int, *, dropout: float = 0.0, dtype, rngs: nnx.Rngs,
               kernel_init: Initializer = trunc_normal_02):
    self.fc1 = dense(dim, hidden, ('embed', 'mlp'), dtype=dtype, rngs=rngs, kernel_init=kernel_init)
    self.fc2 = dense(hidden, dim, ('mlp', 'embed'), dtype=dtype, rngs=rngs, kernel_init=kernel_init)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.dropout(self.fc2(gelu(self.fc1(x))))


class QkvProjection(nnx.Module):
  """The fused q|k|v projection: (..., D) → (..., 3, D), heads contiguous along the last axis.

  The kernel is (D, 3, D) rather than (D, 3D) so that a `tensor` split of its output axis ('qkv') falls
  between heads of each of q, k and v alike (a split of a flat 3D axis would cut through them).
  """

  def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs, kernel_init: Initializer = trunc_normal_02):
    # Initialised as the flat (D, 3D) kernel it replaces (fan-in D either way), then folded.
    kernel = kernel_init(rngs.params(), (dim, 3 * dim), jnp.float32).reshape(dim, 3, dim)
    rngs.params()  # the bias's key, drawn as nnx.Linear draws it, so a seed builds the same model as before
    self.kernel = nnx.Param(kernel, out_sharding=('embed', None, 'qkv'))
    self.bias = nnx.Param(jnp.zeros((3, dim), jnp.float32), out_sharding=(None, 'qkv'))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return affine(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.bias[...].astype(self.dtype))


class MultiHeadAttention(nnx.Module):
  """Self-attention with a fused q|k|v projection; heads are contiguous channel slices."""

  def __init__(self, dim: int, heads: int, *, attn_dropout: float = 0.0, resid_dropout: float = 0.0,
               attention_impl: str | None = None, dtype, rngs: nnx.Rngs,
               kernel_init: Initializer = trunc_normal_02):
    self.heads = heads
    self.scale = (dim // heads) ** -0.5
    self.attention_impl = attention_impl
    self.qkv = QkvProjection(dim, dtype=dtype, rngs=rngs, kernel_init=kernel_init)
    self.proj = dense(dim, dim, ('qkv', 'embed'), dtype=dtype, rngs=rngs, kernel_init=kernel_init)
    self.attn_dropout = nnx.Dropout(attn_dropout, rngs=rngs)
    self.resid_dropout = nnx.Dropout(resid_dropout, rngs=rngs)
    # Opt-in (attribution): compute the weights explicitly and sow them as `nnx.Intermediate`
    # 'attention_weights' (read them with `nnx.capture`). A Python flag read when tracing, so the default
    # fused path is unchanged. `sow_logits` sows the logits before the softmax as 'attention_logits' and each head's
    # weighted values (batch, queries, heads, head_dim) as 'head_values' (training-only losses on the heads).
    self.sow_attention = False
    self.sow_logits = False

  def project_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(..., L, D) → three (..., L, heads, head_dim) tensors."""
    qkv = self.qkv(x)
    qkv = qkv.reshape(*qkv.shape[:-1], self.heads, -1)
    return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

  def merge_heads(self, out: jax.Array) -> jax.Array:
    return self.resid_dropout(self.proj(out.reshape(*out.shape[:-2], -1)))

  def __call__(self, x: jax.Array) -> jax.Array:
    q, k, v = self.project_qkv(x)
    if self.sow_attention or self.sow_logits:
      logits = attention_logits(q, k, scale=self.scale)
      weights = jax.nn.softmax(logits, axis=-1)
      if self.sow_logits:
        self.sow(nnx.Intermediate, 'attention_logits', logits)
      if self.sow_attention:
        self.sow(nnx.Intermediate, 'attention_weights', weights)
      values = weighted_values(self.attn_dropout(weights), v)
      if self.sow_logits:
        self.sow(nnx.Intermediate, 'head_values', values)
      return self.merge_heads(values)
    out = attend(q, k, v, scale=self.scale, dropout=self.attn_dropout, implementation=self.attention_impl)
    return self.merge_heads(out)


class PreNormBlock(nnx.Module):
  """x + Attn(LN(x)), then x + MLP(LN(x)).

  The shape of the AST encoder layers, the aggregation layers (torch TransformerEncoderLayer with
  norm_first=True) and the global transformer's minGPT blocks; they differ only in eps and dropouts.
  """

  def __init__(self, dim: int, heads: int, mlp_dim: int, *, eps: float, attn_dropout: float = 0.0,
               resid_dropout: float = 0.0, attention_impl: str | None = None, dtype, rngs: nnx.Rngs,
               kernel_init: Initializer = trunc_normal_02):
    self.norm1 = layer_norm(dim, eps, rngs=rngs)
    self.attn = MultiHeadAttention(dim, heads, attn_dropout=attn_dropout, resid_dropout=resid_dropout,
                                   attention_impl=attention_impl, dtype=dtype, rngs=rngs,
                                   kernel_init=kernel_init)
    self.norm2 = layer_norm(dim, eps, rngs=rngs)
    self.mlp = Mlp(dim, mlp_dim, dropout=resid_dropout, dtype=dtype, rngs=rngs, kernel_init=kernel_init)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x).astype(x.dtype))
    return x + self.mlp(self.norm2(x).astype(x.dtype))


class ClsAggregator(nnx.Module):
  """Pools a token sequence into one vector: prepend a learned CLS, one pre-LN layer, read the CLS.

  The original's `spatial_attn_agg` / `freq_attn_agg`; no positional embedding, no final norm.
  """

  def __init__(self, dim: int, heads: int, mlp_dim: int, *, eps: float, attention_impl: str | None = None,
               dtype, rngs: nnx.Rngs):
    self.cls_token = token((1, 1, dim), trunc_normal_02, rngs)
    self.layer = PreNormBlock(dim, heads, mlp_dim, eps=eps, attention_impl=attention_impl, dtype=dtype,
                              rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """(M, L, D) → (M, D)."""
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    return self.layer(jnp.concatenate([cls, x], axis=1))[:, 0]


# What a rematerialised block keeps from its forward pass for the backward pass (`ModelConfig.remat_policy`
# names one): nothing (least memory, one extra forward), or the outputs of its matmuls (none recomputed).
REMAT_POLICIES = {name: getattr(jax.checkpoint_policies, name) for name in REMAT_POLICY_NAMES}


def run_blocks(blocks: Sequence[nnx.Module], x: jax.Array, remat: str | None) -> jax.Array:
  """Applies blocks in order; with `remat` (a `REMAT_POLICIES` name) each is rematerialised in the backward pass.

  Rematerialised blocks run as a `lax.scan` over their stacked variables: XLA:CPU drops the
  rematerialisation of blocks in straight-line code (the recomputation is merged back into the forward pass)
  but keeps it inside a loop. The blocks' own parameters stay where they are; stacking them is part of the
  computation, so their gradients are those of the unscanned blocks.
  """
  if remat is None:
    for block in blocks:
      x = constrain_tokens(block(x))
    return x
  graphdefs, rng_states, other_states = zip(*(nnx.split(block, nnx.RngState, ...) for block in blocks))
  if any(g != graphdefs[0] for g in graphdefs):
    raise ValueError(f'run_blocks: cannot scan {type(blocks[0]).__name__} blocks of different structures')

  def apply(h, block_state):
    block = nnx.merge(graphdefs[0], *block_state)
    return constrain_tokens(block(h)), nnx.state(block, nnx.RngState)

  stack = lambda states: jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
  # The loop already keeps the recomputation apart: no barriers against common-subexpression elimination needed.
  apply = jax.checkpoint(apply, policy=REMAT_POLICIES[remat], prevent_cse=False)
  x, advanced_rngs = jax.lax.scan(apply, x, (stack(rng_states), stack(other_states)))
  for i, block in enumerate(blocks):  # the random streams advance as they would unscanned
    nnx.update(block, jax.tree.map(lambda leaf: leaf[i], advanced_rngs))
  return x
