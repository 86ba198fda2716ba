"""Stage II on precomputed tower features: the stored records are the towers' outputs on the windows,
training reads them, and a resumed run reuses them."""
import os

import jax
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from synchformer_jax import pretrained, sharding
from synchformer_jax.train import features, input_pipeline, trainer
from synchformer_jax.train.config import base_config, model_config
from synchformer_jax.train.loop import train
from tests.train.conftest import TRAIN_CLIPS


def _records(path):
  reader = ArrayRecordReader(str(path))
  try:
    return [input_pipeline.decode_feature_record(r) for r in reader.read_all()]
  finally:
    reader.close()


@pytest.mark.slow
def test_precomputed_features_are_the_towers_outputs_and_are_reused(tmp_path, synthetic_data):
  config = base_config('sync')
  config.update(total_steps=2, batch_size=4, eval_every=2, checkpoint_every=1)
  config.data.update(dir=str(synthetic_data), build_if_missing=False, eval_max_clips=2, precomputed_windows=2)
  workdir = tmp_path / 'run'
  result = train(config, str(workdir))
  assert result['step'] == 2 and np.isfinite(result['loss'])

  directory = workdir / features.FEATURES_DIR
  train_file, = sorted(directory.glob('train-*.array_record'))
  eval_file, = sorted(directory.glob('eval-*.array_record'))
  stored = _records(train_file)
  assert len(stored) == TRAIN_CLIPS * 2 and len(_records(eval_file)) == 2  # eval: 2 clips in a padded batch of 4
  assert stored[0]['vfeat'].shape == (14, 8, 64) and stored[0]['afeat'].shape == (14, 6, 64)
  assert all(0 <= r['offset_target'] < 21 for r in stored)

  # The stored features are the frozen towers applied to the same windows (towers are unchanged by training).
  cfg = model_config(config)
  model = pretrained.load(str(workdir / 'model'))
  model.eval()
  windows = input_pipeline.feature_windows(config, cfg, input_pipeline.open_sources(config))['train']
  batch = next(iter(windows))
  vfeat, afeat = jax.jit(model.extract_features)(batch['video'], batch['audio'])
  for i in range(len(batch['video'])):
    np.testing.assert_allclose(stored[i]['vfeat'], vfeat[i], atol=1e-5)
    np.testing.assert_allclose(stored[i]['afeat'], afeat[i], atol=1e-5)
    assert stored[i]['offset_target'] == batch['offset_target'][i]
  # Two windows of one clip differ (an offset and start drawn per window).
  assert not np.allclose(stored[0]['afeat'], stored[TRAIN_CLIPS]['afeat'])

  # A resumed run (same towers, data and options) reuses the files; other towers make them anew.
  mtime = os.path.getmtime(train_file)
  mesh = sharding.make_mesh(dict(config.mesh))
  graphdef, state, shardings = trainer.create_state(cfg, config.optim, config.total_steps, mesh, config.seed)
  steps = trainer.make_trainer(cfg, mesh, graphdef, shardings)
  sources = input_pipeline.open_sources(config)
  reused = features.prepare(config, cfg, steps, state, sources, mesh, str(workdir))
  assert len(reused['train']) == TRAIN_CLIPS * 2 and os.path.getmtime(train_file) == mtime
  _, other_state, _ = trainer.create_state(cfg, config.optim, config.total_steps, mesh, config.seed + 1)
  features.prepare(config, cfg, steps, other_state, sources, mesh, str(workdir))
  assert os.path.getmtime(train_file) != mtime
