"""Grain pipelines: determinism, sharding, resumption, failure replacement, mixtures, global arrays."""
import json

import numpy as np
import pytest

from synchformer_jax.data import builders, loader, synthetic
from synchformer_jax.train import input_pipeline

ONE_PROCESS = loader.ProcessShard(0, 1)


class ListSource:
  """An in-memory random-access source of records {'id', 'value'}."""

  def __init__(self, values):
    self._values = list(values)

  def __len__(self):
    return len(self._values)

  def __getitem__(self, index):
    return {'id': f'clip{self._values[index]}', 'value': self._values[index]}


# Stand-ins for the decode + transform step (module level, so that worker processes can load them).
def value_and_noise(record, rng):
  return {'value': np.int64(record['value']), 'noise': np.float64(rng.random())}


def fails_on_multiples_of_five(record, rng):
  if record['value'] % 5 == 0:
    raise ValueError(f'cannot decode {record["id"]}')
  return value_and_noise(record, rng)


def always_fails(record, rng):
  raise ValueError(f'cannot decode {record["id"]}')


def clip_index_and_noise(record, rng):
  return {'index': np.int64(record['seed'][2]), 'noise': np.float64(rng.random())}


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _take_and_close(iterator, n):
  try:
    return _take(iterator, n)
  finally:
    iterator.close()


def _concat(batches, key):
  return np.concatenate([b[key] for b in batches]).tolist()


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


@pytest.fixture(scope='module')
def train_source(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  builders.build(
      'synthetic_sync',
      data_dir=data_dir,
      spec=synthetic.SyntheticSpec(duration_sec=9.0, height=64, width=64),
      split_sizes={'train': 12},
      requirements=builders.ClipRequirements(min_side=64),
      num_workers=0,
  )
  return loader.open_split('synthetic_sync', 'train', data_dir)


def _train(components, worker_count=0, **kwargs):
  return loader.train_dataset(
      components, batch_size=4, seed=3, shard=ONE_PROCESS, options=loader.PipelineOptions(worker_count=worker_count, **kwargs)
  )


def test_open_split_reads_built_records(train_source):
  assert len(train_source) == 12
  record = train_source[0]
  assert record['video'][4:8] == b'ftyp' and record['num_frames'] == 225


def _interrupted_and_resumed(dataset, interrupt_after, total):
  """Batches of an iterator stopped after `interrupt_after`, its state saved, continued by a new one."""
  interrupted = iter(dataset)
  first = _take(interrupted, interrupt_after)
  state = json.loads(json.dumps(interrupted.get_state()))  # as a checkpoint stores it
  interrupted.close()
  resumed = iter(dataset)
  resumed.set_state(state)
  assert resumed.reads == 4 * interrupt_after, 'the failure accounting resumes too'
  return first + _take_and_close(resumed, total - interrupt_after)


def test_a_resumed_iterator_yields_what_an_uninterrupted_one_would(train_source):
  dataset = _train([loader.Component(train_source, clip_index_and_noise)])
  uninterrupted = _take_and_close(iter(dataset), 6)
  _assert_same_batches(_interrupted_and_resumed(dataset, 2, 6), uninterrupted)
  # 6 batches of 4 are two epochs of the 12 clips, each a different permutation.
  order = _concat(uninterrupted, 'index')
  assert sorted(order[:12]) == sorted(order[12:]) == list(range(12))
  assert order[:12] != order[12:]


def test_worker_processes_neither_change_batches_nor_break_resumption(train_source):
  input_pipeline.allow_grain_workers()  # this test program has no absl.app
  components = [loader.Component(train_source, clip_index_and_noise)]
  in_process = _take_and_close(iter(_train(components)), 5)
  with_workers = _interrupted_and_resumed(_train(components, worker_count=2), 2, 5)
  _assert_same_batches(with_workers, in_process)


def test_process_shards_split_every_epoch_between_them():
  components = [loader.Component(ListSource(range(20)), value_and_noise)]
  shards = [
      _concat(
          list(loader.train_dataset(components, batch_size=2, seed=0, num_epochs=1, shard=loader.ProcessShard(i, 2))), 'value'
      )
      for i in range(2)
  ]
  assert len(shards[0]) == len(shards[1]) == 10
  assert sorted(shards[0] + shards[1]) == list(range(20))


def test_failed_clips_are_replaced_deterministically_and_counted():
  components = [loader.Component(ListSource(range(100)), fails_on_multiples_of_five)]

  def run():
    iterator = iter(_train(components, max_failure_rate=0.5, failure_rate_min_reads=1))
    return _take_and_close(iterator, 10), iterator.reads, iterator.failed_reads

  batches, reads, failed = run()
  again, *_ = run()
  _assert_same_batches(batches, again)
  assert not any(v % 5 == 0 for v in _concat(batches, 'value'))
  assert reads == 40 + failed and 4 <= failed <= 20  # about 1 read in 5 fails


def test_too_many_failures_raise_with_their_count_and_rate():
  components = [loader.Component(ListSource(range(100)), fails_on_multiples_of_five)]
  iterator = iter(_train(components, max_failure_rate=0.05, failure_rate_min_reads=20))
  with pytest.raises(loader.TooManyFailedClipsError, match=r'\d+ of \d+ clip reads failed \(\d+\.\d+%\), over the maximum'):
    _take_and_close(iterator, 10)


def test_an_example_whose_replacements_all_fail_raises():
  iterator = iter(_train([loader.Component(ListSource(range(10)), always_fails)], max_attempts_per_example=3))
  with pytest.raises(loader.TooManyFailedClipsError, match='3 clips in a row failed'):
    _take_and_close(iterator, 1)


def test_mixture_draws_by_weight_and_each_dataset_in_its_own_order():
  components = [
      loader.Component(ListSource(range(100)), value_and_noise, weight=3.0),
      loader.Component(ListSource(range(1000, 1100)), value_and_noise, weight=1.0),
  ]
  values = _concat(_take_and_close(iter(_train(components)), 25), 'value')
  first = [v for v in values if v < 1000]
  assert abs(len(first) / len(values) - 0.75) < 0.02
  assert len(set(first)) == len(first), 'no repeats within an epoch'


def test_eval_pads_every_process_to_whole_batches_and_masks_the_padding():
  source = ListSource(range(10))
  seen = []
  for index in range(2):
    batches = list(loader.eval_dataset(source, value_and_noise, batch_size=4, shard=loader.ProcessShard(index, 2)))
    assert [b['value'].shape for b in batches] == [(4,), (4,)]
    seen += [v for b in batches for v, real in zip(b['value'].tolist(), b[loader.MASK_KEY]) if real]
  assert sorted(seen) == list(range(10))
  first = list(loader.eval_dataset(source, value_and_noise, batch_size=4, seed=1, shard=ONE_PROCESS))
  _assert_same_batches(first, list(loader.eval_dataset(source, value_and_noise, batch_size=4, seed=1, shard=ONE_PROCESS)))
  other = list(loader.eval_dataset(source, value_and_noise, batch_size=4, seed=2, shard=ONE_PROCESS))
  assert _concat(first, 'noise') != _concat(other, 'noise'), 'each evaluation pass has its own randomness'


def test_eval_names_a_failing_clip():
  with pytest.raises(RuntimeError, match='evaluation clip clip0 failed'):
    list(loader.eval_dataset(ListSource(range(3)), always_fails, batch_size=2, shard=ONE_PROCESS))


def test_model_inputs_from_the_default_synthetic_data(tmp_path):
  # The real per-record steps (windowed decode + Stage II transforms) over built records.
  builders.build(
      'synthetic_sync',
      data_dir=tmp_path,
      spec=synthetic.SyntheticSpec(duration_sec=9.0, height=224, width=240),
      split_sizes={'train': 2, 'test': 2},
      num_workers=0,
  )
  train = loader.open_split('synthetic_sync', 'train', tmp_path)
  batch = _take_and_close(
      iter(loader.train_dataset([loader.Component(train, loader.TrainExample())], batch_size=2, seed=0, shard=ONE_PROCESS)), 1
  )[0]
  assert batch['video'].shape == (2, 14, 16, 3, 224, 224) and batch['video'].dtype == np.float16
  assert batch['audio'].shape == (2, 14, 1, 128, 66) and batch['audio'].dtype == np.float32
  assert ((0 <= batch['offset_target']) & (batch['offset_target'] <= 20)).all()

  test = loader.open_split('synthetic_sync', 'test', tmp_path)
  (batch,) = list(loader.eval_dataset(test, loader.EvalExample(), batch_size=2, shard=ONE_PROCESS))
  records = [test[i] for i in range(2)]
  np.testing.assert_array_equal(batch['offset_sec'], [np.float32(r['offset_sec']) for r in records])
  assert batch[loader.MASK_KEY].all() and batch['video'].shape[0] == 2
