"""Stage II starts from a Stage I model's towers; the synchronizability fine-tune from a Stage II model."""
import jax
import numpy as np
import pytest
from flax import nnx

import synchformer_jax
from synchformer_jax import sharding
from synchformer_jax.models import build_model, config_for_size
from synchformer_jax.train import trainer
from synchformer_jax.train.config import base_config
from synchformer_jax.train.evaluation import write_similarity_images
from synchformer_jax.train.loop import _initialiser, model_config


def _params(module) -> dict[str, np.ndarray]:
  return {'.'.join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


@pytest.mark.parametrize('source_kind, target_stage', [('avclip', 'sync'), ('sync', 'synchability')])
def test_model_init_copies_the_shared_parameters(tmp_path, source_kind, target_stage):
  source = build_model(config_for_size(source_kind, 'tiny'), seed=7)
  synchformer_jax.save(source, str(tmp_path / 'source'))
  config = base_config(target_stage)
  config.model.init = str(tmp_path / 'source')
  cfg = model_config(config)
  mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  graphdef, state, _ = trainer.create_state(cfg, config.optim, 10, mesh, seed=0, init_params=_initialiser(config, cfg))
  model, _ = nnx.merge(graphdef, state)
  got, expected = _params(model), _params(source)
  rename = {'v_encoder': 'vfeat_extractor', 'a_encoder': 'afeat_extractor'}
  copied = 0
  for name, value in expected.items():
    head, _, rest = name.partition('.')
    target = f'{rename.get(head, head)}.{rest}' if rest else rename.get(head, head)
    if target not in got:
      continue
    if target.endswith('pos_emb'):
      value = value[:, :got[target].shape[1]]  # 198 → 184 rows, as the original
    np.testing.assert_array_equal(got[target], value, err_msg=target)
    copied += 1
  # Everything but what the target lacks: Stage I's temperature, Stage II's offset head (kernel, bias).
  assert copied == len(expected) - (1 if source_kind == 'avclip' else 2)


def test_similarity_images_are_written(tmp_path):
  rng = np.random.default_rng(0)
  feats = rng.standard_normal((2, 14, 8))
  path = tmp_path / 'viz' / 'sim.png'
  write_similarity_images(feats, feats, str(path))
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
