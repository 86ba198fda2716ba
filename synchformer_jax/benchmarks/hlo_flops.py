"""FLOPs of the dots and convolutions in an HLO module's text: XLA's program counted as the analytic counter counts."""
from __future__ import annotations

import math
import re

# One HLO instruction: `name = type[dims]{layout} op(operands), attributes`.
_HLO_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?([\w.\-]+) = \w+\[([\d,]*)\]\S* ([\w\-]+)\((.*?)\)(.*)$')
_COMPUTATION_START = re.compile(r'^(?:ENTRY )?([\w.\-]+) [{(]')
# Computations an instruction runs: calls, fusions, reducers, a loop's body and condition (once each).
_CALLED = re.compile(r'(?:to_apply|calls|body|condition)=([\w.\-]+)')


def _instruction_flops(shapes: dict[str, list[int]], name: str, op: str, operands: str, attributes: str) -> int:
  if op == 'dot':
    lhs = shapes[operands.split(',')[0].strip()]
    contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', attributes).group(1)
    return 2 * math.prod(shapes[name]) * math.prod(lhs[int(i)] for i in contracting.split(',') if i)
  if op == 'convolution':
    kernel = shapes[operands.split(',')[1].strip()]
    kernel_labels = re.search(r'dim_labels=\w+_(\w+)->', attributes).group(1)
    return 2 * math.prod(shapes[name]) * math.prod(kernel) // kernel[kernel_labels.index('o')]
  return 0


def matmul_flops(hlo_text: str) -> int:
  """FLOPs of the dots and convolutions of an HLO module (2 per multiply-add): XLA's own program counted
  the way `synchformer_jax.flops` counts, without elementwise work. A computation counts once per instruction
  that calls it (a named jit called from every block is one computation in the module); loops are not
  unrolled, so a loop body counts once, as in an unoptimised forward without loops."""
  shapes: dict[str, list[int]] = {}
  own: dict[str, int] = {}
  calls: dict[str, list[str]] = {}
  entry = current = None
  for line in hlo_text.splitlines():
    start = _COMPUTATION_START.match(line)
    if start:
      current = start.group(1)
      own[current], calls[current] = 0, []
      entry = current if line.startswith('ENTRY ') else entry
      continue
    if current is None:
      continue
    calls[current] += _CALLED.findall(line)  # tuple-valued instructions too, which the pattern below skips
    match = _HLO_INSTRUCTION.match(line)
    if match:
      name, dims, op, operands, attributes = match.groups()
      shapes[name] = [int(d) for d in dims.split(',') if d]
      own[current] += _instruction_flops(shapes, name, op, operands, attributes)

  def total(computation: str) -> int:
    return own[computation] + sum(total(callee) for callee in calls[computation])
  return total(entry)
