"""SparseSync's converter: its three checkpoint kinds (the training checkpoint and the two trunk initialisations)
are detected and convert with their deliberate gaps only, the architecture is read off the shapes, torch → JAX →
torch is exact, and bad checkpoints are refused naming the key, leaving nothing behind."""
import dataclasses
import importlib.util
import json

import numpy as np
import pytest
from flax import nnx

from synchformer_jax import pretrained
from synchformer_jax.conversion import CheckpointError, convert_checkpoint, read_source
from synchformer_jax.conversion.convert import SourceCheckpoint, convert, to_original_state_dict
from synchformer_jax.conversion.torch_io import save_torch_file
from synchformer_jax.models import build_target, config_for_size, stored_variables
from tests.conftest import REPO_ROOT, SHARED_DIR, require_fixture, require_optional, require_torch
from tests.parity.test_models_vs_reference import _make_weights_module
from tests.test_conversion import CASES, _fused_qkv

SPARSESYNC_CASE = SHARED_DIR / 'parity' / 'sparsesync_cases' / 'sparsesync_full'
CLI = REPO_ROOT / 'scripts' / 'convert_checkpoint.py'
TINY = config_for_size('sparsesync', 'tiny')
# What each kind's file holds beside the weights its target takes: the trunks' classifiers (tiny widths: S3D's
# output 128 channels, the ResNet's 64).
CLASSIFIERS = {'sparsesync': {}, 's3d': {'fc.0.weight': (400, 128, 1, 1, 1), 'fc.0.bias': (400,)},
               'resnet_audio': {'fc.weight': (308, 64), 'fc.bias': (308,)}}


def _cli_main():
  spec = importlib.util.spec_from_file_location('convert_checkpoint_cli', CLI)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
  """scripts/convert_checkpoint.py in this process: (exit status, stdout, stderr)."""
  status = _cli_main()(list(argv))
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def original_state_dict(target: str, cfg, seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights of a `target` of `cfg` in the original's layout: keys and shapes from the model through the
  conversion table, values from the parity generator (BatchNorm variances positive, norm weights near 1), and
  counters that have counted (`seed + 3`), so that their int64 values are compared too."""
  abstract = nnx.eval_shape(lambda: build_target(target, cfg))
  zeros = {k: np.zeros(v.shape, v.dtype) for k, v in stored_variables(abstract).items()}
  manifest = [(k, v.shape) for k, v in to_original_state_dict(target, cfg, zeros).items()]
  sd = _make_weights_module(SPARSESYNC_CASE).state_dict_arrays(manifest, seed)
  return {k: np.asarray(v + seed + 3) if k.endswith('.num_batches_tracked') else v for k, v in sd.items()}


@pytest.fixture(scope='module')
def torch():
  return require_torch()


@pytest.fixture(scope='module')
def weights() -> dict[str, dict[str, np.ndarray]]:
  """Each kind's tiny weights as its file holds them, classifiers included (made once: each takes seconds)."""
  rng = np.random.default_rng(0)
  out = {}
  for seed, kind in enumerate(CLASSIFIERS):
    sd = original_state_dict(kind, TINY, seed)
    out[kind] = {**sd, **{k: rng.standard_normal(s).astype(np.float32) for k, s in CLASSIFIERS[kind].items()}}
  return out


def _checkpoint(kind: str, sd: dict[str, np.ndarray], path, **extra) -> str:
  """`sd` as the original code writes a file of this kind: S3D a plain state dict, the others under 'model'."""
  model_type = {'sparsesync': 'AVSyncModel', 'resnet_audio': 'ResNetAudio'}.get(kind)
  save_torch_file(sd if kind == 's3d' else {'epoch': 3, 'model': sd, 'model_type': model_type, **extra}, str(path))
  return str(path)


def _assert_known_values(params, sd, kind: str):
  """Parameters at known places hold their source tensors, by the original modules' conventions written out here
  (not through the table): a Conv3d weight (O, I, T, H, W) is a (T, H, W, I, O) kernel, a Conv2d weight (O, I, H, W)
  an (H, W, I, O) kernel, the 1×1×1 bridge conv a Dense (I, O) kernel, an nn.Linear weight (out, in) an (in, out)
  kernel, separate query / key / value layers of the self-attention one (in, 3, out) kernel, a norm's weight its
  scale, BatchNorm's running statistics its mean / var, its int64 counter an int32 one, and tables stay as they are."""
  v, a = {'sparsesync': ('vfeat_extractor.', 'afeat_extractor.'), 's3d': ('', None), 'resnet_audio': (None, '')}[kind]
  conv3d, conv2d = (lambda w: w.transpose(2, 3, 4, 1, 0)), (lambda w: w.transpose(2, 3, 1, 0))
  expected = {}
  if v is not None:
    expected |= {v + 'base.0.conv_s.kernel': conv3d(sd[v + 'base.0.conv_s.weight']),
                 v + 'base.12.branch2.1.conv_t.kernel': conv3d(sd[v + 'base.12.branch2.1.conv_t.weight']),
                 v + 'base.15.branch3.1.bn.scale': sd[v + 'base.15.branch3.1.bn.weight'],
                 v + 'base.5.branch1.1.bn_t.var': sd[v + 'base.5.branch1.1.bn_t.running_var'],
                 v + 'base.0.bn_s.num_batches_tracked': sd[v + 'base.0.bn_s.num_batches_tracked'].astype(np.int32)}
  if a is not None:
    expected |= {a + 'conv1.kernel': conv2d(sd[a + 'conv1.weight']),
                 a + 'layer3.0.downsample.0.kernel': conv2d(sd[a + 'layer3.0.downsample.0.weight']),
                 a + 'layer4.1.bn2.mean': sd[a + 'layer4.1.bn2.running_mean'],
                 a + 'bn1.bias': sd[a + 'bn1.bias']}
  if kind == 'sparsesync':
    t = 'transformer.'
    kernel, bias = _fused_qkv(sd, t + 'v_selector.blocks.0.attn.')
    expected |= {'v_bridge.proj.kernel': sd['v_bridge.bridge.0.weight'][:, :, 0, 0, 0].T,
                 t + 'v_selector.blocks.0.attn.qkv.kernel': kernel, t + 'v_selector.blocks.0.attn.qkv.bias': bias,
                 t + 'a_selector.blocks.0.xattn.key.kernel': sd[t + 'a_selector.blocks.0.xattn.key.weight'].T,
                 t + 'a_selector.selectors_pos_emb.embedding': sd[t + 'a_selector.selectors_pos_emb.time_embed.weight'],
                 t + 'vis_pos_emb.width_embed.embedding': sd[t + 'vis_pos_emb.width_embed.weight'],
                 t + 'global_transformer.OFF_tok': sd[t + 'global_transformer.OFF_tok'],
                 t + 'global_transformer.off_head.kernel': sd[t + 'off_head.weight'].T}
  for name, value in expected.items():
    assert params[name].dtype == value.dtype, name
    np.testing.assert_array_equal(params[name], value, err_msg=name)


# ---- each checkpoint kind -----------------------------------------------------------------------------------------

def test_training_checkpoint_with_omegaconf_args(weights, tmp_path, capsys):
  """A training checkpoint as the original writes it, its 'args' a pickled OmegaConf DictConfig: read by the safe
  unpickler into plain dicts, whose n_head sets the heads (2, not the tiny size's 4); every key is used."""
  omegaconf = require_optional('omegaconf', 'test')
  args = omegaconf.OmegaConf.create({'model': {'target': 'model.sync_model.AVSyncModel', 'params': {
      'transformer': {'params': {'n_head': 2, 'n_embd': 64}}}}, 'training': {'base_learning_rate': 5e-6}})
  path = _checkpoint('sparsesync', weights['sparsesync'], tmp_path / '22-07-13T22-25-49.pt', args=args,
                     optimizer={'state': {}}, loss=1.5)
  source = read_source(path)
  assert source.kind == 'sparsesync'
  assert source.args == {'model': {'target': 'model.sync_model.AVSyncModel', 'params': {
      'transformer': {'params': {'n_head': 2, 'n_embd': 64}}}}, 'training': {'base_learning_rate': 5e-6}}
  status, out, _ = run_cli(capsys, '--src', path, '--dst', str(tmp_path / 'm'))
  assert status == 0
  report = json.loads(out)
  assert (report['target'], report['missing'], report['unused']) == ('sparsesync', [], [])
  target, cfg = pretrained.read_config(str(tmp_path / 'm'))
  assert (target, cfg) == ('sparsesync', TINY.replace(transformer=dataclasses.replace(TINY.transformer, heads=2)))
  _assert_known_values(pretrained.read_params(str(tmp_path / 'm')), weights['sparsesync'], 'sparsesync')


@pytest.mark.parametrize('classes, seconds, crop', [(3, 5, 64), (21, 2, 96)])
def test_classes_and_input_size_are_read_from_the_shapes(weights, classes, seconds, crop):
  """The offset classes from off_head's rows, the clip length and crop from the positional tables' rows (the
  trunks' weights do not depend on them)."""
  wanted = TINY.replace(num_classes=classes, frames=25 * seconds, crop=crop, audio_frames=1 + seconds * 125)
  rows = {**{f'vis_pos_emb.{axis}_embed': n for axis, n in zip(('time', 'height', 'width'), wanted.visual_block_shape)},
          **{f'aud_pos_emb.{axis}_embed': n for axis, n in zip(('freq', 'time'), wanted.audio_block_shape)},
          'off_head': classes}
  rng = np.random.default_rng(1)
  sd = dict(weights['sparsesync'])
  for name, n in rows.items():
    key = f'transformer.{name}.weight'
    sd[key] = rng.standard_normal((n, sd[key].shape[1])).astype(np.float32)
  conversion = convert(SourceCheckpoint('edited.pt', 'sparsesync', sd))
  assert conversion.config == wanted and (conversion.missing, conversion.unused) == ([], [])
  assert conversion.params['transformer.global_transformer.off_head.kernel'].shape == (64, classes)


@pytest.mark.parametrize('kind', list(CLASSIFIERS))
def test_each_kind_is_detected_and_round_trips_exactly(torch, weights, kind, tmp_path, capsys):
  """File → model directory → `--to-torch` file, both through the CLI: the kind is detected, only the trunks'
  classifiers are left out (reported as unused, and nothing else), the config is the tiny size (the heads from the
  named size whose head has these shapes), and the export has every other key with its dtype (int64 counters),
  shape and value, in the kind's own layout."""
  sd = weights[kind]
  path = _checkpoint(kind, sd, tmp_path / f'{kind}.pt')
  assert read_source(path).kind == kind
  status, out, _ = run_cli(capsys, '--src', path, '--dst', str(tmp_path / 'm'))
  assert status == 0
  report = json.loads(out)
  assert (report['target'], report['missing'], report['unused']) == (kind, [], sorted(CLASSIFIERS[kind]))
  target, cfg = pretrained.read_config(str(tmp_path / 'm'))
  assert target == kind
  if kind == 'sparsesync':
    assert cfg == TINY
  else:  # a trunk tells only its own width
    assert (cfg.s3d_width_divisor, cfg.resnet_width) == {'s3d': (8, 64), 'resnet_audio': (1, 8)}[kind]
  _assert_known_values(pretrained.read_params(str(tmp_path / 'm')), sd, kind)

  status, _, _ = run_cli(capsys, '--src', str(tmp_path / 'm'), '--dst', str(tmp_path / 'back.pt'), '--to-torch')
  assert status == 0
  exported = torch.load(tmp_path / 'back.pt', weights_only=True)
  if kind != 's3d':
    assert exported['model_type'] == {'sparsesync': 'AVSyncModel', 'resnet_audio': 'ResNetAudio'}[kind]
    exported = exported['model']
  expected = {k: v for k, v in sd.items() if k not in CLASSIFIERS[kind]}
  assert set(exported) == set(expected)
  for key, value in expected.items():
    got = exported[key].numpy()
    assert (got.dtype, got.shape) == (value.dtype, value.shape), key
    np.testing.assert_array_equal(got, value, err_msg=key)
  assert {str(exported[k].dtype) for k in expected if k.endswith('num_batches_tracked')} == {'torch.int64'}


def test_the_full_size_layout_round_trips_exactly():
  """The published size's every state-dict entry (the parity manifest, made by the original code): converted
  with no gap to the full config, and back to the same keys, dtypes, shapes and values."""
  manifest = json.loads(require_fixture(SPARSESYNC_CASE / 'manifest.json', 'sparsesync_full manifest').read_text())
  sd = _make_weights_module(SPARSESYNC_CASE).state_dict_arrays(manifest, 7)
  conversion = convert(SourceCheckpoint('full.pt', 'sparsesync', sd))
  assert conversion.config == config_for_size('sparsesync', 'full')
  assert (conversion.missing, conversion.unused) == ([], [])
  back = to_original_state_dict('sparsesync', conversion.config, conversion.params)
  assert set(back) == {entry[0] for entry in manifest}
  for key, value in sd.items():
    assert (back[key].dtype, back[key].shape) == (value.dtype, value.shape), key
    np.testing.assert_array_equal(back[key], value, err_msg=key)


# ---- bad inputs ---------------------------------------------------------------------------------------------------

def test_the_two_systems_do_not_mix(weights, tmp_path, capsys):
  """A Synchformer checkpoint into a SparseSync model, and the reverse: refused by the CLI with the kinds named,
  and no destination written."""
  sync = str(require_fixture(CASES / 'sync_tiny' / 'checkpoint.pt', 'sync_tiny parity checkpoint'))
  sparsesync = _checkpoint('sparsesync', weights['sparsesync'], tmp_path / 'sparsesync.pt')
  for src, target, message in (
      (sync, 'sparsesync', "a Synchformer checkpoint (sync) cannot become a SparseSync 'sparsesync' model"),
      (sparsesync, 'sync', "a SparseSync checkpoint (sparsesync) cannot become a Synchformer 'sync' model")):
    status, _, err = run_cli(capsys, '--src', src, '--dst', str(tmp_path / 'm'), '--target', target)
    assert status == 1 and err.startswith(f'error: {src}: ') and message in err, err
    assert not (tmp_path / 'm').exists()


def _missing_and_extra(sd):
  del sd['afeat_extractor.layer3.0.downsample.1.running_mean']
  sd['transformer.a_selector.extra.weight'] = np.zeros((3,), np.float32)


def _short_running_var(sd):
  sd['vfeat_extractor.base.5.branch1.1.bn_t.running_var'] = np.ones((3,), np.float32)


def _five_classes(sd):
  sd['transformer.off_head.weight'] = np.zeros((5, 64), np.float32)


@pytest.mark.parametrize('edit, message', [
    (_missing_and_extra, r'1 target parameters have no source key: afeat_extractor\.layer3\.0\.downsample\.1\.mean; '
                         r'1 source keys are not used: transformer\.a_selector\.extra\.weight'),
    (_short_running_var, r'vfeat_extractor\.base\.5\.branch1\.1\.bn_t\.running_var \(3,\) → .* needs \(16,\)'),
    (_five_classes, r'num_classes: expected one of \(21, 3\), got 5 '
                    r'\(read from transformer\.off_head\.weight \(5, 64\)\)'),
], ids=['missing-and-extra-key', 'running-var-shape', 'five-classes'])
def test_bad_checkpoints_name_the_key_and_leave_nothing(weights, edit, message, tmp_path):
  """A key missing and one too many (both listed), a BatchNorm statistic of the wrong shape (the key and both
  shapes), an offset head of 5 classes (the key it was read from): a CheckpointError, and no destination."""
  sd = dict(weights['sparsesync'])
  edit(sd)
  path = _checkpoint('sparsesync', sd, tmp_path / 'edited.pt')
  with pytest.raises(CheckpointError, match=rf'edited\.pt.*{message}'):
    convert_checkpoint(path, str(tmp_path / 'm'))
  assert not (tmp_path / 'm').exists()
