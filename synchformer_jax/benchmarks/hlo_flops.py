"""FLOPs of the dots and convolutions in an HLO module's text: XLA's program counted as the analytic counter counts."""
from __future__ import annotations

import math
import re

# One HLO instruction: `name = type[dims]{layout} op(operands), attributes`.
_HLO_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?([\w.\-]+) = \w+\[([\d,]*)\]\S* ([\w\-]+)\((.*?)\)(.*)$')


def matmul_flops(hlo_text: str) -> int:
  """FLOPs of the dots and convolutions of an HLO module (2 per multiply-add): XLA's own program counted
  the way `synchformer_jax.flops` counts, without elementwise work. Needs every computation called at
  most once, as in an unoptimised forward without loops."""
  shapes, total = {}, 0
  for line in hlo_text.splitlines():
    match = _HLO_INSTRUCTION.match(line)
    if not match:
      continue
    name, dims, op, operands, attributes = match.groups()
    shapes[name] = [int(d) for d in dims.split(',') if d]
    if op == 'dot':
      lhs = shapes[operands.split(',')[0].strip()]
      contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', attributes).group(1)
      total += 2 * math.prod(shapes[name]) * math.prod(lhs[int(i)] for i in contracting.split(',') if i)
    elif op == 'convolution':
      kernel = shapes[operands.split(',')[1].strip()]
      kernel_labels = re.search(r'dim_labels=\w+_(\w+)->', attributes).group(1)
      total += 2 * math.prod(shapes[name]) * math.prod(kernel) // kernel[kernel_labels.index('o')]
  return total
