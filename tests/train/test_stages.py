"""Every stage's config: each variant validates for a 16-device mesh, architecture fields are overridable from the
command line, and Stage I and the synchronizability fine-tune train through `train()`."""
import json

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

import synchformer_jax
from synchformer_jax.train.config import ConfigError, base_config, model_config, validate
from synchformer_jax.train.loop import train
from tests.conftest import REPO_ROOT

CONFIGS = ('avclip', 'sync', 'synchability')
VARIANTS = ('', 'audioset', 'vggsound', 'lrs3')


def _parsed(config_file: str, *overrides: str):
  """The config as scripts/train.py parses `--config FILE[:VARIANT] --config.FIELD=VALUE ...`."""
  argv = ['train.py', f'--config={config_file}', *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('variant', VARIANTS)
def test_every_variant_validates_for_16_devices(name, variant):
  config = _parsed(str(REPO_ROOT / 'configs' / f'{name}.py') + (f':{variant}' if variant else ''))
  assert config.stage == name
  if variant:  # the published recipes: full size, their dataset, the configured mesh over all 16 devices
    assert config.model.size == 'full' and config.data.name == {'lrs3': 'lrs3_h264'}.get(variant, variant)
    if name != 'avclip':
      config.model.init = 'models/towers'  # the frozen towers a full Stage II / III run starts from
  else:
    # The CPU defaults' batches (4 to 32 clips) are smaller than 16: split them 4 ways, the rest over tensor.
    config.mesh.update(data=4, tensor=4)
  validate(config, num_devices=16)
  cfg = model_config(config)
  assert cfg.kind == name and cfg.transformer.n_segments == (13 if name == 'synchability' else 14)
  assert (cfg.video.dim, cfg.audio.depth) == ((768, 12) if variant else (64, 2))


def test_architecture_fields_are_overridden_from_the_command_line():
  config = _parsed(str(REPO_ROOT / 'configs' / 'sync.py'), '--config.model.transformer.layers=2',
                   '--config.model.video.dim=32', '--config.model.video.heads=2',
                   '--config.model.transformer.attn_dropout=0.0')
  cfg = model_config(config)
  assert (cfg.transformer.layers, cfg.video.dim, cfg.video.heads, cfg.transformer.attn_dropout) == (2, 32, 2, 0.0)
  assert (cfg.video.depth, cfg.audio.dim, cfg.transformer.dim) == (2, 64, 64)  # the rest: the tiny size's
  validate(config, num_devices=1)
  # The one validation of the architecture names the config field.
  config = _parsed(str(REPO_ROOT / 'configs' / 'sync.py'), '--config.model.video.heads=3')
  with pytest.raises(ConfigError, match=r'config.model.video.heads: expected a divisor of dim 64, got 3'):
    validate(config, num_devices=1)
  config = base_config('sync')
  config.model.attention_impl = 'flash'
  with pytest.raises(ConfigError, match=r"config.model.attention_impl: expected one of \(None, 'xla', 'cudnn'\)"):
    validate(config, num_devices=1)


def test_the_towers_family_sets_both_towers_and_a_section_field_wins_over_it():
  config = _parsed(str(REPO_ROOT / 'configs' / 'avclip.py'), '--config.model.towers.dim=96',
                   '--config.model.towers.depth=3', '--config.model.towers.heads=6', '--config.model.towers.mlp_ratio=2',
                   '--config.model.audio.heads=4', '--config.model.transformer.layers=2')
  cfg = model_config(config)
  assert (cfg.video.dim, cfg.video.depth, cfg.video.heads, cfg.video.mlp_dim) == (96, 3, 6, 192)
  assert (cfg.audio.dim, cfg.audio.depth, cfg.audio.heads, cfg.audio.mlp_dim) == (96, 3, 4, 192)
  assert cfg.transformer.layers == 2 and cfg.video.crop == 64  # the rest: the tiny size's
  validate(config, num_devices=1)
  # Named sizes are untouched by an unset family: the full size is still the published architecture.
  full = _parsed(str(REPO_ROOT / 'configs' / 'avclip.py') + ':audioset')
  assert model_config(full) == synchformer_jax.models.config_for_size('avclip', 'full', dtype='bfloat16', remat=True)
  bad = _parsed(str(REPO_ROOT / 'configs' / 'avclip.py'), '--config.model.towers.mlp_ratio=0')
  with pytest.raises(ConfigError, match=r'config.model.towers.mlp_ratio: expected a positive integer'):
    validate(bad, num_devices=1)
  # The MLP ratio scales each tower's own width (Stage II's towers may differ in width).
  config = _parsed(str(REPO_ROOT / 'configs' / 'sync.py'), '--config.model.towers.mlp_ratio=3',
                   '--config.model.audio.dim=48')
  assert (model_config(config).video.mlp_dim, model_config(config).audio.mlp_dim) == (192, 144)
  # Stage I compares the towers' embeddings: their widths must agree.
  bad = _parsed(str(REPO_ROOT / 'configs' / 'avclip.py'), '--config.model.audio.dim=48')
  with pytest.raises(ConfigError, match=r"config.model.audio.dim: expected the video tower's dim 64"):
    validate(bad, num_devices=1)


@pytest.mark.slow
def test_stage1_then_the_fine_tune_train_through_the_loop(tmp_path, synthetic_data):
  data = dict(dir=str(synthetic_data), build_if_missing=False, eval_max_clips=2)
  stage1 = base_config('avclip')
  stage1.update(total_steps=2, batch_size=2, eval_every=2, checkpoint_every=2)
  stage1.data.update(**data)
  result = train(stage1, str(tmp_path / 'avclip'))
  assert result['step'] == 2
  logged = [json.loads(line) for line in (tmp_path / 'avclip' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in logged if 'loss' in r] == [1, 2]
  assert {'eval/precision', 'eval/v2a_recall_1', 'eval/contrastive_loss'} <= set(logged[-1])
  assert (tmp_path / 'avclip' / 'viz' / 'segment_similarity_0000002.png').exists()
  avclip = synchformer_jax.load(str(tmp_path / 'avclip' / 'model'))

  fine_tune = base_config('synchability')
  fine_tune.update(total_steps=2, batch_size=2, eval_every=2, checkpoint_every=2)
  fine_tune.data.update(**data)
  fine_tune.model.init = str(tmp_path / 'avclip' / 'model')
  result = train(fine_tune, str(tmp_path / 'synchability'))
  logged = [json.loads(line) for line in (tmp_path / 'synchability' / 'metrics.jsonl').read_text().splitlines()]
  assert result['step'] == 2 and {'eval/accuracy', 'eval/loss'} <= set(logged[-1])
  model = synchformer_jax.load(str(tmp_path / 'synchability' / 'model'))
  assert model.cfg.kind == 'synchability' and model.cfg.transformer.n_segments == 13
  # The towers came from Stage I and stayed frozen through the fine-tune's steps.
  trained = model.vfeat_extractor.blocks[0].mlp.fc1.kernel.get_value()
  np.testing.assert_array_equal(trained, avclip.v_encoder.blocks[0].mlp.fc1.kernel.get_value())
  np.testing.assert_array_equal(model.afeat_extractor.patch_embed.kernel.get_value(),
                                avclip.a_encoder.patch_embed.kernel.get_value())
