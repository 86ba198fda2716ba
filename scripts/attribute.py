"""Evidence attribution (Fig. 3 of the paper): which frames and which parts of the spectrogram an offset
prediction rests on.

  python scripts/attribute.py --checkpoint DIR --video X.mp4 [--offset_sec 1.6] [--v_start_sec 0] --out fig.png

The window is the one predict.py sees with the same arguments. A Synchformer checkpoint: gradient × input of the
predicted offset (unless --explain_offset_sec names another) and the global transformer's attention rollout. A
SparseSync checkpoint (recognised from it): what its selectors attend to, the video selectors over the frames'
time and space, the audio selectors over the spectrogram's time and frequency.
"""
import argparse

import synchformer_jax
from synchformer_jax.inference import attribution, cli


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', required=True,
                      help='a Stage II or SparseSync model directory (synchformer_jax.load)')
  parser.add_argument('--video', required=True)
  parser.add_argument('--offset_sec', type=float, default=0.0, help='artificial offset: audio starts this much later')
  parser.add_argument('--v_start_sec', type=float, default=0.0, help='start of the video window')
  parser.add_argument('--explain_offset_sec', type=float,
                      help='Synchformer: the offset whose logit to explain (default: predicted)')
  parser.add_argument('--no_rollout', action='store_true', help='Synchformer: gradient × input only')
  parser.add_argument('--out', required=True, help='the figure (PNG)')
  parser.add_argument('--original_decoder', action='store_true', help="decode as the original's PyAV 9 did")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  model = synchformer_jax.load(args.checkpoint)
  result = attribution.attribute(model, args.video, offset_sec=args.offset_sec, v_start_sec=args.v_start_sec,
                                 explain_offset_sec=args.explain_offset_sec, rollout=not args.no_rollout,
                                 original_decoder=args.original_decoder)
  attribution.plot_evidence(result, args.out)
  print(f'{args.video}: {result.summary()}: {args.out}')
  return 0


if __name__ == '__main__':
  cli.run(main)
