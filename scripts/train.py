"""Trains a stage: python scripts/train.py --config configs/avclip.py --workdir runs/avclip [--config.total_steps=100]

Re-running the same command on the same workdir resumes. See configs/*.py for the stages and variants.
Multi-host (one process per host, each reading its own share of the data): add --multihost on every host;
the cluster is detected on TPU slices, or given by --coordinator_address, --num_processes and --process_id.
"""
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from synchformer_jax.train.loop import initialize_multihost, train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a config file, optionally with :VARIANT', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory (checkpoints, metrics, exported models)')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'join a multi-host run (jax.distributed) before training')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'multi-host: host:port of process 0 (default: detected)')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'multi-host: number of processes (default: detected)')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'multi-host: this process (default: detected)')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)  # orbax and grain narrate every save at INFO
  if _MULTIHOST.value:
    initialize_multihost(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  result = train(_CONFIG.value, _WORKDIR.value)
  print({k: v for k, v in result.items() if not isinstance(v, dict)} | {'best': result['best']})


if __name__ == '__main__':
  sys.exit(app.run(main))
