"""Trains a stage: python scripts/train.py --config configs/avclip.py --workdir runs/avclip [--config.total_steps=100]

Re-running the same command on the same workdir resumes. See configs/*.py for the stages and variants.
"""
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from synchformer_jax.train.loop import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a config file, optionally with :VARIANT', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory (checkpoints, metrics, exported models)')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)  # orbax and grain narrate every save at INFO
  result = train(_CONFIG.value, _WORKDIR.value)
  print({k: v for k, v in result.items() if not isinstance(v, dict)} | {'best': result['best']})


if __name__ == '__main__':
  sys.exit(app.run(main))
