"""Stage I scaling sweep of the tiny family on the embedded synthetic dataset (the CPU demonstration).

  python scripts/sweep.py --sweep configs/sweeps/avclip_tiny.py --workdir runs/sweep_avclip_tiny
  python scripts/fit_scaling.py runs/sweep_avclip_tiny

Both towers at width 16, 32, 48 and 64 (depth 2, 16-wide heads, MLP 4× the width), each trained for
20, 40, 80 and 160 steps of 4 clips with a cosine schedule over its own length: 16 points. Evaluation once, at
the end, on 32 validation clips (contrastive loss over groups of 4 clips, shifted-window precision).
Variant 'isoflop': the same widths at three FLOP budgets, each point's steps chosen to spend its budget.
"""
from ml_collections import ConfigDict

WIDTHS = (16, 32, 48, 64)
STEPS = (20, 40, 80, 160)  # a 2-core CPU decodes about 3 clips/s: 16 points in under 40 min
HEAD_WIDTH = 16


def _width(dim: int) -> dict:
  return {'model.towers.dim': dim, 'model.towers.heads': dim // HEAD_WIDTH}


def get_sweep(arg: str = ''):
  s = ConfigDict()
  s.base = 'configs/avclip.py'
  s.overrides = {'model': {'towers': {'depth': 2, 'mlp_ratio': 4}}, 'optim': {'warmup_steps': 10},
                 'eval_every': 10**9, 'data': {'eval_max_clips': 32}, 'log_every': 10}
  if arg == 'isoflop':
    s.points = [_width(dim) for dim in WIDTHS]
    s.isoflop = ConfigDict({'budgets': [5e11, 1e12, 2e12], 'tolerance': 0.05, 'min_steps': 20})
  elif arg:
    raise ValueError(f"sweep variant: expected '' or 'isoflop', got {arg!r}")
  else:
    s.points = [{**_width(dim), 'total_steps': steps} for dim in WIDTHS for steps in STEPS]
  return s
