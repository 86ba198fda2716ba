"""Plots training curves of one or more runs from their metrics.jsonl into one PNG.

  python scripts/plot_curves.py --run "Stage I=runs/avclip" --run "Stage II=runs/sync" --out curves.png \\
      [--chance "Stage I=4.025" --chance "Stage II=3.045"]
  python scripts/plot_curves.py --sweep runs/sweep_avclip_tiny --out curves.png   # every point of a sweep
"""
import argparse
import os
import sys

from synchformer_jax.plots import plot_training_curves
from synchformer_jax.scaling.sweep import read_results
from synchformer_jax.train.metric_log import METRICS_FILE, read_metrics


def _pairs(items: list[str], flag: str) -> dict[str, str]:
  pairs = {}
  for item in items:
    label, sep, value = item.partition('=')
    if not sep or not label or not value:
      raise SystemExit(f'{flag} {item!r}: expected LABEL=VALUE')
    pairs[label] = value
  return pairs


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--run', action='append', default=[], help='LABEL=WORKDIR (repeatable)')
  parser.add_argument('--sweep', help="a sweep's directory: every point that has metrics, labelled by its name")
  parser.add_argument('--chance', action='append', default=[], help="LABEL=LOSS: a run's chance-level loss line")
  parser.add_argument('--out', required=True, help='the PNG to write')
  args = parser.parse_args(argv)
  chance = {label: float(value) for label, value in _pairs(args.chance, '--chance').items()}
  workdirs = _pairs(args.run, '--run')
  if args.sweep:
    points = {row['name']: os.path.join(args.sweep, row['name']) for row in read_results(args.sweep)}
    workdirs.update({name: d for name, d in points.items() if os.path.exists(os.path.join(d, METRICS_FILE))})
  if not workdirs:
    parser.error('give --run LABEL=WORKDIR or --sweep DIR')
  runs = {label: read_metrics(workdir) for label, workdir in workdirs.items()}
  plot_training_curves(runs, args.out, chance_loss=chance)
  print(args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
