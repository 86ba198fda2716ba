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
from etils import epath
from ml_collections import ConfigDict

from synchformer_jax.data import builders, loader, transforms
from synchformer_jax.models.config import ModelConfig

log = logging.getLogger(__name__)

STAGES = {'avclip': transforms.STAGE_I, 'sync': transforms.STAGE_II, 'synchability': transforms.STAGE_III}
TARGET_KEYS = {'avclip': (), 'sync': ('offset_target',), 'synchability': ('sync_target',)}


def stage_transforms(config: ConfigDict, cfg: ModelConfig) -> transforms.Stage:
  """The stage's data pipeline, producing frames of the model's input size."""
  return dataclasses.replace(STAGES[config.stage], output_size=cfg.video.crop)


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


def local_batch_size(config: ConfigDict) -> int:
  """Examples per train-step call in this process (a micro-batch when accumulating gradients)."""
  return config.batch_size // jax.process_count() // config.optim.grad_accum


def train_batches(config: ConfigDict, cfg: ModelConfig, source) -> loader.FailureAccountingIterator:
  step = loader.TrainExample(stage_transforms(config, cfg), offset_type=config.data.offset_type,
                             prob_oos=config.data.prob_oos, original_decoder=config.data.original_decoder)
  example = lambda record, rng: _model_inputs(step(record, rng), config.stage)
  options = loader.PipelineOptions(worker_count=config.data.workers, read_threads=config.data.read_threads,
                                   max_failure_rate=config.data.max_failure_rate)
  dataset = loader.train_dataset([loader.Component(source, example)], batch_size=local_batch_size(config),
                                 seed=config.seed, options=options)
  return iter(dataset)


def eval_batches(config: ConfigDict, cfg: ModelConfig, source):
  """One pass over the eval split (at most `data.eval_max_clips` clips): fixed offsets where the split has them."""
  step = loader.EvalExample(stage_transforms(config, cfg), original_decoder=config.data.original_decoder)
  example = lambda record, rng: _model_inputs(step(record, rng), config.stage)
  limited = _Prefix(source, min(len(source), config.data.eval_max_clips))
  return loader.eval_dataset(limited, example, batch_size=config.batch_size // jax.process_count(), seed=config.seed)


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
