"""What the inference scripts share: their error handling and how they print predictions."""
from __future__ import annotations

import sys
from typing import Callable

from synchformer_jax import cpu
from synchformer_jax.errors import InputError
from synchformer_jax.inference.results import OffsetCurve, OffsetPrediction, OffsetSearch


def run(main: Callable[[], int | None]) -> None:
  """Runs a script's main; a bad input (file, checkpoint, value: an `InputError`) ends it with one line on
  stderr and exit status 1. Any other error is a fault of the program and keeps its traceback.
  XLA:CPU's inference settings are applied first, before anything starts JAX."""
  cpu.use_inference_flags()
  try:
    status = main()
  except InputError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(1)
  sys.exit(status or 0)


def format_prediction(prediction: OffsetPrediction, top_k: int) -> list[str]:
  lines = []
  for t in prediction.top_k(top_k):
    logit = f' (logit {t["logit"]:.4f})' if 'logit' in t else ''
    lines.append(f'  p={t["prob"]:.4f}{logit}  offset {t["offset_sec"]:+.2f} s (class {t["class"]})')
  return lines


def format_result(result: OffsetPrediction | OffsetCurve | OffsetSearch, top_k: int) -> str:
  """Human-readable lines: the top-k offsets, as the original's example.py prints them."""
  if isinstance(result, OffsetCurve):
    lines = [f'applied offset {result.applied_offset_sec:+.2f} s; {len(result.start_sec)} windows of '
             f'{result.window_sec:.2f} s', '  window start   offset     p']
    lines += [f'  {t:8.2f} s  {o:+7.2f} s  {p.max():.4f}'
              for t, o, p in zip(result.start_sec, result.offset_sec, result.probs)]
    return '\n'.join(lines + [f'consensus (mean over windows), top {top_k}:',
                              *format_prediction(result.consensus, top_k)])
  if isinstance(result, OffsetSearch):
    lines = [f'applied offset {result.best.applied_offset_sec:+.2f} s; coarse offsets searched:']
    lines += [f'  {c.coarse_offset_sec:+6.2f} s: offset {c.offset_sec:+.2f} s, p={c.prob:.4f}'
              for c in result.candidates]
    return '\n'.join(lines + [f'most confident (coarse {result.best.coarse_offset_sec:+.2f} s), top {top_k}:',
                              *format_prediction(result.best, top_k)])
  return '\n'.join([f'applied offset {result.applied_offset_sec:+.2f} s, video window from {result.v_start_sec:.2f} s',
                    f'prediction, top {top_k}:', *format_prediction(result, top_k)])
