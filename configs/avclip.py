"""Stage I: Segment AVCLIP contrastive pre-training of both towers.

  python scripts/train.py --config configs/avclip.py --workdir runs/avclip            # CPU default
  python scripts/train.py --config configs/avclip.py:audioset --workdir runs/avclip   # published recipe

Variants: '' (tiny model on the embedded synthetic dataset, minutes on a CPU), 'audioset', 'vggsound',
'lrs3' (full size, the original's batch and optimiser).
"""
from synchformer_jax.train.config import base_config, full_size_recipe


def get_config(arg: str = ''):
  c = base_config('avclip')
  c.total_steps = 300
  c.batch_size = 4
  c.eval_every = 150
  c.optim.name = 'adamw'
  c.optim.schedule = 'cosine'
  c.optim.learning_rate = 5e-4
  c.optim.eps = 1e-8
  if arg:
    full_size_recipe(c, arg)
  return c
