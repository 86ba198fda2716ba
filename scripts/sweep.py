"""Runs a scaling sweep: every point of a sweep file through the real trainer, one workdir each.

  python scripts/sweep.py --sweep configs/sweeps/avclip_tiny.py --workdir runs/sweep_avclip_tiny
  python scripts/sweep.py --sweep configs/sweeps/avclip_tiny.py --workdir runs/sweep --print_commands

Running it again resumes: finished points are kept, an interrupted point resumes from its checkpoint, a failed
one is tried again. `WORKDIR/results.jsonl` and `results.csv` hold one row per point (overrides, parameters,
analytic training FLOPs, clips seen, final and best eval metrics, wall time, status). --print_commands prints one
`train.py` command per point instead (to run the points elsewhere; `--collect` then writes the table from their
workdirs). Exits 1 when a point failed (the others ran; the table says which and why).
"""
import argparse
import logging
import sys

from synchformer_jax.scaling import sweep as sweeps


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sweep', required=True, help='a sweep file, optionally with :ARG')
  parser.add_argument('--workdir', required=True, help="the sweep's directory: one workdir per point, the results")
  action = parser.add_mutually_exclusive_group()
  action.add_argument('--print_commands', action='store_true', help='print one train.py command per point')
  action.add_argument('--collect', action='store_true', help='only write the results table from the workdirs')
  action.add_argument('--list', action='store_true', help='list the points with their parameters and FLOPs')
  parser.add_argument('--only', action='append', help='run only this point (repeatable)')
  args = parser.parse_args(argv)
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)
  sweep = sweeps.load_sweep(args.sweep)
  if args.print_commands:
    print('\n'.join(sweeps.commands(sweep, args.workdir)))
    return 0
  if args.list:
    for row in sweeps.results(sweep, args.workdir):
      print(f"{row['name']}: {row['status']}, {row['trainable']:,} trained parameters, "
            f"{row['train_flops']:.3g} training FLOPs, {row['clips_seen']} clips")
    return 0
  rows = sweeps.write_results(sweep, args.workdir) if args.collect else sweeps.run(sweep, args.workdir,
                                                                                      only=args.only)
  counts = {s: sum(r['status'] == s for r in rows) for s in sweeps.STATUSES}
  print(', '.join(f'{n} {s}' for s, n in counts.items() if n), f'-> {args.workdir}/{sweeps.RESULTS_CSV}')
  for row in rows:
    if row['status'] == 'failed':
      print(f"  failed: {row['name']}: {row['error']}")
  return 0 if counts['failed'] == 0 else 1


if __name__ == '__main__':
  sys.exit(main())
