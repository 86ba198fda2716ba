"""Plots training curves of one or more runs from their metrics.jsonl into one PNG.

  python scripts/plot_curves.py --run "Stage I=runs/avclip" --run "Stage II=runs/sync" --out curves.png \\
      [--chance "Stage I=4.025" --chance "Stage II=3.045"]
"""
import argparse
import sys

from synchformer_jax.plots import plot_training_curves
from synchformer_jax.train.metric_log import read_metrics


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
  parser.add_argument('--run', action='append', required=True, help='LABEL=WORKDIR (repeatable)')
  parser.add_argument('--chance', action='append', default=[], help="LABEL=LOSS: a run's chance-level loss line")
  parser.add_argument('--out', required=True, help='the PNG to write')
  args = parser.parse_args(argv)
  chance = {label: float(value) for label, value in _pairs(args.chance, '--chance').items()}
  runs = {label: read_metrics(workdir) for label, workdir in _pairs(args.run, '--run').items()}
  plot_training_curves(runs, args.out, chance_loss=chance)
  print(args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
