"""Builds a dataset as TFDS ArrayRecord files: encoded mp4 bytes plus metadata per clip.

  python scripts/build_dataset.py --dataset synthetic_sync --data_dir data/tfds
  python scripts/build_dataset.py --dataset vggsound --manual_dir VIDEOS --metadata_dir LISTS --data_dir data/tfds
  python scripts/build_dataset.py --dataset audioset --manual_dir VIDEOS --data_dir gs://bucket/tfds --beam \\
      --beam_pipeline_options='--runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp'

Writes <data_dir>/<dataset>/<version>/ with build_report.json beside the data: the clips left
out and why. Prints a summary of that report.
"""
import argparse
import shlex

from synchformer_jax.data import builders


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--dataset', required=True, choices=sorted(builders.BUILDERS))
  parser.add_argument('--data_dir', required=True, help='where <dataset>/<version>/ is written')
  parser.add_argument('--manual_dir', help='folder of mp4s (all datasets but synthetic_sync)')
  parser.add_argument('--metadata_dir', help='split lists and CSVs; default: --manual_dir')
  parser.add_argument('--num_clips', type=int, help='keep only the first N listed clips of each split')
  parser.add_argument('--num_workers', type=int, help='local build processes; default: all cores')
  parser.add_argument('--beam', action='store_true', help='build on Apache Beam (DirectRunner unless options say)')
  parser.add_argument('--beam_pipeline_options', default='', help='Beam flags, e.g. "--runner=DataflowRunner ..."')
  args = parser.parse_args(argv)

  beam_options = None
  if args.beam:
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top

    beam_options = PipelineOptions(shlex.split(args.beam_pipeline_options))
  builder_kwargs = {'num_clips': args.num_clips, 'num_workers': args.num_workers}
  if args.dataset != 'synthetic_sync':
    builder_kwargs['metadata_dir'] = args.metadata_dir
  builder = builders.build(
      args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir, beam_options=beam_options, **builder_kwargs
  )
  report = builders.read_build_report(args.data_dir, builder.name, str(builder.version))
  for split, summary in report['splits'].items():
    print(f'{split}: {summary["written"]} written of {summary["listed"]} listed; excluded: {summary["excluded_by_kind"]}')
  print(f'report: {builder.data_path / builders.REPORT_NAME}')


if __name__ == '__main__':
  main()
