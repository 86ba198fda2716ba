"""Stage I: Segment AVCLIP contrastive pre-training of both towers.

  python scripts/train.py --config configs/avclip.py --workdir runs/avclip            # CPU default
  python scripts/train.py --config configs/avclip.py:audioset --workdir runs/avclip   # published recipe

Variants: '' (tiny model on the embedded synthetic dataset, minutes on a CPU), 'audioset', 'vggsound',
'lrs3' (full size, the original's batch and optimiser).
"""
from synchformer_jax.train.config import base_config, full_size_recipe


def get_config(arg: str = ''):
  c = base_config('avclip')
  c.total_steps = 600
  c.batch_size = 4
  c.eval_every = 300
  c.optim.name = 'adamw'
  c.optim.schedule = 'cosine'
  # The tiny towers start from scratch, with outputs nearly equal for all inputs: at 5e-4 the loss falls to
  # the uniform ln(B*S) within 50 steps and stays there (BENCHMARKS.md); 5e-5 learns.
  c.optim.learning_rate = 5e-5
  c.optim.warmup_steps = 30
  c.optim.eps = 1e-8
  if arg:
    full_size_recipe(c, arg)
  return c
