"""SparseSync (BMVC 2022), trained end to end: S3D and ResNet-18 trunks, selectors, offset head.

  python scripts/train.py --config configs/sparsesync.py --workdir runs/sparsesync
  python scripts/train.py --config configs/sparsesync.py:lrs3 --workdir runs/sparsesync_lrs3 \
      --config.model.init_s3d=models/s3d_kinetics400 --config.model.init_resnet=models/resnet_audio_vggsound
  python scripts/train.py --config configs/sparsesync.py:vggsound_sparse --workdir runs/sparsesync_vggss \
      --config.model.init=runs/sparsesync_lrs3/best

The trunk directories are converted checkpoints (`scripts/convert_checkpoint.py` on
`S3D_kinetics400_torchified.pt` and the ResNetAudio VGGSound file). Variants: '' (a tiny SparseSync on the
embedded synthetic dataset, minutes on a CPU); 'lrs3' (pre-training on LRS3 'No Face Crop', 21 classes) and
'vggsound_sparse' (the README's fine-tune from it, augmentations at p = 0.2); a '_3cls' suffix gives the
3-class (-1, 0, +1 s) models.
"""
from synchformer_jax.train.config import ConfigError, base_config

# The original's optimiser: Adam (eps 1e-7 for its fp16 training), lr 5e-6 per GPU with 10 clips per GPU,
# warm-up from lr/100 over 1000 iterations then constant, gradient norm clipped at 1. The device count is
# ours to choose: the recipe below scales both to 8 devices.
RECIPE_DEVICES = 8
RECIPES = {'lrs3': 'lrs3_h264', 'vggsound_sparse': 'vggsound_sparse'}


def get_config(arg: str = ''):
  c = base_config('sparsesync')
  c.total_steps = 150
  c.batch_size = 4
  c.eval_every = 75
  c.checkpoint_every = 75
  c.data.eval_max_clips = 32
  c.optim.update(name='adam', schedule='constant_with_warmup', learning_rate=3e-4, warmup_steps=30, eps=1e-7)
  if not arg:
    return c
  variant, three_classes = (arg[:-len('_3cls')], True) if arg.endswith('_3cls') else (arg, False)
  if variant not in RECIPES:
    raise ConfigError(f'config variant: expected one of {sorted(RECIPES)}, optionally with _3cls, got {arg!r}')
  c.model.size = 'full'
  c.model.num_classes = 3 if three_classes else 21
  c.model.dtype = 'bfloat16'  # the original trains under fp16 autocast
  c.data.name = RECIPES[variant]
  c.data.build_if_missing = False
  c.data.eval_max_clips = 100_000
  c.data.workers = 8
  c.data.augmentation = 'finetune' if variant == 'vggsound_sparse' else 'default'
  c.batch_size = 10 * RECIPE_DEVICES
  c.total_steps = 500_000
  c.eval_every = 2000
  c.checkpoint_every = 2000
  c.log_every = 20
  c.optim.update(learning_rate=5e-6 * RECIPE_DEVICES, warmup_steps=1000, b1=0.9, b2=0.999, weight_decay=0.0,
                 clip_norm=1.0)
  return c
