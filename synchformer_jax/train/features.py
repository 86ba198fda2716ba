"""Stage II / III on precomputed tower features (`config.data.precomputed_windows` > 0).

The towers are frozen in these stages, so running them on every step repeats the same work. With
this option they run once: over `precomputed_windows` windows of every training clip (offset and
start drawn per window, test-time transforms, no random augmentation) and over the eval split's
windows (its fixed offsets), and the segment features and targets are written to ArrayRecord
under WORKDIR/features/. Training then reads those records and costs only the transformer.

Every process writes the windows of its own share of the clips to its own files; reading, each
split is the union of all processes' files, which the usual loaders shuffle and shard again. The
files are reused by a resumed run when `meta.json` says they were made from the same towers,
data and options; otherwise they are made anew.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from flax import nnx
from jax.experimental import multihost_utils
from ml_collections import ConfigDict
from tqdm import tqdm

from synchformer_jax import sharding
from synchformer_jax.constants import TARGET_KEYS
from synchformer_jax.data import loader
from synchformer_jax.models.config import ModelConfig
from synchformer_jax.train import input_pipeline, trainer

log = logging.getLogger(__name__)

FEATURES_DIR = 'features'
_META_FILE = 'meta.json'


def _split_files(directory: str, split: str) -> list[str]:
  prefix = f'{split}-'
  return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                if f.startswith(prefix) and f.endswith('.array_record'))


def _process_file(directory: str, split: str) -> str:
  return os.path.join(directory, f'{split}-{jax.process_index():05d}-of-{jax.process_count():05d}.array_record')


def _towers_fingerprint(state) -> str:
  """A digest of the frozen towers' parameters: features made from other towers are not reused."""
  towers = [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state[0])
            if any(t in jax.tree_util.keystr(path) for t in trainer.FROZEN_TOWERS)
            and jnp.issubdtype(leaf.dtype, jnp.floating)]
  sums = jax.jit(lambda leaves: [jnp.sum(x.astype(jnp.float32) ** 2) + jnp.sum(x.astype(jnp.float32))
                                 for x in leaves])([leaf for _, leaf in towers])
  text = ';'.join(f'{name}={float(s):.9e}' for (name, _), s in zip(towers, jax.device_get(sums)))
  return hashlib.sha256(text.encode()).hexdigest()


def _identity(config: ConfigDict, cfg: ModelConfig, state) -> dict[str, Any]:
  """What the stored features depend on."""
  return {'towers': _towers_fingerprint(state), 'video': dataclasses.asdict(cfg.video),
          'audio': dataclasses.asdict(cfg.audio), 'stage': config.stage, 'seed': config.seed,
          'data': {k: config.data[k] for k in ('name', 'dir', 'train_split', 'eval_split', 'eval_max_clips',
                                               'precomputed_windows', 'original_decoder')},
          'process_count': jax.process_count()}


def _extract_fn(steps: trainer.Trainer, mesh):
  batch_sharding = sharding.batch_sharding(mesh)

  def extract(state, video, audio):
    with sharding.activation_sharding(mesh):
      model, _ = nnx.merge(steps.graphdef, state)
      model.eval()
      vfeat, afeat = model.extract_features(video, audio)
      return vfeat.astype(jnp.float32), afeat.astype(jnp.float32)

  return jax.jit(extract, in_shardings=(steps.state_shardings, batch_sharding, batch_sharding),
                 out_shardings=(batch_sharding, batch_sharding))


def _write_split(config: ConfigDict, steps: trainer.Trainer, state, mesh, windows, path: str) -> int:
  """Runs the towers over one split's windows (padded batches, as in evaluation); writes this process's records."""
  extract = _extract_fn(steps, mesh)
  local = config.batch_size // jax.process_count()
  written = 0
  tmp = path + '.tmp'
  writer = ArrayRecordWriter(tmp, 'group_size:1')
  try:
    for batch in tqdm(windows, desc=f'tower features ({os.path.basename(path)})', unit='batch',
                      disable=jax.process_index() != 0):
      mask = np.asarray(batch.pop(loader.MASK_KEY))
      inputs = sharding.to_global_batch({k: batch[k] for k in ('video', 'audio')}, mesh)
      features = extract(state, inputs['video'], inputs['audio'])
      # Each process keeps the rows of its own local batch (global rows are concatenated in process order).
      vfeat, afeat = (np.asarray(multihost_utils.process_allgather(f, tiled=True))[
          jax.process_index() * local:(jax.process_index() + 1) * local] for f in features)
      targets = {k: batch[k] for k in TARGET_KEYS[config.stage]}
      for i in np.flatnonzero(mask):
        record = {'vfeat': vfeat[i], 'afeat': afeat[i], **{k: v[i] for k, v in targets.items()}}
        writer.write(input_pipeline.encode_feature_record(record))
        written += 1
  finally:
    writer.close()
  os.replace(tmp, path)
  return written


def prepare(config: ConfigDict, cfg: ModelConfig, steps: trainer.Trainer, state, sources: dict[str, Any], mesh,
            workdir: str) -> dict[str, grain.sources.ArrayRecordDataSource]:
  """Feature sources for the train and eval splits, computed now unless a matching set is stored."""
  directory = os.path.join(workdir, FEATURES_DIR)
  meta_path = os.path.join(directory, _META_FILE)
  identity = _identity(config, cfg, state)
  stored = None
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      stored = json.load(f)
  if stored is None or stored['identity'] != identity:
    if stored is not None:
      log.warning('%s: stored features were made from other towers, data or options; recomputing', directory)
    if jax.process_index() == 0:
      os.makedirs(directory, exist_ok=True)
      if os.path.exists(meta_path):
        os.remove(meta_path)
      for name in os.listdir(directory):  # stale files of another process count
        if name.endswith('.array_record') or name.endswith('.tmp'):
          os.remove(os.path.join(directory, name))
    multihost_utils.sync_global_devices('features: directory ready')
    counts = {}
    for split, windows in input_pipeline.feature_windows(config, cfg, sources).items():
      counts[split] = _write_split(config, steps, state, mesh, windows, _process_file(directory, split))
      log.info('features: %d %s windows of this process written', counts[split], split)
    multihost_utils.sync_global_devices('features: written')
    if jax.process_index() == 0:
      tmp = meta_path + '.tmp'
      with open(tmp, 'w') as f:
        json.dump({'identity': identity, 'records_of_process_0': counts}, f, indent=1)
      os.replace(tmp, meta_path)
    multihost_utils.sync_global_devices('features: meta written')
  return {split: grain.sources.ArrayRecordDataSource(_split_files(directory, split)) for split in ('train', 'eval')}
