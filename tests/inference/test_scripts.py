"""The inference scripts end to end (subprocesses, tiny untrained models): output formats, every mode, any
container / rate / size, batch CSVs that record failures, one-line errors for bad inputs, evaluation."""
import csv
import json

import matplotlib.image
import numpy as np
import pytest

from synchformer_jax import inference
from synchformer_jax.data import builders, synthetic
from tests.inference.conftest import run_script


def _ok(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  return proc


def _png(path, min_width: int = 300) -> np.ndarray:
  image = matplotlib.image.imread(str(path))
  assert image.ndim == 3 and image.shape[1] >= min_width and image[..., :3].std() > 0.05  # not blank
  return image


def test_predict_one_window_as_example_py(tiny_sync_dir, tiny_sync, vgg_clip, script_env, tmp_path):
  proc = _ok(run_script('predict.py', '--checkpoint', tiny_sync_dir, '--video', vgg_clip, '--offset_sec', 1.6,
                        '--top_k', 3, '--json', env=script_env))
  result = json.loads(proc.stdout)
  assert result['mode'] == 'single' and result['applied_offset_sec'] == 1.6 and len(result['top_k']) == 3
  expected = inference.predict_offsets(tiny_sync, vgg_clip, offset_sec=1.6)
  assert [t['class'] for t in result['top_k']] == [t['class'] for t in expected.top_k(3)]
  np.testing.assert_allclose([t['prob'] for t in result['top_k']], [t['prob'] for t in expected.top_k(3)], atol=1e-6)


def test_sliding_windows_over_a_long_file_are_automatic_and_plotted(tiny_sync_dir, tiny_sync, lrs3_clip, script_env,
                                                                   tmp_path):
  plot = tmp_path / 'curve.png'
  proc = _ok(run_script('predict.py', '--checkpoint', tiny_sync_dir, '--video', lrs3_clip, '--plot', plot,
                        '--hop_sec', 2, '--json', env=script_env))
  result = json.loads(proc.stdout)
  assert result['mode'] == 'sliding'  # 15.7 s: longer than the 10 s the original reads
  starts = [w['start_sec'] for w in result['windows']]
  np.testing.assert_allclose(starts, 1.92 * np.arange(len(starts)))
  assert starts[-1] + result['window_sec'] <= 15.72 < starts[-1] + 1.92 + result['window_sec']
  curve = inference.offset_curve(tiny_sync, lrs3_clip, hop_sec=2)  # the consensus: the windows' mean distribution
  expected = curve.consensus.top_k(5)
  assert [t['class'] for t in result['consensus']['top_k']] == [t['class'] for t in expected]
  np.testing.assert_allclose([t['prob'] for t in result['consensus']['top_k']], [t['prob'] for t in expected], atol=1e-6)
  _png(plot)


def test_search_scans_coarse_offsets(tiny_sync_dir, vgg_clip, script_env):
  proc = _ok(run_script('predict.py', '--checkpoint', tiny_sync_dir, '--video', vgg_clip, '--offset_sec', 3,
                        '--search_range_sec', 4, '--top_k', 2, env=script_env))
  lines = proc.stdout.splitlines()
  assert lines[0].endswith('(search)') and lines[1] == 'applied offset +3.00 s; coarse offsets searched:'
  searched = [line.split(':')[0].strip() for line in lines[2:] if ' s: offset ' in line]
  assert searched == ['-2.00 s', '+0.00 s', '+2.00 s', '+4.00 s']  # -4: the audio would start 7 s late
  best = float(lines[2 + len(searched)].split('coarse ')[1].split(' s)')[0])
  top = [line for line in lines if line.startswith('  p=')]
  assert len(top) == 2
  for line in top:  # the best candidate's offsets are its coarse offset plus a grid residual
    offset, index = float(line.split('offset ')[1].split(' s')[0]), int(line.split('class ')[1].rstrip(')'))
    assert abs(offset - (best - 2 + 0.2 * index)) < 1e-6


def test_batch_accepts_any_format_and_records_failures(tiny_sync_dir, tiny_sync, media_dir, vgg_clip, script_env,
                                                      tmp_path):
  listing = tmp_path / 'list.csv'
  good = ['fps30_44k_stereo.mkv', 'small_320x240.mov', 'synthetic.mp4']
  bad = {'not_a_video.mp4': 'not a readable media file', 'truncated.mp4': 'not a readable media file',
         'no_audio.mp4': 'has no audio stream', 'too_short.mp4': 'too short', 'missing.mp4': 'No such file'}
  with open(listing, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'offset_sec', 'v_start_sec'])
    for name in good + list(bad):
      writer.writerow([media_dir['synthetic.mp4'].parent / name, 0.4, 0.0])
    writer.writerow([vgg_clip, 'soon', 0])
  out = tmp_path / 'results.csv'
  proc = run_script('predict.py', '--checkpoint', tiny_sync_dir, '--csv', listing, '--out', out, env=script_env)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr  # some files failed: the batch says so
  assert 'predicting' in proc.stderr and '100%' in proc.stderr  # the progress bar
  rows = {row['path'].rsplit('/', 1)[-1]: row for row in csv.DictReader(open(out))}
  assert len(rows) == len(good) + len(bad) + 1
  for name in good:
    assert rows[name]['error'] == '' and rows[name]['mode'] == 'single', rows[name]
    expected = inference.predict_offsets(tiny_sync, rows[name]['path'], offset_sec=0.4)
    assert float(rows[name]['offset_sec']) == 0.4 and float(rows[name]['pred_offset_sec']) == round(expected.offset_sec, 4)
    assert len(json.loads(rows[name]['top_k'])) == 5
  for name, message in bad.items():
    assert message in rows[name]['error'] and rows[name]['pred_offset_sec'] == '', rows[name]
  assert 'offset_sec in the CSV is not a number' in rows[vgg_clip.name]['error']
  assert f'{len(rows)} files, {len(bad) + 1} failed' in proc.stdout
  assert f'error: {len(bad) + 1} of {len(rows)} files failed' in proc.stderr

  directory = media_dir['synthetic.mp4'].parent
  out = tmp_path / 'dir_results.csv'
  proc = run_script('predict.py', '--checkpoint', tiny_sync_dir, '--video_dir', directory, '--out', out,
                    '--no-sliding', env=script_env)
  rows = list(csv.DictReader(open(out)))
  assert [r['path'].rsplit('/', 1)[-1] for r in rows] == sorted(p.name for p in directory.iterdir())
  failed = sum(bool(r['error']) for r in rows)
  assert failed and proc.returncode == 1 and f'error: {failed} of {len(rows)} files failed' in proc.stderr

  good_only = tmp_path / 'good.csv'
  good_only.write_text('path\n' + ''.join(f'{directory / name}\n' for name in good))
  _ok(run_script('predict.py', '--checkpoint', tiny_sync_dir, '--csv', good_only, '--out', tmp_path / 'g.csv',
                 '--no-sliding', env=script_env))  # no failure: exit 0


@pytest.mark.parametrize('name, message', [
    ('not_a_video.mp4', 'not a readable media file'),
    ('no_audio.mp4', 'has no audio stream; expected a video with an audio track'),
    ('too_short.mp4', 'too short'),
    ('truncated.mp4', 'not a readable media file'),
])
def test_bad_input_is_one_line_and_a_failing_exit(tiny_sync_dir, media_dir, script_env, name, message):
  proc = run_script('predict.py', '--checkpoint', tiny_sync_dir, '--video', media_dir[name], env=script_env)
  assert proc.returncode == 1 and proc.stdout == ''
  assert proc.stderr.startswith('error: ') and proc.stderr.count('\n') == 1 and message in proc.stderr, proc.stderr


@pytest.mark.slow
def test_evidence_attribution_figures(tiny_sync_dir, vgg_clip, media_dir, script_env, tmp_path):
  figure = tmp_path / 'explained.png'
  proc = _ok(run_script('predict.py', '--checkpoint', tiny_sync_dir, '--video', vgg_clip, '--offset_sec', 1.6,
                        '--v_start_sec', 0.5, '--top_k', 2, '--explain', figure, env=script_env))
  lines = proc.stdout.splitlines()
  assert lines[1] == 'applied offset +1.60 s, video window from 0.50 s'
  assert len([line for line in lines if line.startswith('  p=')]) == 2
  _png(figure, min_width=800)

  figure = tmp_path / 'evidence.png'
  proc = _ok(run_script('attribute.py', '--checkpoint', tiny_sync_dir, '--video', media_dir['synthetic.mp4'],
                        '--offset_sec', -0.6, '--v_start_sec', 1.0, '--explain_offset_sec', -0.6, '--out', figure,
                        env=script_env))
  assert 'explained -0.60 s (applied -0.60 s)' in proc.stdout
  _png(figure, min_width=800)
  proc = run_script('attribute.py', '--checkpoint', tmp_path / 'nowhere', '--video', media_dir['synthetic.mp4'],
                    '--out', figure, env=script_env)
  assert proc.returncode == 1 and 'not a synchformer_jax model directory' in proc.stderr


@pytest.fixture(scope='module')
def eval_data(tmp_path_factory):
  """A 4-clip synthetic test split (64-px, 9-s clips with fixed offsets)."""
  data_dir = tmp_path_factory.mktemp('tfds')
  builders.build('synthetic_sync', data_dir=data_dir, num_workers=0, split_sizes={'test': 4},
                 spec=synthetic.SyntheticSpec(duration_sec=9.0, height=64, width=64),
                 requirements=builders.ClipRequirements(min_side=64))
  return data_dir


def test_evaluate_offsets_over_random_passes(tiny_sync_dir, eval_data, script_env, tmp_path):
  out = tmp_path / 'eval'
  proc = _ok(run_script('evaluate.py', '--checkpoint', tiny_sync_dir, '--dataset', 'synthetic_sync', '--split', 'test',
                        '--data_dir', eval_data, '--iter_times', 2, '--random_offsets', '--batch_size', 3,
                        '--out', out, env=script_env))
  report = json.loads((out / 'results.json').read_text())
  assert report['num_predictions'] == 8 and report['iter_times'] == 2
  assert set(report['metrics']) >= {'accuracy_1', 'accuracy_1_tol1', 'accuracy_5'}
  assert sum(row['count'] for row in report['per_class']) == 8 == np.sum(report['confusion_matrix'])
  assert 'acc@1±1' in proc.stdout and 'accuracy_1_tol1' in proc.stdout
  _png(out / 'confusion_matrix.png')


@pytest.mark.slow
def test_evaluate_synchronizability(tiny_synchability_dir, tiny_sync_dir, eval_data, script_env, tmp_path):
  out = tmp_path / 'eval'
  _ok(run_script('evaluate.py', '--checkpoint', tiny_synchability_dir, '--dataset', 'synthetic_sync',
                 '--split', 'test', '--data_dir', eval_data, '--iter_times', 3, '--out', out, env=script_env))
  report = json.loads((out / 'results.json').read_text())
  assert report['kind'] == 'synchability' and report['num_predictions'] == 12
  assert report['roc']['fpr'][-1] == report['roc']['tpr'][-1] == 1
  # The rank statistic equals the area under the curve drawn from the same scores.
  np.testing.assert_allclose(report['metrics']['roc_auc'], np.trapezoid(report['roc']['tpr'], report['roc']['fpr']))
  _png(out / 'roc.png')
  proc = run_script('evaluate.py', '--checkpoint', tiny_sync_dir, '--dataset', 'synthetic_sync', '--split', 'test',
                    '--data_dir', eval_data, '--synchronizability', env=script_env)
  assert proc.returncode == 1 and "needs a synchronizability checkpoint, this one is 'sync'" in proc.stderr
