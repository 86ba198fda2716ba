"""An opt-in XLA-CPU setting: oneDNN for the matrix products.

jaxlib 0.10.2 hands plain dots to YNNPACK by default. At the towers' real shapes (14 segments of 1569
tokens, e.g. a 21966×768 @ 768×2304 projection) YNNPACK reaches about 70 GFLOP/s per AVX2 core and
oneDNN about 85, and a full-size Motionformer block runs about 25 % faster with oneDNN's dots
(BENCHMARKS.md). Only the order of float32 summation inside each dot changes; the full-size parity
cases pass with it.

It is not the default because oneDNN fails to compile some small batched dots in this jaxlib (it logs
"partition compile failed" and the process dies of an illegal instruction or an object-pool check):
the tiny parity models' attention hits this. Use it for full-size inference, where it was checked.

XLA reads its flags once, when JAX initialises its backends, so `use_onednn_dots()` must run before
the first JAX computation. Flags already in XLA_FLAGS are left as they are.
"""
from __future__ import annotations

import os

# oneDNN takes the dots; YNNPACK keeps the fused softmax and reductions it takes by default.
ONEDNN_DOT_FLAGS = {'xla_cpu_use_onednn': 'true', 'xla_cpu_experimental_onednn_fusion_type': 'dot'}


def use_onednn_dots() -> list[str]:
  """Adds `ONEDNN_DOT_FLAGS` to XLA_FLAGS (those not set there already); returns the flags added.

  Raises RuntimeError when JAX's backends are already initialised (the flags would be ignored).
  """
  from jax._src import xla_bridge  # the public API has no "backends initialised?" query
  if xla_bridge.backends_are_initialized():
    raise RuntimeError('use_onednn_dots: JAX backends are already initialised; call it before any JAX computation')
  current = os.environ.get('XLA_FLAGS', '')
  added = [f'--{name}={value}' for name, value in ONEDNN_DOT_FLAGS.items() if f'--{name}=' not in current]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  return added
