"""Predicts the audio-visual offset of videos, as the original's example.py (and beyond it).

  python scripts/predict.py --checkpoint DIR --video X.mp4 [--offset_sec 1.6] [--v_start_sec 4.0] [--top_k 5] [--json]
  python scripts/predict.py --checkpoint DIR --video LONG.mp4 --sliding --plot curve.png
  python scripts/predict.py --checkpoint DIR --video X.mp4 --search_range_sec 6
  python scripts/predict.py --checkpoint DIR --video X.mp4 --explain evidence.png
  python scripts/predict.py --checkpoint DIR --video_dir VIDEOS | --csv LIST.csv [--out results.csv]

The checkpoint is a Synchformer (Stage II) or a SparseSync model directory, recognised from it: each reads its own
window (Synchformer 4.8 s of segments, SparseSync a 5-s clip) and reports offsets on its own grid (21 classes over
±2 s; the 3-class SparseSync models -1, 0, +1 s).
`--offset_sec` starts the audio that much later than the video (an artificial offset the model should find).
Files longer than 10 s get sliding windows unless --no-sliding; --search_range_sec finds offsets beyond the grid.
A --csv has a header `path[,offset_sec,v_start_sec]`; a batch writes one row per file, failures included,
and exits with status 1 when any file failed.
"""
import argparse
import dataclasses
import json
import os
import sys

import synchformer_jax
from synchformer_jax import plots
from synchformer_jax.errors import InputError
from synchformer_jax.inference import attribution, batch, cli, kinds


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', required=True, help='a model directory (synchformer_jax.load)')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--video', help='one video file')
  source.add_argument('--video_dir', help='every video file in this folder (batch)')
  source.add_argument('--csv', help='a CSV of path[,offset_sec,v_start_sec] (batch)')
  parser.add_argument('--offset_sec', type=float, default=0.0,
                      help='artificial offset: audio starts this much later (--video, --video_dir)')
  parser.add_argument('--v_start_sec', type=float, default=0.0,
                      help='start of the video window (single window; --video, --video_dir)')
  parser.add_argument('--top_k', type=int, default=5)
  parser.add_argument('--json', action='store_true', help='print machine-readable JSON')
  parser.add_argument('--sliding', action=argparse.BooleanOptionalAction, default=None,
                      help='sliding windows over the whole file (default: for files longer than 10 s)')
  parser.add_argument('--hop_sec', type=float, default=1.0,
                      help='sliding: window step (rounded to 0.32 s; SparseSync: to a frame)')
  parser.add_argument('--plot', help='sliding: write the offset-over-time curve to this PNG')
  parser.add_argument('--search_range_sec', type=float, help='search offsets up to ± this (beyond the grid)')
  parser.add_argument('--search_step_sec', type=float, default=2.0,
                      help='search: step of the coarse offsets (≤ twice the grid\'s largest offset)')
  parser.add_argument('--explain', help='single window: write the evidence attribution figure to this PNG')
  parser.add_argument('--out', default='results.csv', help='batch: the results CSV')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), help='compute dtype (default: the checkpoint\'s)')
  parser.add_argument('--chunk_size', type=int,
                      help='per compiled call: segments (Synchformer, default 32) or 5-s windows (SparseSync, 4)')
  parser.add_argument('--original_decoder', action='store_true', help="decode as the original's PyAV 9 did")
  return parser.parse_args(argv)


def predict_options(args) -> batch.PredictOptions:
  if args.search_range_sec is not None:
    if args.sliding:
      raise InputError('--search_range_sec and --sliding are different modes; choose one')
    mode = 'search'
  else:
    mode = {None: 'auto', True: 'sliding', False: 'single'}[args.sliding]
  return batch.PredictOptions(mode=mode, hop_sec=args.hop_sec, search_range_sec=args.search_range_sec or 0.0,
                              search_step_sec=args.search_step_sec, top_k=args.top_k, chunk_size=args.chunk_size,
                              original_decoder=args.original_decoder)


def main(argv=None):
  args = parse_args(argv)
  options = predict_options(args)
  is_batch = args.video is None
  if is_batch:
    if args.plot or args.explain:
      raise InputError('--plot and --explain draw one file; a batch writes only the results CSV')
    if args.csv:
      items = batch.items_from_csv(args.csv)
    else:
      items = batch.items_in_directory(args.video_dir, args.offset_sec, args.v_start_sec)
  else:
    item = batch.FileItem(args.video, args.offset_sec, args.v_start_sec)
    # Resolved (and the file opened) before loading the model, so that a bad file fails fast.
    options = dataclasses.replace(options, mode=batch.resolve_mode(args.video, options.mode, args.original_decoder))
    if args.explain and options.mode != 'single':
      raise InputError(f'--explain explains one window; this run is in {options.mode} mode (use --no-sliding)')
    if args.plot and options.mode != 'sliding':
      raise InputError(f'--plot draws the sliding windows; this run is in {options.mode} mode (use --sliding)')
  model = synchformer_jax.load(args.checkpoint, dtype=args.dtype)

  if is_batch:
    failed = batch.write_results_csv(batch.predict_files(model, items, options), args.out)
    print(f'{len(items)} files, {failed} failed: {args.out}')
    if failed:
      print(f'error: {failed} of {len(items)} files failed; their errors are in the `error` column of {args.out}',
            file=sys.stderr)
    return 1 if failed else 0
  mode, result = batch.predict_file(model, item, options)
  if args.json:
    print(json.dumps({'video': args.video, 'mode': mode, **result.to_dict(args.top_k)}, indent=1))
  else:
    print(f'{args.video} ({mode})')
    print(cli.format_result(result, args.top_k))
  grid_max = kinds.max_offset_sec(model)
  if abs(args.offset_sec) > grid_max and mode != 'search':
    print(f'note: the applied offset {args.offset_sec:+.2f} s is outside the ±{grid_max:g}-s grid; '
          'use --search_range_sec to find it', file=sys.stderr)
  if args.plot:
    plots.plot_offset_curve(result, args.plot, title=f'{os.path.basename(args.video)}: offset over time')
  if args.explain:
    figure = attribution.attribute(model, args.video, offset_sec=args.offset_sec, v_start_sec=args.v_start_sec,
                                   original_decoder=args.original_decoder)
    attribution.plot_evidence(figure, args.explain)
  return 0


if __name__ == '__main__':
  cli.run(main)
