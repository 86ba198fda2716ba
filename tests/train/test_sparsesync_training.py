"""SparseSync through the trainer: its config variants, trunk initialisation from converted checkpoints (BatchNorm
statistics included), and end-to-end training that resumes after SIGKILL with exactly the losses of an
uninterrupted run and exports a model `synchformer_jax.load` reads."""
import importlib.util
import sys

import numpy as np
import pytest

import synchformer_jax
from synchformer_jax.models import config_for_size, stored_variables
from synchformer_jax.train.config import ConfigError, model_config, validate
from synchformer_jax.train.loop import _initialiser
from tests.conftest import REPO_ROOT, random_model_dir
from tests.train.test_resume import _step_losses, kill_after_step, run_to_the_end
from tests.train.test_stages import _parsed

CONFIG = str(REPO_ROOT / 'configs' / 'sparsesync.py')
TRAIN = [sys.executable, str(REPO_ROOT / 'scripts' / 'train.py'), '--config', CONFIG]


@pytest.mark.parametrize('variant, classes, dataset, augmentation', [
    ('lrs3', 21, 'lrs3_h264', 'default'), ('lrs3_3cls', 3, 'lrs3_h264', 'default'),
    ('vggsound_sparse', 21, 'vggsound_sparse', 'finetune'), ('vggsound_sparse_3cls', 3, 'vggsound_sparse', 'finetune')])
def test_the_original_recipes(variant, classes, dataset, augmentation):
  """Adam, lr 5e-6 and 10 clips per device for 8 devices, warm-up from lr/100 over 1000 steps, clipping at 1."""
  config = _parsed(f'{CONFIG}:{variant}', '--config.model.init_s3d=models/s3d', '--config.model.init_resnet=models/r18')
  validate(config, num_devices=8)
  cfg = model_config(config)
  assert (cfg.kind, cfg.num_classes, cfg.max_offset_sec) == ('sparsesync', classes, 2.0 if classes == 21 else 1.0)
  assert (cfg.transformer.dim, cfg.crop, cfg.visual_block_shape, cfg.audio_block_shape) == (512, 224, (16, 7, 7), (9, 20))
  assert (config.data.name, config.data.augmentation, config.batch_size) == (dataset, augmentation, 80)
  o = config.optim
  assert (o.name, o.learning_rate, o.schedule, o.warmup_steps, o.eps, o.clip_norm) == (
      'adam', pytest.approx(4e-5), 'constant_with_warmup', 1000, 1e-7, 1.0)


def test_bad_values_are_named():
  spec = importlib.util.spec_from_file_location('sparsesync_config', CONFIG)
  config_module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config_module)
  with pytest.raises(ConfigError, match=r"config variant: expected one of \['lrs3', 'vggsound_sparse'\]"):
    config_module.get_config('audioset')
  full = _parsed(f'{CONFIG}:lrs3')
  with pytest.raises(ConfigError, match='config.model.init: expected a SparseSync model directory, or both'):
    validate(full, num_devices=1)
  for override, field in (('--config.data.precomputed_windows=8', 'data.precomputed_windows'),
                          ('--config.data.augmentation=strong', 'data.augmentation'),
                          ('--config.model.num_classes=5', 'model.num_classes'),
                          ('--config.model.resnet_width=16', 'model.transformer.dim')):
    with pytest.raises(ConfigError, match=f'config.{field}: expected'):
      validate(_parsed(CONFIG, override), num_devices=1)


def test_the_trunks_start_from_converted_checkpoints_with_their_batchnorm_statistics(tmp_path):
  tiny = config_for_size('sparsesync', 'tiny')
  config = _parsed(CONFIG, f'--config.model.init_s3d={random_model_dir(tmp_path / "s3d", "s3d", tiny, 1)}',
                   f'--config.model.init_resnet={random_model_dir(tmp_path / "r18", "resnet_audio", tiny, 2)}')
  cfg = model_config(config)
  model = synchformer_jax.load(random_model_dir(tmp_path / 'model', 'sparsesync', cfg, 3))
  before = {k: np.asarray(v.get_value()) for k, v in stored_variables(model).items()}
  _initialiser(config, cfg)(model)
  after = stored_variables(model)
  for prefix, directory in (('vfeat_extractor.', config.model.init_s3d), ('afeat_extractor.', config.model.init_resnet)):
    source = stored_variables(synchformer_jax.load(directory))
    for name, var in source.items():
      np.testing.assert_array_equal(np.asarray(after[prefix + name].get_value()), np.asarray(var.get_value()),
                                    err_msg=prefix + name)
    assert any(name.endswith('.mean') for name in source)  # the running statistics came along
  head = [k for k in before if k.startswith(('transformer.', 'v_bridge.'))]
  assert head and all(np.array_equal(before[k], after[k].get_value()) for k in head)

  sync_dir = random_model_dir(tmp_path / 'sync', 'sync', config_for_size('sync', 'tiny'))
  wrong = _parsed(CONFIG, f'--config.model.init_s3d={sync_dir}')
  with pytest.raises(ValueError, match="config.model.init_s3d: .* holds a 'sync' model, expected a converted"):
    _initialiser(wrong, model_config(wrong))


def _overrides(data_dir) -> list[str]:
  return ['--config.total_steps=3', '--config.batch_size=1', '--config.checkpoint_every=1', '--config.eval_every=3',
          '--config.data.eval_max_clips=2', f'--config.data.dir={data_dir}', '--config.data.build_if_missing=False',
          '--config.keep_checkpoints=10']


@pytest.mark.slow
def test_trains_end_to_end_and_resumes_after_sigkill_with_the_same_losses(tmp_path, synthetic_data):
  command = TRAIN + _overrides(synthetic_data)
  reference, run = tmp_path / 'reference', tmp_path / 'interrupted'
  run_to_the_end(command, reference)
  kill_after_step(command, run, 2)
  assert not (run / 'model').exists()
  run_to_the_end(command, run)
  expected = _step_losses(reference)
  assert sorted(expected) == [1, 2, 3]
  assert _step_losses(run) == expected

  model = synchformer_jax.load(str(run / 'model'))
  assert model.cfg.kind == 'sparsesync'
  trained = stored_variables(model)
  # Every BatchNorm trained in train mode: its running statistics moved from their initial 0 / 1 and it counted
  # the 3 steps (the evaluation, in eval mode, counts none).
  assert int(trained['vfeat_extractor.base.0.bn_s.num_batches_tracked'].get_value()) == 3
  assert not np.allclose(trained['afeat_extractor.bn1.var'].get_value(), 1.0)
  assert not np.allclose(trained['vfeat_extractor.base.15.branch0.0.bn.mean'].get_value(), 0.0)
