"""Stage II starts from a Stage I model's towers; the synchronizability fine-tune from a Stage II model."""
import jax
import numpy as np
from flax import nnx

import synchformer_jax
from synchformer_jax import sharding
from synchformer_jax.models import build_model, config_for_size
from synchformer_jax.train import trainer
from synchformer_jax.train.config import base_config, model_config
from synchformer_jax.train.loop import _initialiser


def _params(module) -> dict[str, np.ndarray]:
  return {'.'.join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def _initialised(tmp_path, source, target_stage):
  synchformer_jax.save(source, str(tmp_path / 'source'))
  config = base_config(target_stage)
  config.model.init = str(tmp_path / 'source')
  cfg = model_config(config)
  mesh = sharding.make_mesh({'data': 1}, jax.devices()[:1])
  graphdef, state, _ = trainer.create_state(cfg, config.optim, 10, mesh, seed=0, init_params=_initialiser(config, cfg))
  return nnx.merge(graphdef, state)[0], build_model(cfg, seed=0)


def _assert_same(got: dict, expected: dict, atol: float = 0.0) -> None:
  assert got.keys() == expected.keys()
  for name in got:
    np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=atol, err_msg=name)


# A fresh initialisation jitted onto a mesh and one built eagerly round differently in the last bits.
FRESH_ATOL = 1e-6


def test_stage2_takes_the_stage1_towers_and_initialises_the_rest(tmp_path):
  source = build_model(config_for_size('avclip', 'tiny'), seed=7)
  model, fresh = _initialised(tmp_path, source, 'sync')
  # Stage I calls its towers v_encoder / a_encoder, Stage II vfeat_extractor / afeat_extractor.
  _assert_same(_params(model.vfeat_extractor), _params(source.v_encoder))
  _assert_same(_params(model.afeat_extractor), _params(source.a_encoder))
  for part in ('vproj', 'aproj', 'transformer'):  # what Stage I lacks keeps its fresh initialisation
    _assert_same(_params(getattr(model, part)), _params(getattr(fresh, part)), FRESH_ATOL)


def test_the_fine_tune_takes_stage2_but_its_offset_head_and_keeps_184_position_rows(tmp_path):
  source = build_model(config_for_size('sync', 'tiny'), seed=7)
  model, fresh = _initialised(tmp_path, source, 'synchability')
  got, stage2, new = _params(model), _params(source), _params(fresh)
  np.testing.assert_array_equal(got['transformer.pos_emb'], stage2['transformer.pos_emb'][:, :184])
  assert got['transformer.pos_emb'].shape[1] == 2 + 13 * (8 + 6)
  for name in ('transformer.sync_head.kernel', 'transformer.sync_head.bias'):  # the 2-way head is new
    np.testing.assert_allclose(got[name], new[name], rtol=0, atol=FRESH_ATOL)
  shared = set(got) - {'transformer.pos_emb', 'transformer.sync_head.kernel', 'transformer.sync_head.bias'}
  assert shared == set(stage2) - {'transformer.pos_emb', 'transformer.off_head.kernel', 'transformer.off_head.bias'}
  _assert_same({k: got[k] for k in shared}, {k: stage2[k] for k in shared})
