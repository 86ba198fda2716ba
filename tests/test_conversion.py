"""The converter: every checkpoint kind, the expected gaps, bad inputs, and the export back to torch."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import synchformer_jax
from synchformer_jax.conversion import CheckpointError, convert_checkpoint, export_torch_checkpoint, read_source
from synchformer_jax.conversion.convert import convert
from synchformer_jax.models import stored_variables
from tests.conftest import REPO_ROOT, SHARED_DIR, require_fixture, require_torch

CASES = SHARED_DIR / 'parity' / 'cases'


@pytest.fixture(scope='module')
def torch():
  return require_torch()


@pytest.fixture(scope='module')
def sync_checkpoint():
  return require_fixture(CASES / 'sync_tiny' / 'checkpoint.pt', 'sync_tiny parity checkpoint')


@pytest.fixture(scope='module')
def sync_sd(sync_checkpoint):
  return read_source(str(sync_checkpoint)).state_dict


@pytest.fixture(scope='module')
def avclip_sd():
  path = require_fixture(CASES / 'avclip_tiny' / 'checkpoint.pt', 'avclip_tiny parity checkpoint')
  return read_source(str(path)).state_dict


def _save(torch, obj, path: Path) -> str:
  def to_torch(o):
    if isinstance(o, np.ndarray):
      return torch.from_numpy(o.copy())
    if isinstance(o, dict):
      return {k: to_torch(v) for k, v in o.items()}
    return o
  torch.save(to_torch(obj), path)
  return str(path)


def _fused_qkv(sd, prefix, names=('query', 'key', 'value')):
  """Separate q, k, v nn.Linear layers as one (in, 3, out) kernel and its (3, out) bias, q | k | v."""
  kernel = np.stack([sd[f'{prefix}{n}.weight'].T for n in names], axis=1)
  return kernel, np.stack([sd[f'{prefix}{n}.bias'] for n in names])


def _folded_qkv(weight, bias):
  """A fused torch q|k|v weight (3·out, in) and bias (3·out,) as the (in, 3, out) kernel and (3, out) bias."""
  return weight.T.reshape(weight.shape[1], 3, -1), bias.reshape(3, -1)


def _assert_known_values(params, sd, *, src_v=None, src_a=None, dst_v='vfeat_extractor.', dst_a='afeat_extractor.',
                         head=False):
  """Parameters at known places hold their source tensors, by the original modules' conventions written out here
  (not through the converter's tables): an nn.Linear weight (out, in) is an (in, out) kernel, a LayerNorm weight a
  scale, a q|k|v projection (fused, or HF AST's separate query / key / value) an (in, 3, out) kernel, a Conv2d weight (O, I, H, W) an (H, W, I, O)
  kernel, and embedding tables and tokens stay as they are."""
  expected = {}
  if src_v is not None:
    b = src_v + 'blocks.0.'
    kernel, bias = _folded_qkv(sd[b + 'attn.qkv.weight'], sd[b + 'attn.qkv.bias'])
    expected |= {dst_v + 'blocks.0.attn.qkv.kernel': kernel, dst_v + 'blocks.0.attn.qkv.bias': bias,
                 dst_v + 'blocks.0.timeattn.proj.kernel': sd[b + 'timeattn.proj.weight'].T,
                 dst_v + 'blocks.0.mlp.fc2.kernel': sd[b + 'mlp.fc2.weight'].T,
                 dst_v + 'blocks.0.norm3.scale': sd[b + 'norm3.weight'],
                 dst_v + 'pos_embed': sd[src_v + 'pos_embed'], dst_v + 'cls_token': sd[src_v + 'cls_token']}
  if src_a is not None:
    layer = src_a + 'encoder.layer.0.'
    kernel, bias = _fused_qkv(sd, layer + 'attention.attention.')
    expected |= {dst_a + 'layers.0.attn.qkv.kernel': kernel, dst_a + 'layers.0.attn.qkv.bias': bias,
                 dst_a + 'layers.0.attn.proj.kernel': sd[layer + 'attention.output.dense.weight'].T,
                 dst_a + 'layers.0.mlp.fc1.kernel': sd[layer + 'intermediate.dense.weight'].T,
                 dst_a + 'layers.0.norm1.scale': sd[layer + 'layernorm_before.weight'],
                 dst_a + 'patch_embed.kernel': sd[src_a + 'embeddings.patch_embeddings.projection.weight'].transpose(2, 3, 1, 0)}
  if head:
    kernel, bias = _fused_qkv(sd, 'transformer.blocks.0.attn.')
    expected |= {'transformer.blocks.0.attn.qkv.kernel': kernel, 'transformer.blocks.0.attn.qkv.bias': bias,
                 'transformer.blocks.0.mlp.fc1.kernel': sd['transformer.blocks.0.mlp.0.weight'].T,
                 'transformer.blocks.0.norm2.scale': sd['transformer.blocks.0.ln2.weight'],
                 'transformer.pos_emb': sd['transformer.pos_emb_cfg.pos_emb'],
                 'transformer.off_head.kernel': sd['transformer.off_head.weight'].T,
                 'vproj.kernel': sd['vproj.weight'].T, 'aproj.bias': sd['aproj.bias']}
  assert expected
  for name, value in expected.items():
    np.testing.assert_array_equal(params[name], value, err_msg=name)


SYNC_SOURCE = dict(src_v='vfeat_extractor.', src_a='afeat_extractor.ast.', head=True)


# ---- each checkpoint kind -------------------------------------------------------------------------------

def test_stage2_checkpoint_with_omegaconf_args(sync_checkpoint, sync_sd, tmp_path):
  source = read_source(str(sync_checkpoint))
  assert source.kind == 'sync'
  assert source.args['model']['params']['transformer']['params']['n_head'] == 4  # read without omegaconf code
  conversion = convert_checkpoint(str(sync_checkpoint), str(tmp_path / 'm'))
  assert (conversion.target, conversion.missing, conversion.unused) == ('sync', [], [])
  assert conversion.config.video.crop == 64 and conversion.config.video.heads == 4  # matched the tiny size
  _assert_known_values(conversion.params, sync_sd, **SYNC_SOURCE)
  model = synchformer_jax.load(str(tmp_path / 'm'))
  for name, var in stored_variables(model).items():
    np.testing.assert_array_equal(np.asarray(var.get_value()), conversion.params[name], err_msg=name)
    # restored onto the device, not as host arrays copied there (which would hold the parameters twice)
    assert var.get_value().devices() == {jax.local_devices()[0]}, name


@pytest.mark.parametrize('ddp_prefix', [True, False])
def test_stage1_checkpoint_with_and_without_module_prefix(torch, avclip_sd, tmp_path, ddp_prefix):
  prefix = 'module.' if ddp_prefix else ''
  path = _save(torch, {'epoch': 3, 'name': 'run', 'state_dict': {prefix + k: v for k, v in avclip_sd.items()},
                       'optimizer': {'state': {}}, 'metrics': {'sync_w_shifts': 0.5}}, tmp_path / 'epoch_best.pt')
  conversion = convert_checkpoint(path, str(tmp_path / 'm'))
  assert (conversion.target, conversion.missing, conversion.unused) == ('avclip', [], [])
  _assert_known_values(conversion.params, avclip_sd, src_v='v_encoder.', src_a='a_encoder.ast.', dst_v='v_encoder.',
                       dst_a='a_encoder.')


def test_bare_state_dict_as_downstream_projects_ship_it(torch, sync_sd, tmp_path):
  path = _save(torch, sync_sd, tmp_path / 'synchformer_state_dict.pth')
  conversion = convert_checkpoint(path, str(tmp_path / 'm'))
  assert (conversion.target, conversion.missing, conversion.unused) == ('sync', [], [])
  _assert_known_values(conversion.params, sync_sd, **SYNC_SOURCE)


def _hf_ast_state_dict(sync_sd):
  """An HF ASTForAudioClassification layout: the tower under `audio_spectrogram_transformer.`, a
  1214-row (12 × 101 + 2) position table whose first 74 rows are the tower's, and the AudioSet head."""
  rng = np.random.default_rng(0)
  sd = {'audio_spectrogram_transformer.' + k[len('afeat_extractor.ast.'):]: v for k, v in sync_sd.items()
        if k.startswith('afeat_extractor.ast.')}
  pos = sd['audio_spectrogram_transformer.embeddings.position_embeddings']
  sd['audio_spectrogram_transformer.embeddings.position_embeddings'] = np.concatenate(
      [pos, rng.standard_normal((1, 1214 - pos.shape[1], pos.shape[2])).astype(np.float32)], axis=1)
  dim = pos.shape[2]
  sd.update({'classifier.layernorm.weight': np.ones(dim, np.float32), 'classifier.layernorm.bias': np.zeros(dim, np.float32),
             'classifier.dense.weight': np.zeros((527, dim), np.float32), 'classifier.dense.bias': np.zeros(527, np.float32)})
  return sd


@pytest.mark.parametrize('suffix', ['.bin', '.safetensors'])
def test_hf_ast_initialisation(torch, sync_sd, tmp_path, suffix):
  sd = _hf_ast_state_dict(sync_sd)
  path = tmp_path / f'model{suffix}'
  if suffix == '.safetensors':
    from safetensors.numpy import save_file
    save_file(sd, str(path))
  else:
    _save(torch, sd, path)
  conversion = convert_checkpoint(str(path), str(tmp_path / 'm'), size='tiny')
  assert conversion.target == 'ast'
  assert conversion.missing and all(m.startswith('freq_attn_agg.') for m in conversion.missing)
  assert sorted(conversion.unused) == sorted(k for k in sd if k.startswith('classifier.'))
  assert conversion.truncated == ['ast.embeddings.position_embeddings: 1214 → 74 rows']
  _assert_known_values(conversion.params, sd, src_a='audio_spectrogram_transformer.', dst_a='')
  np.testing.assert_array_equal(conversion.params['position_embeddings'],
                                sd['audio_spectrogram_transformer.embeddings.position_embeddings'][:, :74])
  tower = synchformer_jax.load(str(tmp_path / 'm'))
  assert type(tower).__name__ == 'AST'


def test_motionformer_ssv2_initialisation(torch, sync_sd, tmp_path):
  sd = {k[len('vfeat_extractor.'):]: v for k, v in sync_sd.items()
        if k.startswith('vfeat_extractor.') and not k.startswith('vfeat_extractor.spatial_attn_agg.')}
  dim = sd['cls_token'].shape[-1]
  sd.update({'head.weight': np.zeros((174, dim), np.float32), 'head.bias': np.zeros(174, np.float32)})
  path = _save(torch, {'model_state': sd, 'epoch': 35}, tmp_path / 'ssv2_divided_224_16x4.pyth')
  conversion = convert_checkpoint(path, str(tmp_path / 'm'), size='tiny')
  assert conversion.target == 'motionformer'
  assert conversion.missing and all(m.startswith('spatial_attn_agg.') for m in conversion.missing)
  assert conversion.unused == ['head.bias', 'head.weight']
  _assert_known_values(conversion.params, sd, src_v='', dst_v='')


def test_stage2_into_synchronizability_keeps_leading_position_rows(sync_checkpoint, sync_sd, tmp_path):
  with pytest.raises(CheckpointError, match='sync_head'):
    convert_checkpoint(str(sync_checkpoint), str(tmp_path / 'refused'), target='synchability')
  assert not (tmp_path / 'refused').exists()
  conversion = convert_checkpoint(str(sync_checkpoint), str(tmp_path / 'm'), target='synchability',
                                  allow_missing=True, allow_unused=True)
  assert conversion.missing == ['transformer.sync_head.bias', 'transformer.sync_head.kernel']
  assert conversion.unused == ['transformer.off_head.bias', 'transformer.off_head.weight']
  np.testing.assert_array_equal(conversion.params['transformer.pos_emb'],
                                sync_sd['transformer.pos_emb_cfg.pos_emb'][:, :184])
  assert synchformer_jax.load(str(tmp_path / 'm')).cfg.transformer.n_segments == 13


def test_stage1_into_stage2_needs_the_flag_and_keeps_the_towers(torch, avclip_sd, tmp_path):
  path = _save(torch, {'state_dict': {'module.' + k: v for k, v in avclip_sd.items()}}, tmp_path / 'avclip.pt')
  source = read_source(path)
  with pytest.raises(CheckpointError, match='target parameters have no source key'):
    convert(source, 'sync')
  conversion = convert(source, 'sync', allow_missing=True, allow_unused=True)
  assert conversion.unused == ['logit_scale']
  assert all(m.startswith(('vproj.', 'aproj.', 'transformer.')) for m in conversion.missing)
  _assert_known_values(conversion.params, avclip_sd, src_v='v_encoder.', src_a='a_encoder.ast.')


# ---- bad inputs ---------------------------------------------------------------------------------------------

def test_not_a_checkpoint(tmp_path):
  path = tmp_path / 'notes.pt'
  path.write_text('these are not weights\n')
  with pytest.raises(CheckpointError, match='notes.pt: not a readable PyTorch checkpoint'):
    read_source(str(path))


def test_missing_file(tmp_path):
  with pytest.raises(CheckpointError, match='no such file'):
    read_source(str(tmp_path / 'absent.pt'))


def test_truncated_checkpoint(sync_checkpoint, tmp_path):
  data = sync_checkpoint.read_bytes()
  path = tmp_path / 'truncated.pt'
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match='truncated.pt: truncated or damaged'):
    read_source(str(path))


def test_checkpoint_of_another_architecture(torch, tmp_path):
  resnet = {'conv1.weight': np.zeros((64, 3, 7, 7), np.float32), 'bn1.weight': np.ones(64, np.float32),
            'fc.weight': np.zeros((1000, 512), np.float32)}
  path = _save(torch, {'model': resnet, 'epoch': 1}, tmp_path / 'resnet.pt')
  with pytest.raises(CheckpointError, match='resnet.pt: the weights are not of a supported architecture'):
    read_source(path)


def test_no_state_dict_inside(torch, tmp_path):
  path = _save(torch, {'epoch': 1, 'notes': 'hello'}, tmp_path / 'empty.pt')
  with pytest.raises(CheckpointError, match="no state dict found"):
    read_source(path)


def test_missing_and_extra_keys_are_listed(torch, sync_sd, tmp_path):
  sd = dict(sync_sd)
  del sd['transformer.ln_f.weight']
  sd['transformer.extra_head.weight'] = np.zeros((3, 3), np.float32)
  path = _save(torch, {'model': sd}, tmp_path / 'edited.pt')
  with pytest.raises(CheckpointError) as err:
    convert_checkpoint(path, str(tmp_path / 'm'))
  message = str(err.value)
  assert 'transformer.ln_f.scale' in message and 'transformer.extra_head.weight' in message
  assert not (tmp_path / 'm').exists()


def test_shape_mismatch_names_key_and_both_shapes(torch, sync_sd, tmp_path):
  sd = dict(sync_sd)
  sd['vproj.weight'] = np.zeros((64, 32), np.float32)
  path = _save(torch, {'model': sd}, tmp_path / 'bad_shape.pt')
  with pytest.raises(CheckpointError, match=r'vproj\.weight \(64, 32\).*needs \(64, 64\)'):
    convert_checkpoint(path, str(tmp_path / 'm'))
  assert not (tmp_path / 'm').exists()


def test_pickled_code_is_not_executed(torch, sync_sd, tmp_path):
  """A checkpoint whose 'args' would run a command when unpickled normally."""
  marker = tmp_path / 'pwned'

  class Exploit:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  path = tmp_path / 'evil.pt'
  torch.save({'model': {k: torch.from_numpy(v.copy()) for k, v in sync_sd.items()}, 'args': Exploit()}, path,
             pickle_module=pickle)
  conversion = convert_checkpoint(str(path), str(tmp_path / 'm'))
  assert conversion.missing == [] and not marker.exists()


def test_cli_reports_errors_and_leaves_nothing(tmp_path):
  bad = tmp_path / 'bad.pt'
  bad.write_bytes(b'\x00' * 100)
  dst = tmp_path / 'out'
  proc = subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'convert_checkpoint.py'), '--src', str(bad),
                         '--dst', str(dst)], capture_output=True, text=True)
  assert proc.returncode == 1
  assert proc.stderr.startswith('error: ') and 'bad.pt' in proc.stderr
  assert not dst.exists() and [p.name for p in tmp_path.iterdir()] == ['bad.pt']


def test_refuses_to_overwrite(sync_checkpoint, tmp_path):
  (tmp_path / 'm').mkdir()
  (tmp_path / 'm' / 'keep.txt').write_text('mine')
  with pytest.raises(FileExistsError):
    convert_checkpoint(str(sync_checkpoint), str(tmp_path / 'm'))
  assert (tmp_path / 'm' / 'keep.txt').read_text() == 'mine'


# ---- export back --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('case', ['sync_tiny', 'synchability_tiny', 'avclip_tiny'])
def test_torch_jax_torch_round_trip_is_exact(torch, case, tmp_path):
  src = require_fixture(CASES / case / 'checkpoint.pt', f'{case} parity checkpoint')
  subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'convert_checkpoint.py'), '--src', str(src),
                  '--dst', str(tmp_path / 'm')], check=True, capture_output=True)
  subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'convert_checkpoint.py'), '--src', str(tmp_path / 'm'),
                  '--dst', str(tmp_path / 'back.pt'), '--to-torch'], check=True, capture_output=True)
  original = torch.load(src, weights_only=False)
  exported = torch.load(tmp_path / 'back.pt', weights_only=True)
  key = 'state_dict' if case.startswith('avclip') else 'model'
  assert set(exported[key]) == set(original[key])
  for k, v in original[key].items():
    assert torch.equal(exported[key][k], v), k


def test_tower_directories_do_not_export(torch, sync_sd, tmp_path):
  sd = _hf_ast_state_dict(sync_sd)
  path = _save(torch, sd, tmp_path / 'pytorch_model.bin')
  convert_checkpoint(path, str(tmp_path / 'm'), size='tiny')
  with pytest.raises(CheckpointError, match='single ast tower'):
    export_torch_checkpoint(str(tmp_path / 'm'), str(tmp_path / 'x.pt'))
  assert not (tmp_path / 'x.pt').exists()
