"""Benchmarks: prints (and with --out writes) a JSON result for a BENCHMARKS.md row.

  python scripts/benchmark.py stage2-forward --size full --batch 1 --dtype float32
  python scripts/benchmark.py loader --stage sync --workers 2 --batch 8 --data_dir data/generated

Runs on whatever JAX finds (CPU here); the row names the command, machine and versions.
"""
import argparse
import json
import shlex
import sys

from synchformer_jax import profiling
from synchformer_jax.models.config import SIZES, config_for_size
from synchformer_jax.train import input_pipeline
from synchformer_jax.train.config import base_config as get_train_config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('benchmark', choices=['stage2-forward', 'loader'])
  parser.add_argument('--size', choices=SIZES, default='full')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--stage', choices=['avclip', 'sync', 'synchability'], default='sync', help='loader: pipeline')
  parser.add_argument('--workers', type=int, default=0, help='loader: grain worker processes')
  parser.add_argument('--batches', type=int, default=10, help='loader: batches to time')
  parser.add_argument('--data_dir', default='data/generated', help='loader: where synthetic_sync is (built if absent)')
  parser.add_argument('--out', help='write the JSON result here as well')
  args = parser.parse_args(argv)

  if args.benchmark == 'stage2-forward':
    cfg = config_for_size('sync', args.size, dtype=args.dtype)
    measured = {'size': args.size, 'batch': args.batch, 'dtype': args.dtype, 'segments': cfg.transformer.n_segments,
                **profiling.stage2_forward(cfg, args.batch, args.repeats)}
  else:
    config = get_train_config(args.stage)
    config.update(batch_size=args.batch)
    config.model.size = args.size
    config.data.update(dir=args.data_dir, workers=args.workers)
    cfg = config_for_size(args.stage, args.size)
    sources = input_pipeline.open_sources(config)
    measured = {'stage': args.stage, 'size': args.size, 'batch': args.batch, 'workers': args.workers,
                **profiling.loader_throughput(input_pipeline.train_batches(config, cfg, sources['train']),
                                              args.batches, args.batch)}
  result = {'benchmark': args.benchmark, **measured, 'machine': profiling.machine_description(),
            'command': 'python scripts/benchmark.py ' + ' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))}
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
