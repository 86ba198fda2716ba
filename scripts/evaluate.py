"""Evaluates a model on a dataset split built with scripts/build_dataset.py.

  python scripts/evaluate.py --checkpoint DIR --dataset synthetic_sync --split test [--data_dir data/generated] \\
      [--iter_times 25 --random_offsets] [--out DIR]

Offset models (Stage II, or SparseSync: recognised from the checkpoint, each through its own pipeline and on its
own grid of 21 or 3 classes): acc@1, acc@1 ±1 class, a per-class table and a confusion-matrix PNG.
Synchronizability models (detected, or --synchronizability to insist): accuracy, ROC AUC and a ROC PNG.
Fixed offsets are used where the split has them; --random_offsets draws them, as the original does for
VGGSound-Sparse, and --iter_times repeats such random passes. Results go to OUT/results.json.
"""
import argparse
import json
import os

import synchformer_jax
from synchformer_jax import plots
from synchformer_jax.errors import InputError
from synchformer_jax.inference import cli, evaluation


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', required=True, help='a model directory (synchformer_jax.load)')
  parser.add_argument('--dataset', required=True, help='a dataset name (see scripts/build_dataset.py)')
  parser.add_argument('--split', default='test')
  parser.add_argument('--data_dir', default='data/generated', help='where the dataset was built')
  parser.add_argument('--iter_times', type=int, default=1, help='passes over the split, each with its own seed')
  parser.add_argument('--random_offsets', action='store_true', help='draw offsets even where the split fixes them')
  parser.add_argument('--synchronizability', action='store_true', help='require a synchronizability checkpoint')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', help='output folder (default: eval_<dataset>_<split>)')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), help='compute dtype (default: the checkpoint\'s)')
  parser.add_argument('--original_decoder', action='store_true', help="decode as the original's PyAV 9 did")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  model = synchformer_jax.load(args.checkpoint, dtype=args.dtype)
  if args.synchronizability and model.cfg.kind != 'synchability':
    raise InputError(f'{args.checkpoint}: --synchronizability needs a synchronizability checkpoint, '
                     f'this one is {model.cfg.kind!r}')
  report = evaluation.evaluate(model, args.dataset, args.split, args.data_dir, iter_times=args.iter_times,
                               batch_size=args.batch_size, random_offsets=args.random_offsets, seed=args.seed,
                               original_decoder=args.original_decoder)
  out = args.out or f'eval_{args.dataset}_{args.split}'
  os.makedirs(out, exist_ok=True)
  title = f'{args.dataset}/{args.split}, {report["num_predictions"]} predictions'
  print(f'{title} ({args.iter_times} pass{"es" if args.iter_times > 1 else ""})')
  for name, value in report['metrics'].items():
    print(f'  {name}: {value:.4f}')
  if 'per_class' in report:  # an offset model
    print('  class  offset   count  acc@1  acc@1±1')
    for row in report['per_class']:
      print(f'  {row["class"]:5d}  {row["offset_sec"]:+5.1f} s  {row["count"]:5d}  {row["accuracy_1"]:.3f}  '
            f'{row["accuracy_1_tol1"]:.3f}')
    figure = os.path.join(out, 'confusion_matrix.png')
    plots.plot_confusion_matrix(report['confusion_matrix'], [f'{o:+.1f}' for o in report['offset_grid']], figure,
                                title=f'{title}: offset (s)')
  else:
    figure = os.path.join(out, 'roc.png')
    plots.plot_roc(report['roc'], report['metrics']['roc_auc'], figure, title=f'{title}: synchronizability')
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump({'checkpoint': args.checkpoint, 'iter_times': args.iter_times, 'random_offsets': args.random_offsets,
               **report}, f, indent=1)
  print(f'results: {os.path.join(out, "results.json")}, figure: {figure}')
  return 0


if __name__ == '__main__':
  cli.run(main)
