"""Stage II: offset classification over frozen Stage I towers.

  python scripts/train.py --config configs/sync.py --workdir runs/sync --config.model.init=runs/avclip/best
  python scripts/train.py --config configs/sync.py:audioset --workdir runs/sync --config.model.init=models/avclip

Variants: '' (tiny model on the embedded synthetic dataset), 'audioset', 'vggsound', 'lrs3'.
"""
from synchformer_jax.train.config import base_config, full_size_recipe


def get_config(arg: str = ''):
  c = base_config('sync')
  c.total_steps = 6000
  c.batch_size = 32
  c.eval_every = 500
  c.checkpoint_every = 500
  # The frozen towers run once over 8 windows of every clip; the steps then cost only the transformer.
  c.data.precomputed_windows = 8
  if arg:
    full_size_recipe(c, arg)
  return c
