"""Stage III: the synchronizability fine-tune (13 segments, 2-way head) from a Stage II model.

  python scripts/train.py --config configs/synchability.py --workdir runs/synchability --config.model.init=runs/sync/best

Variants: '' (tiny model on the embedded synthetic dataset), 'audioset', 'vggsound', 'lrs3'.
"""
from synchformer_jax.train.config import base_config, full_size_recipe


def get_config(arg: str = ''):
  c = base_config('synchability')
  c.total_steps = 200
  c.batch_size = 8
  c.eval_every = 100
  if arg:
    full_size_recipe(c, arg)
  return c
