"""SparseSync through the inference stack, on tiny untrained models (21 and 3 classes): the scripts' main() (in
this process, so that the few compiled programs are shared: every call takes one window, `--chunk_size 1`) and
the Python API they stand on. The model directory
is recognised as SparseSync; results are on its grid; a bad file is one line naming it, and leaves nothing behind."""
import csv
import importlib.util
import json
import shutil

import matplotlib.image
import numpy as np
import pytest

import synchformer_jax
from synchformer_jax import inference
from synchformer_jax.inference import attribution, cli, kinds
from tests.conftest import REPO_ROOT, require_fixture

GRID_21 = np.round(np.linspace(-2, 2, 21), 4)
GRID_3 = [-1.0, 0.0, 1.0]
SECOND_CLIP = 'ZYc410CE4Rg_0_10000.mp4'  # 10 s, 340x256


def _script(name: str):
  spec = importlib.util.spec_from_file_location(f'scripts_{name}', REPO_ROOT / 'scripts' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


SCRIPTS = {name: _script(name) for name in ('predict', 'evaluate', 'attribute')}
_LOADED = {}
_load = synchformer_jax.load


def load_once(directory, *, dtype=None):
  """Each model directory is loaded once (a load compiles the dropout-RNG initialiser), by the tests and the
  scripts alike, so that the scripts' calls share one module structure and its compiled programs."""
  key = (str(directory), dtype)
  if key not in _LOADED:
    _LOADED[key] = _load(str(directory), dtype=dtype)
  return _LOADED[key]


@pytest.fixture(autouse=True)
def scripts_load_once(monkeypatch):
  monkeypatch.setattr(synchformer_jax, 'load', load_once)


def run_main(capsys, script: str, *args) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of a script's main() run as its `__main__` runs it (`cli.run`)."""
  with pytest.raises(SystemExit) as exit_:
    cli.run(lambda: SCRIPTS[script].main([str(a) for a in args]))
  captured = capsys.readouterr()
  return exit_.value.code, captured.out, captured.err


def _ok(result):
  status, out, err = result
  assert status == 0, err[-3000:]
  return out, err


def _one_line_error(result, *fragments):
  status, out, err = result
  assert status == 1 and out == '' and err.startswith('error: ') and err.count('\n') == 1, err
  for fragment in fragments:
    assert fragment in err, err


def _png(path) -> None:
  image = matplotlib.image.imread(str(path))
  assert image.ndim == 3 and image.shape[1] >= 800 and image[..., :3].std() > 0.05  # not blank


@pytest.fixture(scope='module')
def ss21(tiny_sparsesync_dirs):
  return tiny_sparsesync_dirs[21]


@pytest.fixture(scope='module')
def ss3(tiny_sparsesync_dirs):
  return tiny_sparsesync_dirs[3]


@pytest.fixture(scope='module')
def model21(ss21):
  return load_once(ss21)


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory, vgg_clip, samples):
  """A folder of two good clips and two corrupt files."""
  folder = tmp_path_factory.mktemp('sparsesync_batch')
  shutil.copy(vgg_clip, folder / 'a_good.mp4')
  shutil.copy(require_fixture(samples / SECOND_CLIP, 'sample clip'), folder / 'b_good.mp4')
  (folder / 'c_truncated.mp4').write_bytes(vgg_clip.read_bytes()[:20_000])
  (folder / 'd_not_a_video.mp4').write_text('this is not a video\n')
  return folder


def test_the_model_directory_is_recognised_and_predicts_one_window_on_its_grid(ss21, model21, vgg_clip, tmp_path,
                                                                                capsys):
  assert kinds.is_sparsesync(model21) and model21.cfg.num_classes == 21
  figure = tmp_path / 'explained.png'
  out, _ = _ok(run_main(capsys, 'predict', '--checkpoint', ss21, '--video', vgg_clip, '--offset_sec', 1.6,
                        '--v_start_sec', 1.0, '--top_k', 3, '--json', '--explain', figure))
  result = json.loads(out)
  assert result['mode'] == 'single' and result['applied_offset_sec'] == 1.6 and result['v_start_sec'] == 1.0
  assert len(result['top_k']) == 3 and all(t['offset_sec'] in GRID_21 for t in result['top_k'])
  expected = inference.predict_offsets(model21, vgg_clip, offset_sec=1.6, v_start_sec=1.0)
  np.testing.assert_allclose(expected.offsets_sec, GRID_21, atol=1e-6)
  assert [t['class'] for t in result['top_k']] == [t['class'] for t in expected.top_k(3)]
  assert result['offset_sec'] == round(float(GRID_21[result['class']]), 4)
  _png(figure)  # --explain draws the selectors' attention of that window


def test_selector_attention_figure(ss21, model21, vgg_clip, bad_files, tmp_path, capsys):
  figure = tmp_path / 'evidence.png'
  out, _ = _ok(run_main(capsys, 'attribute', '--checkpoint', ss21, '--video', vgg_clip, '--offset_sec', 1.6,
                        '--v_start_sec', 1.0, '--out', figure))
  assert "applied +1.60 s; the selectors' attention" in out and str(figure) in out
  _png(figure)
  a = attribution.attribute(model21, vgg_clip, offset_sec=1.6, v_start_sec=1.0)
  cfg = model21.cfg
  assert isinstance(a, attribution.SelectorAttention)
  assert a.video_selectors.shape == (cfg.num_selectors, *cfg.visual_block_shape)  # (16, 16, 2, 2): t × h × w
  assert a.audio_selectors.shape == (cfg.num_selectors, *cfg.audio_block_shape)  # (16, 9, 20): f × t
  # Every selector's weights over its stream's tokens are a distribution (layers and heads averaged).
  np.testing.assert_allclose(a.video_selectors.sum(axis=(1, 2, 3)), 1, atol=1e-5)
  np.testing.assert_allclose(a.audio_selectors.sum(axis=(1, 2)), 1, atol=1e-5)
  assert a.frames.shape == (16, cfg.crop, cfg.crop, 3) and a.frames.dtype == np.uint8
  assert a.spectrogram.shape == (257, 626) and a.spec_times[-1] == 5.0 == a.window_sec  # centred STFT frames
  assert a.video_start_sec == 1.0 and a.audio_start_sec == 2.6
  # Sowing the attention leaves the prediction as predict_offsets makes it.
  expected = inference.predict_offsets(model21, vgg_clip, offset_sec=1.6, v_start_sec=1.0)
  np.testing.assert_allclose(a.prediction.logits, expected.logits, atol=1e-5)

  _one_line_error(run_main(capsys, 'attribute', '--checkpoint', ss21, '--video', vgg_clip, '--explain_offset_sec',
                           0.4, '--out', figure), "SparseSync's evidence is its selectors' attention")
  missing = tmp_path / 'corrupt.png'
  _one_line_error(run_main(capsys, 'attribute', '--checkpoint', ss21, '--video', bad_files / 'c_truncated.mp4',
                           '--out', missing), 'c_truncated.mp4', 'not a readable media file')
  assert not missing.exists()


def test_sliding_windows_of_a_long_file(ss21, model21, lrs3_clip, tmp_path, capsys):
  plot = tmp_path / 'curve.png'
  out, _ = _ok(run_main(capsys, 'predict', '--checkpoint', ss21, '--video', lrs3_clip, '--hop_sec', 2,
                        '--chunk_size', 1, '--plot', plot, '--json'))
  result = json.loads(out)
  assert result['mode'] == 'sliding' and result['window_sec'] == 5.0  # 15.7 s: longer than 10 s
  starts = [w['start_sec'] for w in result['windows']]
  np.testing.assert_allclose(starts, 2.0 * np.arange(6))  # the 6th ends at 15 s, a 7th would end past 15.7 s
  assert all(w['offset_sec'] in GRID_21 for w in result['windows'])
  assert result['consensus']['offset_sec'] in GRID_21
  matplotlib.image.imread(str(plot))
  # A window of the curve is the one window predict_offsets reads there (the video trunk shared, the audio's own).
  curve = inference.offset_curve(model21, lrs3_clip, offset_sec=0.4, hop_sec=2, chunk_size=1)
  window = inference.predict_offsets(model21, lrs3_clip, offset_sec=0.4, v_start_sec=4.0)
  np.testing.assert_allclose(curve.logits[2], window.logits, atol=1e-4)


def test_search_beyond_the_grid(ss21, vgg_clip, capsys):
  out, _ = _ok(run_main(capsys, 'predict', '--checkpoint', ss21, '--video', vgg_clip, '--offset_sec', 3,
                        '--search_range_sec', 4, '--chunk_size', 1, '--json'))
  result = json.loads(out)
  assert result['mode'] == 'search'
  # -4: the audio would start 7 s after the video, and no 5-s window of it fits in the 10-s file.
  assert [c['coarse_offset_sec'] for c in result['candidates']] == [-2.0, 0.0, 2.0, 4.0]
  best = result['best']
  for t in best['top_k']:  # the best candidate's offsets: its coarse offset plus a class of the grid
    assert t['offset_sec'] == round(best['coarse_offset_sec'] + GRID_21[t['class']], 4)


def test_three_class_model_reports_its_own_grid(ss3, vgg_clip, capsys):
  out, err = _ok(run_main(capsys, 'predict', '--checkpoint', ss3, '--video', vgg_clip, '--offset_sec', 1.6,
                          '--json'))
  result = json.loads(out)
  assert sorted(t['offset_sec'] for t in result['top_k']) == GRID_3 and result['offset_sec'] in GRID_3
  assert 'outside the ±1-s grid' in err
  _one_line_error(run_main(capsys, 'predict', '--checkpoint', ss3, '--video', vgg_clip, '--search_range_sec', 3,
                           '--search_step_sec', 3), 'search step: expected 0 < step <= 2 s')


def test_batch_over_a_folder_records_corrupt_files(ss21, model21, bad_files, tmp_path, capsys):
  results = tmp_path / 'results.csv'
  status, out, err = run_main(capsys, 'predict', '--checkpoint', ss21, '--video_dir', bad_files, '--out', results,
                              '--offset_sec', 0.4)
  assert status == 1 and '4 files, 2 failed' in out and 'error: 2 of 4 files failed' in err
  rows = list(csv.DictReader(open(results)))
  assert [r['path'].rsplit('/', 1)[-1] for r in rows] == ['a_good.mp4', 'b_good.mp4', 'c_truncated.mp4',
                                                          'd_not_a_video.mp4']
  for row in rows[:2]:
    assert row['error'] == '' and row['mode'] == 'single' and float(row['pred_offset_sec']) in GRID_21, row
    assert all(offset in GRID_21 for offset, _ in json.loads(row['top_k']))
  expected = inference.predict_offsets(model21, rows[0]['path'], offset_sec=0.4)
  assert float(rows[0]['pred_offset_sec']) == round(expected.offset_sec, 4)
  for row in rows[2:]:
    name = row['path'].rsplit('/', 1)[-1]
    assert name in row['error'] and 'not a readable media file' in row['error'] and row['pred_offset_sec'] == ''

  plot = tmp_path / 'never.png'
  _one_line_error(run_main(capsys, 'predict', '--checkpoint', ss21, '--video', bad_files / 'd_not_a_video.mp4',
                           '--plot', plot), 'd_not_a_video.mp4', 'not a readable media file')
  assert not plot.exists()


def test_evaluate_on_a_dataset_split(ss3, synthetic_test_split, tmp_path, capsys):
  out_dir = tmp_path / 'eval'
  out, _ = _ok(run_main(capsys, 'evaluate', '--checkpoint', ss3, '--dataset', 'synthetic_sync', '--split', 'test',
                        '--data_dir', synthetic_test_split, '--iter_times', 2, '--random_offsets', '--batch_size', 1,
                        '--out', out_dir))
  report = json.loads((out_dir / 'results.json').read_text())
  assert report['kind'] == 'sparsesync' and report['num_predictions'] == 8 and report['offset_grid'] == GRID_3
  assert set(report['metrics']) >= {'accuracy_1', 'accuracy_1_tol1'}
  assert report['metrics']['accuracy_1_tol1'] == 1.0  # every class is within one of every other on a 3-class grid
  assert np.shape(report['confusion_matrix']) == (3, 3) and np.sum(report['confusion_matrix']) == 8
  assert {row['offset_sec'] for row in report['per_class']} <= set(GRID_3)
  assert 'acc@1±1' in out and 'accuracy_1_tol1' in out
  matplotlib.image.imread(str(out_dir / 'confusion_matrix.png'))
