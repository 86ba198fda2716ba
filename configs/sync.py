"""Stage II: offset classification over frozen Stage I towers.

  python scripts/train.py --config configs/sync.py --workdir runs/sync --config.model.init=runs/avclip/best
  python scripts/train.py --config configs/sync.py:audioset --workdir runs/sync --config.model.init=models/avclip

Variants: '' (tiny model on the embedded synthetic dataset), 'audioset', 'vggsound', 'lrs3'.
"""
from synchformer_jax.train.config import base_config, full_size_recipe


def get_config(arg: str = ''):
  c = base_config('sync')
  c.total_steps = 400
  c.batch_size = 8
  c.eval_every = 200
  if arg:
    full_size_recipe(c, arg)
  return c
