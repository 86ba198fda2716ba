"""Runs a JAX function on the CPU with PyTorch's kernels, by evaluating its jaxpr with torch operations.

Why: XLA:CPU in jaxlib 0.10.2 widens every bfloat16 matrix product to float32 before it reaches a kernel
(its float-normalisation pass), so a bfloat16 model runs no faster than float32 there, while PyTorch's
oneDNN kernels run bfloat16 products on AMX tiles and AVX512-BF16 units at several times the float32
rate (BENCHMARKS.md, issue 18). The model stays defined once, in Flax: this module traces it to a jaxpr
and maps each primitive to the torch operation with the same semantics. A function whose jaxpr holds a
primitive not mapped here is refused with `UnsupportedPrimitive`, so that callers fall back to XLA.

Values are freed after their last use, so peak memory follows the live set as in an eager program.
Arrays cross between JAX and torch through DLPack, without copies.
"""
from __future__ import annotations

import functools
import string
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from jax.extend import core as jax_core

from synchformer_jax.models import layers

_DTYPES = {jnp.dtype(d): t for d, t in (
    ('float32', torch.float32), ('bfloat16', torch.bfloat16), ('float16', torch.float16), ('float64', torch.float64),
    ('int8', torch.int8), ('uint8', torch.uint8), ('int16', torch.int16), ('int32', torch.int32),
    ('int64', torch.int64), ('uint32', torch.uint32), ('bool', torch.bool))}


class UnsupportedPrimitive(NotImplementedError):
  """The function uses a JAX primitive that has no torch mapping here."""


def torch_dtype(dtype) -> torch.dtype:
  return _DTYPES[jnp.dtype(dtype)]


def to_torch(x) -> torch.Tensor | None:
  """A JAX or NumPy array as a torch tensor (shared memory where DLPack allows); None for PRNG keys, which
  no evaluated computation reads (dropout is off in inference)."""
  if jnp.issubdtype(getattr(x, 'dtype', np.float32), jax.dtypes.prng_key):
    return None
  if isinstance(x, jax.Array):
    return torch.utils.dlpack.from_dlpack(x)
  array = np.asarray(x)
  if array.dtype == jnp.bfloat16:
    return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
  return torch.from_numpy(np.array(array))


def to_jax(x: torch.Tensor) -> jax.Array:
  return jax.dlpack.from_dlpack(x.contiguous())


# ----- primitive implementations: each takes torch tensors (or Python scalars) and the primitive's params.

def _dot_general(x, y, *, dimension_numbers, preferred_element_type=None, **_):
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  letters = iter(string.ascii_letters)
  lhs, rhs = [None] * x.ndim, [None] * y.ndim
  for a, b in zip(lhs_batch, rhs_batch):
    lhs[a] = rhs[b] = next(letters)
  for a, b in zip(lhs_contract, rhs_contract):
    lhs[a] = rhs[b] = next(letters)
  lhs = [c or next(letters) for c in lhs]
  rhs = [c or next(letters) for c in rhs]
  out = ([lhs[a] for a in lhs_batch] + [c for i, c in enumerate(lhs) if i not in lhs_batch + lhs_contract]
         + [c for i, c in enumerate(rhs) if i not in rhs_batch + rhs_contract])
  result = torch.einsum(f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}", x, y.to(x.dtype))
  return result if preferred_element_type is None else result.to(torch_dtype(preferred_element_type))


def _conv(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
          batch_group_count, preferred_element_type=None, **_):
  if any(d != 1 for d in lhs_dilation) or batch_group_count != 1 or len(window_strides) not in (1, 2, 3):
    raise UnsupportedPrimitive('conv_general_dilated with input dilation or batch groups')
  x, w = lhs.permute(dimension_numbers.lhs_spec), rhs.permute(dimension_numbers.rhs_spec)
  if all(lo == hi for lo, hi in padding):
    pad = [lo for lo, _ in padding]
  else:
    x, pad = F.pad(x, [v for lo, hi in reversed(padding) for v in (lo, hi)]), 0
  conv = (F.conv1d, F.conv2d, F.conv3d)[len(window_strides) - 1]
  y = conv(x, w.to(x.dtype), stride=tuple(window_strides), padding=pad, dilation=tuple(rhs_dilation),
           groups=feature_group_count)
  y = y.permute([dimension_numbers.out_spec.index(i) for i in range(y.ndim)])
  return y if preferred_element_type is None else y.to(torch_dtype(preferred_element_type))


def _broadcast_in_dim(x, *, shape, broadcast_dimensions, **_):
  if not isinstance(x, torch.Tensor):
    return torch.full(tuple(shape), x)
  view = [1] * len(shape)
  for i, d in enumerate(broadcast_dimensions):
    view[d] = x.shape[i]
  return x.reshape(view).expand(tuple(shape))


def _slice(x, *, start_indices, limit_indices, strides=None, **_):
  steps = strides or (1,) * len(start_indices)
  return x[tuple(slice(s, e, k) for s, e, k in zip(start_indices, limit_indices, steps))]


def _dynamic_slice(x, *starts, slice_sizes):
  # XLA clamps each start so that the slice lies inside the operand.
  bounds = [min(max(int(start), 0), n - size) for start, n, size in zip(starts, x.shape, slice_sizes)]
  return x[tuple(slice(b, b + size) for b, size in zip(bounds, slice_sizes))]


def _pad(x, padding_value, *, padding_config, **_):
  if any(interior for _, _, interior in padding_config):
    raise UnsupportedPrimitive('pad with interior padding')
  return F.pad(x, [v for lo, hi, _ in reversed(padding_config) for v in (lo, hi)], value=float(padding_value))


def _reduce_window_max(x, *, window_dimensions, window_strides, padding, base_dilation, window_dilation):
  """Max pooling over the axes that have a window (at most three), the other axes folded into channels."""
  active = [d for d in range(x.ndim) if window_dimensions[d] > 1 or window_strides[d] > 1 or any(padding[d])]
  if any(b != 1 for b in base_dilation) or not 1 <= len(active) <= 3:
    raise UnsupportedPrimitive('reduce_window_max with base dilation or over more than three axes')
  passive = [d for d in range(x.ndim) if d not in active]
  y = x.permute(passive + active)
  passive_shape = y.shape[:len(passive)]
  y = y.reshape(1, -1, *y.shape[len(passive):])
  y = F.pad(y, [v for d in reversed(active) for v in padding[d]], value=float('-inf'))
  pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(active) - 1]
  y = pool(y, [window_dimensions[d] for d in active], [window_strides[d] for d in active],
           dilation=[window_dilation[d] for d in active])
  y = y.reshape(*passive_shape, *y.shape[2:])
  return y.permute([(passive + active).index(d) for d in range(x.ndim)])


def _reduce(fn):
  def reduce(x, *, axes, **_):
    return fn(x, dim=tuple(axes)) if axes else x
  return reduce


def _div(x, y):
  is_int = isinstance(x, torch.Tensor) and not (x.is_floating_point() or x.is_complex())
  return torch.div(x, y, rounding_mode='trunc') if is_int else torch.div(x, y)


def _select_n(which, *cases):
  if len(cases) != 2:
    raise UnsupportedPrimitive('select_n with more than two cases')
  return torch.where(which.bool() if isinstance(which, torch.Tensor) else bool(which), cases[1], cases[0])


def _integer_pow(x, *, y):
  return x * x if y == 2 else x ** y


def _iota(*, dtype, shape, dimension, **_):
  return _broadcast_in_dim(torch.arange(shape[dimension], dtype=torch_dtype(dtype)), shape=shape,
                           broadcast_dimensions=(dimension,))


def _argmax(x, *, axes, index_dtype):
  return torch.argmax(x, dim=axes[0]).to(torch_dtype(index_dtype))


def _gather(operand, indices, *, dimension_numbers, slice_sizes, mode, fill_value=None, **_):
  """`lax.gather` as one advanced index: an index tensor per operand axis over (batch..., window...)."""
  dims = dimension_numbers
  batch_shape = tuple(indices.shape[:-1])
  window = [d for d in range(operand.ndim) if d not in dims.collapsed_slice_dims + dims.operand_batching_dims]
  nb, nw = len(batch_shape), len(window)
  in_bounds = torch.ones(batch_shape, dtype=torch.bool)
  axes = []
  for d in range(operand.ndim):
    if d in dims.start_index_map:
      start = indices[..., dims.start_index_map.index(d)].long()
      limit = operand.shape[d] - slice_sizes[d]
      in_bounds &= (start >= 0) & (start <= limit)
      start = start.clamp(0, limit)
    elif d in dims.operand_batching_dims:
      batch_axis = dims.start_indices_batching_dims[dims.operand_batching_dims.index(d)]
      start = _iota(dtype=jnp.int64, shape=batch_shape, dimension=batch_axis)
    else:
      start = torch.zeros(batch_shape, dtype=torch.long)
    index = start.reshape(batch_shape + (1,) * nw)
    if d in window:
      offsets = [1] * (nb + nw)
      offsets[nb + window.index(d)] = slice_sizes[d]
      index = index + torch.arange(slice_sizes[d]).reshape(offsets)
    axes.append(index)
  result = operand[tuple(axes)]
  if mode == jax.lax.GatherScatterMode.FILL_OR_DROP:
    if fill_value is None:  # lax's default fill: NaN for inexact types, the extreme value for integers
      fill_value = (float('nan') if operand.is_floating_point() else
                    torch.iinfo(operand.dtype).min if operand.dtype.is_signed else torch.iinfo(operand.dtype).max)
    result = torch.where(in_bounds.reshape(batch_shape + (1,) * nw), result, fill_value)
  batch_axes = iter(range(nb))
  order = [nb + dims.offset_dims.index(i) if i in dims.offset_dims else next(batch_axes) for i in range(nb + nw)]
  return result.permute(order)


def _unary(fn):
  return lambda x, **_: fn(x)


_IDENTITY = lambda x, **_: x  # noqa: E731 - primitives that only carry metadata in inference

PRIMITIVES: dict[str, Callable[..., Any]] = {
    'add': torch.add, 'add_any': torch.add, 'sub': torch.sub, 'mul': lambda x, y, **_: torch.mul(x, y), 'div': _div,
    'max': torch.maximum, 'min': torch.minimum, 'pow': torch.pow, 'integer_pow': _integer_pow,
    'rem': torch.fmod, 'atan2': torch.atan2, 'nextafter': torch.nextafter,
    'exp': _unary(torch.exp), 'exp2': _unary(torch.exp2), 'log': _unary(torch.log), 'log1p': _unary(torch.log1p),
    'expm1': _unary(torch.expm1), 'rsqrt': _unary(torch.rsqrt), 'sqrt': _unary(torch.sqrt),
    'erf': _unary(torch.erf), 'erfc': _unary(torch.erfc), 'erf_inv': _unary(torch.erfinv),
    'tanh': _unary(torch.tanh), 'logistic': _unary(torch.sigmoid), 'sin': _unary(torch.sin),
    'cos': _unary(torch.cos), 'neg': _unary(torch.neg), 'abs': _unary(torch.abs), 'sign': _unary(torch.sign),
    'floor': _unary(torch.floor), 'ceil': _unary(torch.ceil), 'round': _unary(torch.round),
    'square': _unary(torch.square), 'is_finite': _unary(torch.isfinite),
    'not': _unary(torch.logical_not), 'and': torch.logical_and, 'or': torch.logical_or,
    'lt': torch.lt, 'gt': torch.gt, 'le': torch.le, 'ge': torch.ge, 'eq': torch.eq, 'ne': torch.ne,
    'reduce_sum': _reduce(torch.sum), 'reduce_max': _reduce(torch.amax), 'reduce_min': _reduce(torch.amin),
    'reduce_and': _reduce(torch.all), 'reduce_or': _reduce(torch.any), 'argmax': _argmax,
    'reduce_window_max': _reduce_window_max,
    'dot_general': _dot_general, 'conv_general_dilated': _conv, 'gather': _gather,
    'reshape': lambda x, *, new_sizes, **_: x.reshape(tuple(new_sizes)),
    'transpose': lambda x, *, permutation: x.permute(tuple(permutation)),
    'broadcast_in_dim': _broadcast_in_dim,
    'squeeze': lambda x, *, dimensions: x.squeeze(tuple(dimensions)) if dimensions else x,
    'concatenate': lambda *xs, dimension: torch.cat(xs, dim=dimension),
    'stack': lambda *xs, axis: torch.stack(xs, dim=axis),
    'slice': _slice, 'dynamic_slice': _dynamic_slice, 'pad': _pad,
    'rev': lambda x, *, dimensions: torch.flip(x, tuple(dimensions)),
    'split': lambda x, *, sizes, axis: list(torch.split(x, tuple(sizes), dim=axis)),
    'convert_element_type': lambda x, *, new_dtype, **_: x.to(torch_dtype(new_dtype)),
    'select_n': _select_n, 'clamp': lambda lo, x, hi: torch.clamp(x, lo, hi), 'iota': _iota,
    'stop_gradient': _IDENTITY, 'copy': _IDENTITY, 'copy_p': _IDENTITY, 'optimization_barrier': _IDENTITY,
    'reduce_precision': _IDENTITY, 'sharding_constraint': _IDENTITY,
}


def _softmax_attention(scale: float):
  def attention(q, k, v):
    """(batch, length, heads, head_dim) layouts, as `jax.nn.dot_product_attention`."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return [out.transpose(1, 2)]
  return attention


def _affine(x, kernel, bias=None):
  """`layers.affine_map` as one oneDNN matmul with the bias added in its epilogue (kernel (D, ...) as (D, E))."""
  out = F.linear(x, kernel.reshape(kernel.shape[0], -1).t(), None if bias is None else bias.reshape(-1))
  return [out.reshape(*x.shape[:-1], *kernel.shape[1:])]


# Named jitted computations of the models (`models.layers`: the jit's name, then ':' and its one parameter)
# run as one torch kernel each, instead of their primitives one by one.
NAMED_KERNELS: dict[str, Callable[[str], Callable[..., list]]] = {
    layers.ATTENTION_NAME: lambda scale: _softmax_attention(float(scale)),
    layers.AFFINE_NAME: lambda _: _affine,
    layers.GELU_NAME: lambda _: lambda x: [F.gelu(x)],
    layers.LAYER_NORM_NAME: lambda eps: lambda x, scale, bias: [
        F.layer_norm(x.float(), scale.shape, scale, bias, float(eps))],
}


def _named_kernel(name: str) -> Callable[..., list] | None:
  base, _, argument = name.partition(':')
  return NAMED_KERNELS[base](argument) if base in NAMED_KERNELS else None


# Primitives that wrap an inner jaxpr: evaluated by recursion (param holding the inner jaxpr).
_CALLS = {'pjit': 'jaxpr', 'jit': 'jaxpr', 'closed_call': 'call_jaxpr', 'core_call': 'call_jaxpr',
          'custom_jvp_call': 'call_jaxpr', 'custom_vjp_call': 'call_jaxpr', 'remat': 'jaxpr',
          'checkpoint': 'jaxpr'}


def _inner(params: dict, key: str) -> tuple[jax_core.Jaxpr, list]:
  inner = params[key]
  return (inner.jaxpr, list(inner.consts)) if isinstance(inner, jax_core.ClosedJaxpr) else (inner, [])


def unsupported_primitives(jaxpr: jax_core.Jaxpr) -> set[str]:
  """Names of the primitives in `jaxpr` (inner jaxprs included) that this module cannot evaluate."""
  missing = set()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in _CALLS:
      missing |= unsupported_primitives(_inner(eqn.params, _CALLS[name])[0])
    elif name == 'scan':
      missing |= unsupported_primitives(eqn.params['jaxpr'].jaxpr)
    elif name not in PRIMITIVES:
      missing.add(name)
  return missing


@functools.cache
def _plan(jaxpr: jax_core.Jaxpr) -> tuple[tuple[tuple[jax_core.Var, ...], ...], dict[int, torch.Tensor]]:
  """For each equation, the variables read for the last time there (freed after it); and the jaxpr's
  literals as 0-d or constant tensors of their own dtype, by `id` of the literal."""
  last, literals = {}, {}
  for i, eqn in enumerate(jaxpr.eqns):
    for v in eqn.invars:
      if isinstance(v, jax_core.Var):
        last[v] = i
      else:
        literals[id(v)] = to_torch(np.asarray(v.val, dtype=v.aval.dtype))
  for v in jaxpr.outvars:
    if isinstance(v, jax_core.Literal):
      literals[id(v)] = to_torch(np.asarray(v.val, dtype=v.aval.dtype))
  kept = {v for v in jaxpr.outvars if isinstance(v, jax_core.Var)}
  per_eqn = [[] for _ in jaxpr.eqns]
  for v, i in last.items():
    if v not in kept:
      per_eqn[i].append(v)
  return tuple(tuple(vs) for vs in per_eqn), literals


def _scan(consts_and_init, params):
  n_consts, n_carry = params['num_consts'], params['num_carry']
  body, body_consts = _inner(params, 'jaxpr')
  body_consts = [to_torch(c) for c in body_consts]
  consts, carry = consts_and_init[:n_consts], list(consts_and_init[n_consts:n_consts + n_carry])
  xs = consts_and_init[n_consts + n_carry:]
  steps = range(params['length'] - 1, -1, -1) if params['reverse'] else range(params['length'])
  ys = []
  for i in steps:
    outs = evaluate(body, body_consts, *consts, *carry, *(x[i] for x in xs))
    carry, y = outs[:n_carry], outs[n_carry:]
    ys.append(y)
  if params['reverse']:
    ys.reverse()
  stacked = [torch.stack(column) for column in zip(*ys)] if ys and ys[0] else []
  return [*carry, *stacked]


def evaluate(jaxpr: jax_core.Jaxpr, consts: list, *args) -> list:
  """The outputs of `jaxpr` on torch tensors `args` (its constants already converted)."""
  env: dict[jax_core.Var, Any] = dict(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))

  last_uses, literals = _plan(jaxpr)

  def read(v):
    return literals[id(v)] if isinstance(v, jax_core.Literal) else env[v]

  for eqn, dead in zip(jaxpr.eqns, last_uses):
    name, inputs = eqn.primitive.name, [read(v) for v in eqn.invars]
    kernel = _named_kernel(eqn.params.get('name', '')) if name in ('pjit', 'jit') else None
    if kernel is not None:
      outputs = kernel(*inputs)
    elif name in _CALLS:
      inner, inner_consts = _inner(eqn.params, _CALLS[name])
      outputs = evaluate(inner, [to_torch(c) for c in inner_consts], *inputs)
    elif name == 'scan':
      outputs = _scan(inputs, eqn.params)
    else:
      if name not in PRIMITIVES:
        raise UnsupportedPrimitive(f'no torch mapping for the JAX primitive {name!r}')
      params = {k: v for k, v in eqn.params.items() if k not in ('accuracy', 'out_sharding', 'sharding')}
      if params.get('out_dtype', 0) is None:
        del params['out_dtype']
      result = PRIMITIVES[name](*inputs, **params)
      outputs = result if eqn.primitive.multiple_results else [result]
    for v in dead:
      env.pop(v, None)
    for v, out in zip(eqn.outvars, outputs):
      if not isinstance(v, jax_core.DropVar):
        env[v] = out if isinstance(out, torch.Tensor) else torch.tensor(out, dtype=torch_dtype(v.aval.dtype))
  return [read(v) for v in jaxpr.outvars]


class TorchFunction:
  """`fn` (a function of JAX arrays) evaluated by torch: traced once per input signature, like `jax.jit`.

  Raises `UnsupportedPrimitive` at the first call of a signature whose jaxpr cannot be evaluated.
  """

  def __init__(self, fn: Callable):
    self.fn = fn
    self._traces: dict[Any, tuple] = {}

  def trace(self, *args, traced: jax.stages.Traced | None = None):
    """The flat arguments and (jaxpr, constants, output tree) of this signature; `traced` is
    `jax.jit(fn).trace(*args)` where the caller has it already."""
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves))
    if key not in self._traces:
      traced = traced or jax.jit(self.fn).trace(*args)
      missing = unsupported_primitives(traced.jaxpr.jaxpr)
      if missing:
        raise UnsupportedPrimitive(f'no torch mapping for the JAX primitives {sorted(missing)}')
      self._traces[key] = (traced.jaxpr.jaxpr, [to_torch(c) for c in traced.jaxpr.consts], traced.out_tree)
    return leaves, self._traces[key]

  def __call__(self, *args):
    leaves, (jaxpr, consts, out_tree) = self.trace(*args)
    with torch.inference_mode():
      outputs = evaluate(jaxpr, consts, *(to_torch(x) for x in leaves))
    return jax.tree.unflatten(out_tree, [to_jax(o) for o in outputs])
