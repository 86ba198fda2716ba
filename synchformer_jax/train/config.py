"""Training config defaults shared by `configs/{avclip,sync,synchability,sparsesync}.py`, and their validation.

Every field is checked before any work starts; an invalid value raises `ConfigError` naming the field.
The model block names a size (`model.size`) and can override any architecture field of it
(`--config.model.transformer.layers=2`); `model.towers` sets width, depth, heads and MLP ratio of both towers at
once (a model family for scaling sweeps: `--config.model.towers.dim=96 --config.model.towers.depth=3`), and a
field set in `model.video` or `model.audio` wins over it. SparseSync's model block instead has its head
(`model.transformer`) and the fields of `SparseSyncConfig` it may override (`model.num_classes`, the trunks'
widths, the crop, the selector count). `model_config` builds the model config, whose own checks are the one
validation of the architecture.
"""
from __future__ import annotations

import dataclasses
import math

from ml_collections import ConfigDict, config_dict

from synchformer_jax.constants import OFFSET_TYPES, STAGES
from synchformer_jax.errors import InputError
from synchformer_jax.models.config import (AudioTowerConfig, ModelConfig, ModelConfigError, SparseSyncConfig,
                                           SyncTransformerConfig, VideoTowerConfig, config_for_size)
from synchformer_jax.sharding import BATCH_AXES, MESH_AXES
from synchformer_jax.train.optim import OPTIMIZERS, SCHEDULES

# The architecture sections of a model config, each a dataclass of the model package.
ARCHITECTURE_SECTIONS = {'video': VideoTowerConfig, 'audio': AudioTowerConfig, 'transformer': SyncTransformerConfig}


class ConfigError(InputError):
  """An invalid training config value; the message names the field."""


def _architecture_overrides(section: type) -> ConfigDict:
  """A placeholder for every field of an architecture section: None keeps the size's value."""
  types = {'int': int, 'float': float}
  return ConfigDict({f.name: config_dict.placeholder(types[f.type]) for f in dataclasses.fields(section)})


def base_config(stage: str) -> ConfigDict:
  """The CPU-sized default of a stage: the embedded synthetic dataset and a tiny model."""
  c = ConfigDict()
  c.stage = stage
  c.seed = 0
  c.total_steps = 200
  c.batch_size = 8  # global, over all processes and devices
  c.log_every = 1
  c.eval_every = 100
  c.checkpoint_every = 50
  c.keep_checkpoints = 3

  c.model = ConfigDict()
  c.model.size = 'tiny'  # the architecture (models.config.SIZES); the sections below override its fields
  if stage == 'sparsesync':
    c.model.transformer = _architecture_overrides(SyncTransformerConfig)
    c.model.update({name: config_dict.placeholder(int) for name in SPARSESYNC_FIELDS})
  else:
    # Both towers at once (None keeps the size's value); mlp_ratio sets mlp_dim = ratio × dim.
    c.model.towers = ConfigDict({'dim': config_dict.placeholder(int), 'depth': config_dict.placeholder(int),
                                 'heads': config_dict.placeholder(int), 'mlp_ratio': config_dict.placeholder(int)})
    for section, fields in ARCHITECTURE_SECTIONS.items():
      c.model[section] = _architecture_overrides(fields)
  c.model.dtype = 'float32'
  c.model.remat = False
  c.model.remat_policy = 'nothing_saveable'  # what a rematerialised block keeps (models.config.REMAT_POLICY_NAMES)
  c.model.attention_impl = ''  # '' lets JAX choose; 'cudnn' for the fused kernel on NVIDIA GPUs
  # Model directory to start from: Stage II takes a Stage I (or converted) model for its towers,
  # the synchronizability fine-tune a Stage II model, a SparseSync fine-tune a SparseSync model.
  c.model.init = ''
  if stage == 'sparsesync':  # converted trunk checkpoints (targets 's3d', 'resnet_audio'), BatchNorm statistics too
    c.model.init_s3d = ''
    c.model.init_resnet = ''

  c.data = ConfigDict()
  c.data.name = 'synthetic_sync'
  c.data.dir = 'data/generated'
  c.data.build_if_missing = True  # synthetic_sync only: generated on the first run
  c.data.num_clips = 400  # per split, when building synthetic_sync
  c.data.train_split = 'train'
  c.data.eval_split = 'valid'
  c.data.eval_max_clips = 64
  c.data.offset_type = 'grid'
  c.data.prob_oos = 0.5
  if stage == 'sparsesync':
    c.data.augmentation = 'default'  # one of SPARSESYNC_AUGMENTATIONS: configs/sparse_sync.yaml's, or the fine-tune's
  c.data.original_decoder = False
  # Stage II / III: > 0 runs the frozen towers once, over this many windows per training clip (no random
  # augmentation), and trains on the stored features (train/features.py); 0 runs them on every step.
  c.data.precomputed_windows = 0
  c.data.workers = 0  # grain worker processes; 0 decodes in the training process
  c.data.read_threads = 2
  c.data.max_failure_rate = 0.01

  c.optim = ConfigDict()
  c.optim.name = 'adam'
  c.optim.learning_rate = 1e-3
  c.optim.schedule = 'constant_with_warmup'
  c.optim.warmup_steps = 20
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-7
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  c.optim.grad_accum = 1

  c.mesh = ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
  # Resume a workdir whose checkpoint has another model or optimiser config (a deliberate change; the arrays must
  # still have the checkpoint's shapes).
  c.accept_config_change = False
  # Dense bf16 FLOP/s of one device, for MFU; 0 looks the device kind up (train/mfu.py), where CPUs have none.
  c.peak_flops_per_device = 0.0
  return c


TOWER_SECTIONS = ('video', 'audio')
# The SparseSyncConfig fields a training config may override (None keeps the size's value).
SPARSESYNC_FIELDS = ('num_classes', 'crop', 's3d_width_divisor', 'resnet_width', 'num_selectors')
SPARSESYNC_AUGMENTATIONS = ('default', 'finetune')


def model_config(c: ConfigDict) -> ModelConfig | SparseSyncConfig:
  """The architecture a training config describes: its size's, with the fields it overrides (a section's own
  fields over `model.towers`; `model.towers.mlp_ratio` times a tower's resulting dim, unless it sets mlp_dim)."""
  base = config_for_size(c.stage, c.model.size)
  compute = dict(dtype=c.model.dtype, remat=c.model.remat, remat_policy=c.model.remat_policy,
                 attention_impl=c.model.attention_impl or None)
  if c.stage == 'sparsesync':
    head = dataclasses.replace(base.transformer, **{k: v for k, v in c.model.transformer.items() if v is not None})
    fields = {k: c.model[k] for k in SPARSESYNC_FIELDS if c.model[k] is not None}
    return base.replace(**fields, transformer=head, **compute)
  towers = {k: v for k, v in c.model.towers.items() if v is not None and k != 'mlp_ratio'}
  sections = {}
  for name in ARCHITECTURE_SECTIONS:
    own = {k: v for k, v in c.model[name].items() if v is not None}
    section = dataclasses.replace(getattr(base, name), **{**(towers if name in TOWER_SECTIONS else {}), **own})
    if name in TOWER_SECTIONS and c.model.towers.mlp_ratio is not None and 'mlp_dim' not in own:
      section = dataclasses.replace(section, mlp_dim=c.model.towers.mlp_ratio * section.dim)
    sections[name] = section
  return base.replace(**sections, **compute)


def _check(condition: bool, field: str, expected: str, value) -> None:
  if not condition:
    raise ConfigError(f'config.{field}: expected {expected}, got {value!r}')


def validate(c: ConfigDict, num_devices: int) -> None:
  """Raises ConfigError for the first invalid field."""
  _check(c.stage in STAGES, 'stage', f'one of {STAGES}', c.stage)
  for field in ('total_steps', 'batch_size', 'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints'):
    _check(isinstance(c[field], int) and c[field] > 0, field, 'a positive integer', c[field])
  _check(isinstance(c.seed, int) and c.seed >= 0, 'seed', 'a non-negative integer', c.seed)
  for name, value in c.model.get('towers', {}).items():
    _check(value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0),
           f'model.towers.{name}', 'a positive integer (or None: the size\'s value)', value)
  try:
    model_config(c)
  except ModelConfigError as e:
    raise ConfigError(f'config.model.{e.field}: expected {e.expected}, got {e.value!r}') from None
  if c.stage == 'sparsesync':
    _check(bool(c.model.init) or (bool(c.model.init_s3d) and bool(c.model.init_resnet)) or c.model.size != 'full',
           'model.init', 'a SparseSync model directory, or both model.init_s3d and model.init_resnet, for a '
           'full-size SparseSync run (the original starts from pretrained trunks)', c.model.init)
    _check(c.data.augmentation in SPARSESYNC_AUGMENTATIONS, 'data.augmentation',
           f'one of {SPARSESYNC_AUGMENTATIONS}', c.data.augmentation)
    _check(c.data.precomputed_windows == 0, 'data.precomputed_windows',
           '0 (SparseSync trains its trunks end to end: there are no frozen features to precompute)',
           c.data.precomputed_windows)
  else:
    _check(c.stage == 'avclip' or bool(c.model.init) or c.model.size != 'full', 'model.init',
           'a model directory for a full-size Stage II / III run (its frozen towers)', c.model.init)
  _check(c.data.offset_type in OFFSET_TYPES, 'data.offset_type', f'one of {OFFSET_TYPES}', c.data.offset_type)
  _check(0.0 <= c.data.prob_oos <= 1.0, 'data.prob_oos', 'a probability', c.data.prob_oos)
  _check(0.0 <= c.data.max_failure_rate < 1.0, 'data.max_failure_rate', 'a rate in [0, 1)', c.data.max_failure_rate)
  _check(isinstance(c.data.precomputed_windows, int) and c.data.precomputed_windows >= 0,
         'data.precomputed_windows', 'a non-negative integer', c.data.precomputed_windows)
  _check(isinstance(c.data.workers, int) and c.data.workers >= 0, 'data.workers', 'a non-negative integer',
         c.data.workers)
  _check(c.optim.name in OPTIMIZERS, 'optim.name', f'one of {OPTIMIZERS}', c.optim.name)
  _check(c.optim.schedule in SCHEDULES, 'optim.schedule', f'one of {SCHEDULES}', c.optim.schedule)
  _check(c.optim.learning_rate > 0, 'optim.learning_rate', 'a positive number', c.optim.learning_rate)
  _check(c.optim.warmup_steps >= 0, 'optim.warmup_steps', 'a non-negative integer', c.optim.warmup_steps)
  _check(isinstance(c.optim.grad_accum, int) and c.optim.grad_accum >= 1, 'optim.grad_accum',
         'a positive integer', c.optim.grad_accum)
  _check(c.optim.clip_norm >= 0, 'optim.clip_norm', 'a non-negative number (0: no clipping)', c.optim.clip_norm)
  _check(c.peak_flops_per_device >= 0, 'peak_flops_per_device', 'a non-negative number (0: by device kind)',
         c.peak_flops_per_device)
  _check(set(c.mesh) <= set(MESH_AXES), 'mesh', f'axes among {MESH_AXES}', dict(c.mesh))
  sizes = {a: c.mesh.get(a, 1) for a in MESH_AXES}
  fixed = math.prod(s for s in sizes.values() if s != -1)
  _check(num_devices % fixed == 0 and (-1 in sizes.values() or fixed == num_devices), 'mesh',
         f'sizes whose product is the {num_devices} devices (one may be -1)', dict(c.mesh))
  data_parallel = math.prod(sizes[a] if sizes[a] != -1 else num_devices // fixed for a in BATCH_AXES)
  _check(c.batch_size % (data_parallel * c.optim.grad_accum) == 0, 'batch_size',
         f'a multiple of data × fsdp ({data_parallel}) × optim.grad_accum ({c.optim.grad_accum})', c.batch_size)


# The published runs (data spec §5): datasets, batch sizes and optimiser settings per stage.
RECIPE_DATASETS = {'audioset': 'audioset', 'vggsound': 'vggsound', 'lrs3': 'lrs3_h264'}


def full_size_recipe(c: ConfigDict, variant: str) -> None:
  """Turns a default config into the original's full-size recipe on a real dataset, in place.

  Batch sizes are the original's global ones for 16 GPUs (Stage I: 2 clips per GPU; Stage II: 16);
  Stage II's learning rate is the original's 2e-6 × world size, here for 16 devices.
  """
  if variant not in RECIPE_DATASETS:
    raise ConfigError(f'config variant: expected one of {sorted(RECIPE_DATASETS)}, got {variant!r}')
  c.model.size = 'full'
  c.model.dtype = 'bfloat16'
  c.model.remat = c.stage == 'avclip'
  c.data.name = RECIPE_DATASETS[variant]
  c.data.build_if_missing = False
  c.data.eval_max_clips = 100_000
  c.data.workers = 8
  c.data.precomputed_windows = 0  # the original runs its frozen towers on every step
  c.log_every = 20
  c.checkpoint_every = 2000
  if c.stage == 'avclip':
    c.batch_size = 32
    c.total_steps = 300_000
    c.eval_every = 5000
    c.optim.update(name='adamw', schedule='cosine', learning_rate=5e-5 if variant == 'lrs3' else 1e-4,
                   warmup_steps=1000 // 16, eps=1e-8, weight_decay=0.0)
  else:
    c.batch_size = 256
    c.total_steps = 500_000
    c.eval_every = 2000
    c.optim.update(name='adam', schedule='constant_with_warmup', learning_rate=2e-6 * 16, warmup_steps=1000,
                   eps=1e-7, weight_decay=0.0)
    if c.stage == 'synchability':
      c.data.offset_type = 'grid'
