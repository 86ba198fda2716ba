"""Converts an original Synchformer checkpoint into a synchformer_jax model directory, or back.

  python scripts/convert_checkpoint.py --src 24-01-04T16-39-21.pt --dst models/audioset_sync
  python scripts/convert_checkpoint.py --src models/audioset_sync --dst exported.pt --to-torch

The source kind (Stage II, Stage I AVCLIP, bare state dict, HF AST, Motionformer SSv2) is detected.
"""
import argparse
import json
import logging
import sys

from synchformer_jax.conversion import convert_checkpoint, export_torch_checkpoint
from synchformer_jax.errors import InputError
from synchformer_jax.models import TARGETS
from synchformer_jax.models.config import SIZES


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--src', required=True, help='original checkpoint file (or, with --to-torch, a model dir)')
  parser.add_argument('--dst', required=True, help='model directory to write (or, with --to-torch, a .pt file)')
  parser.add_argument('--target', choices=TARGETS, help="what to build (default: the source's own kind)")
  parser.add_argument('--size', choices=SIZES, help='architecture size, when the checkpoint does not tell')
  parser.add_argument('--allow-missing', action='store_true',
                      help='keep a fresh initialisation for target parameters the source lacks')
  parser.add_argument('--allow-unused', action='store_true', help='accept source keys no parameter takes')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing destination')
  parser.add_argument('--to-torch', action='store_true', help='export a model directory to the original layout')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  try:
    if args.to_torch:
      print(f'wrote {export_torch_checkpoint(args.src, args.dst)}')
    else:
      conversion = convert_checkpoint(args.src, args.dst, target=args.target, size=args.size,
                                      allow_missing=args.allow_missing, allow_unused=args.allow_unused,
                                      overwrite=args.overwrite)
      print(json.dumps({'dst': args.dst, **conversion.report()}, indent=1))
  except (InputError, FileExistsError) as e:  # a bad source, or a destination that is taken
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
