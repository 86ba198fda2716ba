"""Stage I isoFLOP sweep on AudioSet for TPU slices: tower width × depth at three training-FLOP budgets.

  python scripts/sweep.py --sweep configs/sweeps/avclip_audioset.py --workdir /mnt/shared/sweeps/avclip_audioset \\
      --print_commands      # one train.py command per point; run each with --multihost on its slice
  python scripts/sweep.py --sweep configs/sweeps/avclip_audioset.py --workdir /mnt/shared/sweeps/avclip_audioset --collect
  python scripts/fit_scaling.py /mnt/shared/sweeps/avclip_audioset

The published recipe (`configs/avclip.py:audioset`: bf16, remat, AdamW, cosine, batch 32) with towers trained
from scratch at widths 384-768 (64-wide heads, MLP 4×) and depths 6-12; each point's steps spend its budget.
Variant 'small_budgets' divides the budgets by 100 for a first look on one slice.
"""
from ml_collections import ConfigDict

WIDTHS = (384, 512, 640, 768)
DEPTHS = (6, 8, 12)
HEAD_WIDTH = 64
BUDGETS = (3e18, 1e19, 3e19)  # training FLOPs (analytic); ViT-B towers at batch 32 spend ~5.5e14 a step


def get_sweep(arg: str = ''):
  if arg not in ('', 'small_budgets'):
    raise ValueError(f"sweep variant: expected '' or 'small_budgets', got {arg!r}")
  s = ConfigDict()
  s.base = 'configs/avclip.py:audioset'
  s.overrides = {'model': {'towers': {'mlp_ratio': 4}}, 'eval_every': 2000, 'checkpoint_every': 1000}
  s.points = [{'model.towers.dim': dim, 'model.towers.heads': dim // HEAD_WIDTH, 'model.towers.depth': depth}
              for dim in WIDTHS for depth in DEPTHS]
  scale = 100 if arg == 'small_budgets' else 1
  s.isoflop = ConfigDict({'budgets': [b / scale for b in BUDGETS], 'tolerance': 0.02, 'min_steps': 500})
  return s
