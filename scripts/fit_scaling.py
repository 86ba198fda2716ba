"""Fits scaling laws to a sweep's results and plots them.

  python scripts/fit_scaling.py runs/sweep_avclip_tiny [--metric final_contrastive_loss] [--out DIR]

L(x) = E + A·x^-α for x = trained parameters N, clips seen D and training FLOPs C; the isoFLOP optima N*(C), D*(C)
when the sweep has FLOP budgets; the parametric L(N, D) = E + A/N^α + B/D^β; bootstrap intervals on every
exponent. Prints the fits, writes fits.json and the log-log PNGs (default: DIR/fits).
"""
import argparse
import os
import sys

from synchformer_jax.scaling import analysis
from synchformer_jax.scaling.sweep import read_results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdir', help="a sweep's directory (with results.jsonl)")
  parser.add_argument('--metric', help='the loss column to fit (default: the eval loss of the stage)')
  parser.add_argument('--out', help='where fits.json and the plots go (default: WORKDIR/fits)')
  parser.add_argument('--bootstrap', type=int, default=200, help='bootstrap resamples for the intervals')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  report = analysis.analyse(read_results(args.workdir), args.out or os.path.join(args.workdir, 'fits'),
                            metric=args.metric, samples=args.bootstrap, seed=args.seed)
  print(analysis.summary(report))
  return 0


if __name__ == '__main__':
  sys.exit(main())
