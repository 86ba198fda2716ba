"""Compiles a config's real train and eval steps for a TPU slice, from this host (no TPU needed; libtpu is).

  python scripts/compile_for.py --config configs/avclip.py:audioset --topology v5p:4x4x4 \
      --config.mesh.data=16 --config.mesh.fsdp=4 --out runs/compile/avclip_v5p64.json
  python scripts/compile_for.py --config configs/avclip.py:audioset --topology v5p:2x2x1 --find_max_batch

Prints per-chip memory against HBM, XLA's and the analytic FLOPs, collectives per step and the cost model's
step-time and MFU estimates (compile-time estimates, not measurements); --out writes the JSON.
"""
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from synchformer_jax.benchmarks import compile_for

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a config file, optionally with :VARIANT', lock_config=True)
_TOPOLOGY = flags.DEFINE_string('topology', None, "a TPU slice, e.g. 'v5e:2x2', 'v5p:4x4x4', 'v6e:16x16'")
_BATCH_PER_CHIP = flags.DEFINE_integer('batch_per_chip', None, 'clips per data shard (default: the config batch)')
_FIND_MAX_BATCH = flags.DEFINE_bool('find_max_batch', False, 'search the largest clips per chip that fit in HBM')
_START_BATCH = flags.DEFINE_integer('start_batch', 1, '--find_max_batch: the first batch to compile (one that an earlier '
                                    'search found to fit; compiled again)')
_OUT = flags.DEFINE_string('out', None, 'write the JSON result here')
flags.mark_flags_as_required(['config', 'topology'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  command = ' '.join(['python scripts/compile_for.py', *sys.argv[1:]])
  if _FIND_MAX_BATCH.value:
    search = compile_for.find_max_batch(_CONFIG.value, _TOPOLOGY.value, start=_START_BATCH.value)
    print(f"largest batch that fits: {search['max_batch_per_chip']} clips per chip "
          f"({len(search['probes'])} compiles: {search['probes']})")
    if search['at_max']:
      print(compile_for.summary(search['at_max']))
    result = {'command': command, **search}
  else:
    result = compile_for.compile_steps(_CONFIG.value, _TOPOLOGY.value, _BATCH_PER_CHIP.value)
    print(compile_for.summary(result))
    result = {'command': command, **result}
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  sys.exit(app.run(main))
