"""From the data package's datasets and transforms to the batches a stage trains and evaluates on.

The data package knows nothing of models; this module picks the stage's transforms, the model's
input size and the targets a stage needs.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import jax
import numpy as np
from absl import flags
from etils import epath
from flax import serialization
from ml_collections import ConfigDict

from synchformer_jax.constants import TARGET_KEYS
from synchformer_jax.data import builders, loader, sparsesync, transforms
from synchformer_jax.models.config import ModelConfig, SparseSyncConfig

log = logging.getLogger(__name__)

STAGE_TRANSFORMS = {stage.name: stage for stage in (transforms.STAGE_I, transforms.STAGE_II, transforms.STAGE_III)}
SPARSESYNC_AUGMENTATION = {'default': sparsesync.SPARSESYNC, 'finetune': sparsesync.SPARSESYNC_FINETUNE}


def stage_transforms(config: ConfigDict, cfg: ModelConfig) -> transforms.Stage:
  """The stage's data pipeline, producing frames of the model's input size."""
  return dataclasses.replace(STAGE_TRANSFORMS[config.stage], output_size=cfg.video.crop)


def sparsesync_pipeline(config: ConfigDict, cfg: SparseSyncConfig) -> sparsesync.SparseSyncPipeline:
  """SparseSync's data pipeline for this model: its offset grid and frame size, the config's augmentation."""
  return dataclasses.replace(SPARSESYNC_AUGMENTATION[config.data.augmentation], max_off_sec=cfg.max_offset_sec,
                             num_offset_classes=cfg.num_classes, output_size=cfg.crop)


def _train_example(config: ConfigDict, cfg) -> loader.ExampleFn:
  if config.stage == 'sparsesync':
    return sparsesync.SparseSyncTrainExample(sparsesync_pipeline(config, cfg),
                                             original_decoder=config.data.original_decoder)
  return loader.TrainExample(stage_transforms(config, cfg), offset_type=config.data.offset_type,
                             prob_oos=config.data.prob_oos, original_decoder=config.data.original_decoder)


def _eval_example(config: ConfigDict, cfg, fixed_offsets: bool) -> loader.ExampleFn:
  if config.stage == 'sparsesync':
    return sparsesync.SparseSyncEvalExample(sparsesync_pipeline(config, cfg), fixed_offsets=fixed_offsets,
                                            original_decoder=config.data.original_decoder)
  return loader.EvalExample(stage_transforms(config, cfg), fixed_offsets=fixed_offsets,
                            original_decoder=config.data.original_decoder)


def _model_inputs(example: Mapping[str, Any], stage_name: str) -> dict[str, np.ndarray]:
  return {k: np.asarray(example[k]) for k in ('video', 'audio', *TARGET_KEYS[stage_name])}


def open_sources(config: ConfigDict) -> dict[str, Any]:
  """The train and eval splits; the embedded synthetic dataset is generated on first use."""
  data_dir = epath.Path(config.data.dir)
  if config.data.name == 'synthetic_sync' and config.data.build_if_missing:
    builder = builders.BUILDERS['synthetic_sync'](data_dir=data_dir, num_clips=config.data.num_clips)
    if not builder.is_prepared():
      log.info('building the synthetic dataset (%d clips per split) under %s', config.data.num_clips, data_dir)
      builders.build('synthetic_sync', data_dir=data_dir, num_clips=config.data.num_clips)
  return {'train': loader.open_split(config.data.name, config.data.train_split, data_dir),
          'eval': loader.open_split(config.data.name, config.data.eval_split, data_dir)}


def process_shard() -> loader.ProcessShard:
  """This process's share of every global batch."""
  return loader.ProcessShard(jax.process_index(), jax.process_count())


def allow_grain_workers() -> None:
  """Lets grain start worker processes in a program that has not parsed absl flags (one without absl.app).

  grain 0.2.18 reads an absl flag when starting workers next to JAX and raises UnparsedFlagAccessError unless
  flags were parsed (google/grain#1355, fixed upstream later).
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _pipeline_options(config: ConfigDict) -> loader.PipelineOptions:
  if config.data.workers > 0:
    allow_grain_workers()
  return loader.PipelineOptions(worker_count=config.data.workers, read_threads=config.data.read_threads,
                                max_failure_rate=config.data.max_failure_rate)


def local_batch_size(config: ConfigDict) -> int:
  """Examples of one optimiser step in this process (the train step splits them into micro-batches)."""
  return config.batch_size // jax.process_count()


def encode_feature_record(record: Mapping[str, np.ndarray]) -> bytes:
  """A precomputed-features record ({vfeat, afeat, targets}) as bytes (msgpack: no code on reading)."""
  return serialization.msgpack_serialize({k: np.asarray(v) for k, v in record.items()})


def decode_feature_record(data: bytes, rng=None) -> dict[str, np.ndarray]:
  """The inverse of `encode_feature_record`; `rng` is unused (a per-record step's signature)."""
  del rng
  return dict(serialization.msgpack_restore(data))


def uses_features(config: ConfigDict) -> bool:
  """Whether Stage II / III trains on precomputed tower features (see `train.features`)."""
  return config.stage in ('sync', 'synchability') and config.data.precomputed_windows > 0


def train_batches(config: ConfigDict, cfg: ModelConfig, source) -> loader.FailureAccountingIterator:
  """Training batches: clips decoded and augmented on the fly, or the records of precomputed features."""
  if uses_features(config):
    example = decode_feature_record
  else:
    step = _train_example(config, cfg)
    example = lambda record, rng: _model_inputs(step(record, rng), config.stage)
  dataset = loader.train_dataset([loader.Component(source, example)], batch_size=local_batch_size(config),
                                 seed=config.seed, shard=process_shard(), options=_pipeline_options(config))
  return iter(dataset)


def eval_batches(config: ConfigDict, cfg: ModelConfig, source):
  """One pass over the eval split (at most `data.eval_max_clips` clips): fixed offsets where the split has them."""
  if uses_features(config):  # the records are the eval windows already
    return _eval_pass(config, source, decode_feature_record)
  return _clip_windows(config, cfg, _eval_clips(config, source), fixed_offsets=True)


def _eval_clips(config: ConfigDict, source):
  """The clips evaluated: the first `data.eval_max_clips` of the split."""
  return _Prefix(source, min(len(source), config.data.eval_max_clips))


def _eval_pass(config: ConfigDict, source, example):
  return loader.eval_dataset(source, example, batch_size=config.batch_size // jax.process_count(), seed=config.seed,
                             shard=process_shard())


def _clip_windows(config: ConfigDict, cfg: ModelConfig, source, fixed_offsets: bool):
  """Test-time windows of the clips in `source` (no augmentation), as padded eval batches."""
  step = _eval_example(config, cfg, fixed_offsets)
  return _eval_pass(config, source, lambda record, rng: _model_inputs(step(record, rng), config.stage))


def feature_windows(config: ConfigDict, cfg: ModelConfig, sources: Mapping[str, Any]) -> dict[str, Any]:
  """The windows whose tower features are precomputed: `data.precomputed_windows` per training clip, each at
  an offset and start drawn for it, and the eval windows of `eval_batches`."""
  repeated = _Repeated(sources['train'], config.data.precomputed_windows)
  return {'train': _clip_windows(config, cfg, repeated, fixed_offsets=False),
          'eval': _clip_windows(config, cfg, _eval_clips(config, sources['eval']), fixed_offsets=True)}


@dataclasses.dataclass(frozen=True)
class _Prefix:
  """The first `n` records of a source."""
  source: Any
  n: int

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int):
    if not 0 <= index < self.n:
      raise IndexError(index)
    return self.source[index]


@dataclasses.dataclass(frozen=True)
class _Repeated:
  """A source listing every record `times` times; each copy gets a record RNG of its own, so another window."""
  source: Any
  times: int

  def __len__(self) -> int:
    return len(self.source) * self.times

  def __getitem__(self, index: int):
    if not 0 <= index < len(self):
      raise IndexError(index)
    return self.source[index % len(self.source)]
