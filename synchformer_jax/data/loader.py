"""Grain input pipelines over the ArrayRecord clip datasets.

Training (`train_dataset`), per dataset of a weighted mixture:

  ArrayRecord source -> seeded global shuffle, reshuffled every epoch
  -> random_map: the per-record step (decode a window + transforms) with a per-record RNG,
     replacing a clip that fails by another record drawn from that RNG
then mix (weights) -> this process's rows of each global batch -> multiprocess prefetch (0 workers:
in this process) -> failure accounting, which raises once too large a share of reads failed.
Global batches are the same for any number of processes.

Evaluation (`eval_dataset`): ordered, padded with masked repeats to whole global batches, this
process's rows of each.

Everything is deterministic given the seed, whatever the worker count, and the iterators are
grain `DatasetIterator`s: `get_state()` / `set_state()` resume a pipeline exactly (and grain's
Orbax support checkpoints them). Batches are numpy arrays: placing them on devices is
`synchformer_jax.sharding.to_global_batch`. This module imports no JAX.

The per-record step is a parameter (`ExampleFn`): `(record, rng) -> {name: array}`, where
`record` is a dataset record (its `video` field holds the encoded mp4 bytes) and `rng` an
`np.random.Generator` private to that record. `TrainExample` and `EvalExample` are the model's
(windowed decode + `transforms`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from synchformer_jax.data import builders, transforms

ExampleFn = Callable[[Mapping[str, Any], np.random.Generator], dict[str, np.ndarray]]
MASK_KEY = 'mask'  # eval batches: False marks padding examples
# Per example: how many clips failed before this one was made; summed and removed from batches
# by the failure accounting stage.
_FAILED_READS_KEY = '_failed_reads'


def open_split(name: str, split: str, data_dir: epath.PathLike) -> grain.sources.RandomAccessDataSource:
  """Random-access source over one split of a dataset built by `builders` (no TensorFlow needed)."""
  if name not in builders.BUILDERS:
    raise ValueError(f'unknown dataset {name!r}; known: {sorted(builders.BUILDERS)}')
  return tfds.data_source(name, split=split, data_dir=epath.Path(data_dir), download=False)


@dataclasses.dataclass(frozen=True)
class Component:
  """One dataset of a training mixture."""

  source: grain.sources.RandomAccessDataSource
  example_fn: ExampleFn
  weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class ProcessShard:
  """Which share of the data this process reads: process `index` of `count` (a multi-host run's
  `jax.process_index()` and `jax.process_count()`)."""

  index: int = 0
  count: int = 1

  def __post_init__(self):
    if not 0 <= self.index < self.count:
      raise ValueError(f'ProcessShard: expected 0 <= index < count, got index {self.index} of {self.count}')


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  """How a pipeline runs and when training gives up; none changes the batches it yields.

  Attributes:
    worker_count: processes that make batches; 0 makes them in this process.
    worker_buffer_size: batches each worker keeps ready.
    read_threads: threads per process running the per-record step.
    max_failure_rate: training fails once more than this share of clip reads failed ...
    failure_rate_min_reads: ... counted over at least this many reads.
    max_attempts_per_example: training fails when this many clips in a row fail for one example.
  """

  worker_count: int = 0
  worker_buffer_size: int = 2
  read_threads: int = 2
  max_failure_rate: float = 0.01
  failure_rate_min_reads: int = 1000
  max_attempts_per_example: int = 16


def _record_name(record: Mapping[str, Any]) -> str:
  clip_id = record['id']
  return clip_id.decode() if isinstance(clip_id, bytes) else str(clip_id)


@dataclasses.dataclass(frozen=True)
class TrainExample:
  """Training's per-record step: decode the window a random crop needs, then the stage's transforms."""

  stage: transforms.Stage = transforms.STAGE_II
  offset_type: str = 'grid'
  prob_oos: float | None = None
  original_decoder: bool = False

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return transforms.build_train_example(
        record['video'],
        rng,
        self.stage,
        offset_type=self.offset_type,
        prob_oos=self.prob_oos,
        original_decoder=self.original_decoder,
        name=_record_name(record),
    )


@dataclasses.dataclass(frozen=True)
class EvalExample:
  """Evaluation's per-record step: the test transforms at the record's fixed offset, if it has one
  and `fixed_offsets` is on (Stage II only), else at an offset drawn from the record's RNG (the
  random-offset passes, e.g. VGGSound-Sparse's 25)."""

  stage: transforms.Stage = transforms.STAGE_II
  fixed_offsets: bool = True
  original_decoder: bool = False

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    offset_sec, vstart_sec = float(record['offset_sec']), float(record['vstart_sec'])
    if self.fixed_offsets and self.stage.temporal_crop == 'offset' and not math.isnan(offset_sec):
      window = {'offset_sec': offset_sec, 'vstart_sec': vstart_sec}
    else:
      window = {'rng': rng}
    return transforms.build_test_example(
        record['video'], self.stage, original_decoder=self.original_decoder, name=_record_name(record), **window
    )


class TooManyFailedClipsError(RuntimeError):
  """Too many clips failed to decode or transform during training."""


def _seed(*parts: int) -> int:
  """A 32-bit seed derived from several integers (grain wants seeds below 2**32)."""
  return int(np.random.SeedSequence(parts).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class _ReplaceFailingClips:
  """Runs a per-record step; a clip that fails is replaced by another, deterministically.

  The replacement index comes from a generator seeded by the record's own RNG, so a pipeline
  with the same seed replaces the same clips by the same others.
  """

  source: grain.sources.RandomAccessDataSource
  example_fn: ExampleFn
  max_attempts: int

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    replacements = np.random.default_rng(rng.integers(2**63))
    failed = 0
    while True:
      try:
        example = self.example_fn(record, rng)
        break
      except Exception as e:  # pylint: disable=broad-except  # any bad clip is replaced, and counted
        failed += 1
        if failed == self.max_attempts:
          raise TooManyFailedClipsError(f'{failed} clips in a row failed; the last: {record.get("id")}') from e
        index = int(replacements.integers(len(self.source)))
        logging.warning('clip %s failed (%s: %s); replaced by record %d', record.get('id'), type(e).__name__, e, index)
        record = self.source[index]
    example[_FAILED_READS_KEY] = np.int32(failed)
    return example


def _component_dataset(
    component: Component, position: int, *, seed: int, num_epochs: int | None, options: PipelineOptions
) -> grain.MapDataset:
  ds = grain.MapDataset.source(component.source)
  ds = ds.shuffle(seed=_seed(seed, position, 0)).repeat(num_epochs)
  step = _ReplaceFailingClips(component.source, component.example_fn, options.max_attempts_per_example)
  return ds.random_map(step, seed=_seed(seed, position, 1))


def _process_rows(ds: grain.MapDataset, batch_size: int, shard: ProcessShard) -> grain.MapDataset:
  """This process's batches: rows [p·b, (p+1)·b) of every global batch of `count`·b examples.

  Everything before is one global stream, the same for every process (same seeds; the maps are lazy,
  so a process only computes its own rows). The global batches are thus the same, in the same order,
  whatever the number of processes, and every process gets as many batches as the others.
  """
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds[: len(ds) // shard.count * shard.count][shard.index :: shard.count]


def train_dataset(
    components: Sequence[Component],
    *,
    batch_size: int,
    seed: int,
    shard: ProcessShard,
    num_epochs: int | None = None,
    options: PipelineOptions = PipelineOptions(),
) -> grain.IterDataset:
  """The training pipeline over a weighted mixture of datasets (one component: no mixing).

  Args:
    components: datasets, their per-record steps and mixture weights.
    batch_size: examples per batch in this process.
    seed: determines shuffling, per-record randomness and replacements.
    shard: this process's share of every global batch.
    num_epochs: passes over each dataset; None repeats forever.
    options: how the pipeline runs.
  """
  if not components:
    raise ValueError('train_dataset needs at least one component')
  parts = [
      _component_dataset(c, i, seed=seed, num_epochs=num_epochs, options=options)
      for i, c in enumerate(components)
  ]
  ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, [c.weight for c in components])
  iter_ds = _prefetched(_process_rows(ds, batch_size, shard), options)
  return _FailureAccountingIterDataset(iter_ds, options.max_failure_rate, options.failure_rate_min_reads)


@dataclasses.dataclass(frozen=True)
class _PadAndMask:
  """Runs a per-record step on the record at an index; an index past the data repeats a record,
  masked out."""

  source: grain.sources.RandomAccessDataSource
  example_fn: ExampleFn

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    record = self.source[index % len(self.source)]
    try:
      example = self.example_fn(record, rng)
    except Exception as e:
      raise RuntimeError(f'evaluation clip {record.get("id")} failed') from e
    example[MASK_KEY] = np.bool_(index < len(self.source))
    return example


def eval_dataset(
    source: grain.sources.RandomAccessDataSource,
    example_fn: ExampleFn,
    *,
    batch_size: int,
    shard: ProcessShard,
    seed: int = 0,
    options: PipelineOptions = PipelineOptions(),
) -> grain.IterDataset:
  """One ordered pass for evaluation; batches carry MASK_KEY (False: padding).

  Every process yields ceil(len(source) / (batch_size * processes)) batches. Failing clips raise
  (evaluation sets are built clean; a failure there is a bug to see, not to hide).

  Args:
    seed: per-record randomness (random-offset passes: one seed per pass).
  """
  global_batch = batch_size * shard.count
  ds = grain.MapDataset.range(math.ceil(len(source) / global_batch) * global_batch)
  ds = ds.random_map(_PadAndMask(source, example_fn), seed=_seed(seed))
  return _prefetched(_process_rows(ds, batch_size, shard), options)


def _prefetched(ds: grain.MapDataset, options: PipelineOptions) -> grain.IterDataset:
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=options.read_threads))
  if options.worker_count > 0:
    iter_ds = iter_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=options.worker_count, per_worker_buffer_size=options.worker_buffer_size)
    )
  return iter_ds


class _FailureAccountingIterDataset(grain.IterDataset):
  """Strips the per-example failure counts from batches and enforces the failure budget."""

  def __init__(self, parent: grain.IterDataset, max_failure_rate: float, min_reads: int):
    super().__init__(parent)
    self._max_failure_rate = max_failure_rate
    self._min_reads = min_reads

  def __iter__(self) -> FailureAccountingIterator:
    return FailureAccountingIterator(self._parent.__iter__(), self._max_failure_rate, self._min_reads)


class FailureAccountingIterator(grain.DatasetIterator):
  """A training iterator; `failed_reads` / `reads` count clip reads so far (state included)."""

  def __init__(self, parent: grain.DatasetIterator, max_failure_rate: float, min_reads: int):
    super().__init__(parent)
    self._max_failure_rate = max_failure_rate
    self._min_reads = min_reads
    self.reads = 0
    self.failed_reads = 0

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._parent))
    failed = batch.pop(_FAILED_READS_KEY)
    self.failed_reads += int(failed.sum())
    self.reads += int(failed.size + failed.sum())
    if self.reads >= self._min_reads and self.failed_reads > self._max_failure_rate * self.reads:
      raise TooManyFailedClipsError(
          f'{self.failed_reads} of {self.reads} clip reads failed ({self.failed_reads / self.reads:.2%}), '
          f'over the maximum failure rate {self._max_failure_rate:.2%}'
      )
    return batch

  def get_state(self) -> dict[str, Any]:
    return {'parent': self._parent.get_state(), 'reads': self.reads, 'failed_reads': self.failed_reads}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state['parent'])
    self.reads = state['reads']
    self.failed_reads = state['failed_reads']

