"""Throughput of building test-time model inputs: windowed decode vs decoding the whole clip then cropping.

  taskset -c 0 python scripts/benchmark_data.py            # one core: pin it, as here
  python scripts/benchmark_data.py --clip some.mp4 --stage 1 --pairs 10 --repeats 3

Each (offset, vstart) pair of the fixed-offset CSV (the VGGSound test file by default) becomes one model
input built from --clip, twice per pair and repeat, alternating the two ways:
  windowed: decode only the frames and samples the input uses (synchformer_jax's default);
  full:     decode the whole clip, then crop (what the original's read_video pipeline does).
Prints JSON: clips/s and mean seconds per clip for each, split into decode and transforms, and the speed-up.
"""
import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from synchformer_jax.data.decode import MediaFile
from synchformer_jax.data.transforms import STAGE_I, STAGE_II, make_example, plan_clip

SHARED = Path(__file__).resolve().parents[1].parent / 'shared'
STAGES = {1: STAGE_I, 2: STAGE_II}


def _time_one(path, stage, offset_sec, vstart_sec, windowed):
  start = time.perf_counter()
  media = MediaFile(path)
  plan = plan_clip(media.info, stage, offset_sec=offset_sec, vstart_sec=vstart_sec)
  clip = media.read(plan.frame_window, plan.sample_window) if windowed else media.read()
  decoded = time.perf_counter()
  make_example(plan, clip, stage)
  return decoded - start, time.perf_counter() - decoded


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--clip', type=Path, default=SHARED / 'samples' / '3qesirWAGt4_20000_30000.mp4')
  parser.add_argument('--offsets-csv', type=Path,
                      default=SHARED / 'samples' / 'metadata' / 'fixed_offsets' /
                      'vggsound_test_size21_crop5_min-2.00_max2.00.csv')
  parser.add_argument('--pairs', type=int, default=20, help='first N (offset, vstart) rows of the CSV')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--stage', type=int, choices=sorted(STAGES), default=2)
  args = parser.parse_args(argv)

  with args.offsets_csv.open() as f:
    pairs = [(float(row['offset_sec']), float(row['vstart_sec'])) for row in csv.DictReader(f)][: args.pairs]
  stage = STAGES[args.stage]
  if stage is STAGE_I:
    pairs = [(None, None)] * len(pairs)  # Stage I inputs always take the centre of the clip
  _time_one(args.clip, stage, *pairs[0], windowed=True)  # warm-up (imports, caches)
  times = {'windowed': [], 'full': []}
  for _ in range(args.repeats):
    for offset_sec, vstart_sec in pairs:
      for way in times:
        times[way].append(_time_one(args.clip, stage, offset_sec, vstart_sec, windowed=way == 'windowed'))
  report = {'clip': str(args.clip), 'stage': args.stage, 'inputs_per_way': len(pairs) * args.repeats}
  for way, rows in times.items():
    decode_s, transform_s = np.mean(rows, axis=0)
    report[way] = {'clips_per_s': round(1 / (decode_s + transform_s), 3), 'decode_s': round(decode_s, 4),
                   'transforms_s': round(transform_s, 4)}
  report['speedup'] = round(report['windowed']['clips_per_s'] / report['full']['clips_per_s'], 2)
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  main()
