"""Benchmarks: writes a JSON result and prints a BENCHMARKS.md row.

  python scripts/benchmark.py stage2-forward --size full --batch 1 --dtype float32

Runs on whatever JAX finds (CPU here); the row names the command, machine and versions.
"""
import argparse
import json
import shlex
import sys

from synchformer_jax import profiling
from synchformer_jax.models.config import SIZES, config_for_size


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('benchmark', choices=['stage2-forward'])
  parser.add_argument('--size', choices=SIZES, default='full')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', help='write the JSON result here as well')
  args = parser.parse_args(argv)

  cfg = config_for_size('sync', args.size, dtype=args.dtype)
  result = {'benchmark': args.benchmark, 'size': args.size, 'batch': args.batch, 'dtype': args.dtype,
            'segments': cfg.transformer.n_segments, **profiling.stage2_forward(cfg, args.batch, args.repeats),
            'machine': profiling.machine_description(),
            'command': 'python scripts/benchmark.py ' + ' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
