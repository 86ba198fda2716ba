"""TFDS builders: records of mp4 bytes + exact metadata, bad clips reported, local and Beam builds."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from synchformer_jax.data import builders, synthetic
from synchformer_jax.data.builders import clips as clips_lib
from tests.conftest import REPO_ROOT, SHARED_DIR, require_fixture, require_optional

SAMPLES = SHARED_DIR / 'samples'
VGG_TEST_CLIP = '3qesirWAGt4_20000_30000'  # in the VGGSound test list and every offset CSV
VGG_VALID_CLIP = 'ZYc410CE4Rg_0_10000'
LRS3_CLIP = 'pretrain/C8zY0oAdQrs/00018'
TINY = synthetic.SyntheticSpec(duration_sec=9.0, height=64, width=64)
TINY_OK = builders.ClipRequirements(min_side=64)


@pytest.fixture(scope='module')
def samples() -> Path:
  return require_fixture(SAMPLES, 'sample clips and metadata (shared/samples)')


def _link(link: Path, target: Path) -> Path:
  link.parent.mkdir(parents=True, exist_ok=True)
  link.symlink_to(target)
  return link


def _records(builder, split: str) -> dict[str, dict]:
  source = builder.as_data_source(split=split)
  return {r['id'].decode(): r for r in (source[i] for i in range(len(source)))}


def _report(builder) -> dict:
  return json.loads((Path(builder.data_path) / builders.REPORT_NAME).read_text())


def _video_only_mp4(path: Path):
  frames = synthetic.render_clip(synthetic.SyntheticSpec(duration_sec=10.0, height=224, width=224), 0).frames
  with av.open(str(path), 'w') as container:
    stream = container.add_stream('libx264', rate=25)
    stream.height, stream.width, stream.pix_fmt = 224, 224, 'yuv420p'
    stream.options = {'preset': 'ultrafast'}
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())


def test_lrs3_record_holds_the_file_and_exact_csv_offsets(tmp_path, samples):
  clip = samples / 'lrs3_C8zY0oAdQrs_00018.mp4'
  videos = tmp_path / 'videos'
  _link(videos / f'{LRS3_CLIP}.mp4', clip)
  builder = builders.build(
      'lrs3_h264', data_dir=tmp_path / 'out', manual_dir=videos, metadata_dir=samples / 'metadata', num_workers=0
  )
  records = _records(builder, 'test')
  assert list(records) == [LRS3_CLIP]
  record = records[LRS3_CLIP]
  assert record['video'] == clip.read_bytes()
  # The CSV row is `pretrain/C8zY0oAdQrs/00018,-0.8,3.2`: float64, bit-exact (int(3.2 * 25) must stay 80).
  assert float(record['offset_sec']) == -0.8 and float(record['vstart_sec']) == 3.2
  assert (record['num_frames'], record['audio_channels'], record['width'], record['height']) == (393, 2, 454, 256)
  assert float(record['duration_sec']) == 15.72 and float(record['video_fps']) == 25.0
  report = _report(builder)['splits']['test']
  assert report['listed'] == 5966 and report['written'] == 1
  assert report['excluded_by_kind'] == {'missing file': 5965}


def test_vggsound_labels_splits_and_offsets(tmp_path, samples):
  metadata = tmp_path / 'metadata'
  _link(metadata / 'vggsound_test.txt', samples / 'metadata' / 'vggsound_test.txt')
  _link(metadata / 'fixed_offsets', samples / 'metadata' / 'fixed_offsets')
  (metadata / 'vggsound_valid.txt').write_text(f'{VGG_VALID_CLIP}\n')
  (metadata / 'vggsound.csv').write_text(
      '3qesirWAGt4,20,"hammering nails",test\nZYc410CE4Rg,0,dog barking,train\n---g-f_I2yQ,1,airplane,test\n'
  )
  filters = metadata / 'filtered_examples_vggsound'
  filters.mkdir()
  (filters / 'broken.txt').write_text('---g-f_I2yQ_1000_11000\n')
  videos = tmp_path / 'videos'
  for clip in (VGG_TEST_CLIP, VGG_VALID_CLIP):
    _link(videos / f'{clip}.mp4', samples / f'{clip}.mp4')
  builder = builders.build('vggsound', data_dir=tmp_path / 'out', manual_dir=videos, metadata_dir=metadata, num_workers=0)

  test = _records(builder, 'test')[VGG_TEST_CLIP]
  classes = ['airplane', 'dog barking', 'hammering nails']  # sorted names in vggsound.csv
  assert (test['label'], test['label_name']) == (2, b'hammering nails')
  assert (float(test['offset_sec']), float(test['vstart_sec'])) == (1.4, 0.88)
  valid = _records(builder, 'valid')[VGG_VALID_CLIP]
  assert (valid['label'], classes[valid['label']]) == (1, 'dog barking')
  assert math.isnan(valid['offset_sec']) and math.isnan(valid['vstart_sec']), 'no valid offsets CSV'
  report = _report(builder)['splits']
  assert report['test']['excluded']['---g-f_I2yQ_1000_11000'] == 'in filter list broken.txt'
  assert report['test']['excluded_by_kind'] == {'not in vggsound.csv': 14509, 'in filter list broken.txt': 1}
  assert report['valid'] == {'listed': 1, 'written': 1, 'excluded_by_kind': {}, 'excluded': {}}


def test_vggsound_sparse_clean_test_split(tmp_path, samples):
  shared_metadata = samples / 'metadata'
  metadata = tmp_path / 'metadata'
  for name in ('vggsound_test.txt', 'picked_sparse_classes.csv', 'vggsound_sparse_clean.csv', 'vggsound_sparse_clean_fixed_offsets.csv'):
    _link(metadata / name, shared_metadata / name)
  # 01j_x89dowI at 481 s failed manual inspection (is_sync 0); `airplane` is not a sparse class.
  (metadata / 'vggsound.csv').write_text(
      '3qesirWAGt4,20,hammering nails,test\n01j_x89dowI,481,dog barking,test\n---g-f_I2yQ,1,airplane,test\n'
  )
  videos = tmp_path / 'videos'
  _link(videos / f'{VGG_TEST_CLIP}.mp4', samples / f'{VGG_TEST_CLIP}.mp4')
  builder = builders.build(
      'vggsound_sparse', data_dir=tmp_path / 'out', manual_dir=videos, metadata_dir=metadata, num_workers=0
  )
  record = _records(builder, 'test')[VGG_TEST_CLIP]
  assert (record['label'], record['label_name']) == (2, b'hammering nails')  # 0-11, alphabetical
  # The accepted annotation (vstart 2.8, offset 1.4), not the generic VGGSound CSV's (0.88, 1.4).
  assert (float(record['offset_sec']), float(record['vstart_sec'])) == (1.4, 2.8)
  excluded = _report(builder)['splits']['test']['excluded']
  assert excluded.pop('01j_x89dowI_481000_491000') == 'failed manual inspection'
  assert '---g-f_I2yQ_1000_11000' not in excluded, 'clips of other classes are not part of the dataset'
  assert set(excluded.values()) == {'not in vggsound.csv'}


def test_audioset_keys_labels_and_offsets(tmp_path, samples):
  metadata = tmp_path / 'metadata'
  _link(metadata / 'fixed_offsets', samples / 'metadata' / 'fixed_offsets')
  (metadata / 'audioset.csv').write_text(
      'eval/3qesirWAGt4, 20.000, 30.000, "0,5", eval\n'
      'eval/--4gqARaEJE, 0.000, 10.000, "3", eval\n'
      'balanced/ZYc410CE4Rg, 0.000, 10.000, "7", balanced\n'
  )
  (metadata / 'filtered_examples_audioset').mkdir()
  (metadata / 'filtered_examples_audioset' / 'less_than_9s.txt').write_text('eval_segments/--4gqARaEJE_0_10000\n')
  videos = tmp_path / 'videos'
  _link(videos / 'eval_segments' / f'{VGG_TEST_CLIP}.mp4', samples / f'{VGG_TEST_CLIP}.mp4')
  _link(videos / 'balanced_train_segments' / f'{VGG_VALID_CLIP}.mp4', samples / f'{VGG_VALID_CLIP}.mp4')
  builder = builders.build('audioset', data_dir=tmp_path / 'out', manual_dir=videos, metadata_dir=metadata, num_workers=0)
  test = _records(builder, 'test')[f'eval/{VGG_TEST_CLIP}']
  assert test['labels'].tolist() == [0, 5]
  assert (float(test['offset_sec']), float(test['vstart_sec'])) == (-0.2, 3.08)
  valid = _records(builder, 'valid')[f'balanced/{VGG_VALID_CLIP}']
  assert valid['labels'].tolist() == [7] and math.isnan(valid['offset_sec'])
  assert _report(builder)['splits']['test']['excluded'] == {'eval/--4gqARaEJE_0_10000': 'in filter list less_than_9s.txt'}


@pytest.fixture(scope='module')
def bad_clips(tmp_path_factory, samples) -> tuple[Path, Path, dict[str, str]]:
  """An LRS3-style folder with one good clip and one of each kind of bad clip."""
  root = tmp_path_factory.mktemp('bad_clips')
  videos = root / 'videos' / 'pretrain'
  videos.mkdir(parents=True)
  good = (samples / 'lrs3_C8zY0oAdQrs_00018.mp4').read_bytes()
  _link(videos / 'good.mp4', samples / 'lrs3_C8zY0oAdQrs_00018.mp4')
  (videos / 'corrupt.mp4').write_bytes(np.random.default_rng(0).bytes(50_000))
  (videos / 'truncated.mp4').write_bytes(good[: len(good) * 6 // 10])
  _video_only_mp4(videos / 'no_audio.mp4')
  short = synthetic.SyntheticSpec(duration_sec=3.0, height=224, width=224)
  (videos / 'short.mp4').write_bytes(synthetic.generate_clip(short, 0)[0])
  clip = synthetic.render_clip(synthetic.SyntheticSpec(duration_sec=1.0, height=224, width=224), 0)
  (videos / 'fps30.mp4').write_bytes(synthetic.encode_mp4(clip.frames, clip.audio, fps=30, audio_rate=16000))
  small = synthetic.SyntheticSpec(duration_sec=1.0, height=128, width=128)
  (videos / 'small.mp4').write_bytes(synthetic.generate_clip(small, 0)[0])
  expected = {
      'pretrain/corrupt': 'unreadable container',
      'pretrain/truncated': 'unreadable container',  # moov atom at the end: cut off
      'pretrain/no_audio': 'no audio stream',
      'pretrain/short': 'too short',
      'pretrain/fps30': 'wrong frame rate',
      'pretrain/small': 'frame too small',
      'pretrain/absent': 'missing file',
  }
  metadata = root / 'metadata'
  metadata.mkdir()
  (metadata / 'lrs3_test.txt').write_text('\n'.join(['pretrain/good', *expected]) + '\n')
  return root / 'videos', metadata, expected


def test_bad_clips_are_excluded_with_their_reason(tmp_path, bad_clips):
  videos, metadata, expected = bad_clips
  builder = builders.build('lrs3_h264', data_dir=tmp_path, manual_dir=videos, metadata_dir=metadata, num_workers=2)
  assert list(_records(builder, 'test')) == ['pretrain/good']
  report = _report(builder)['splits']['test']
  assert {k: v.split(':')[0] for k, v in report['excluded'].items()} == expected
  assert report['written'] == 1 and report['listed'] == 8


def test_probe_detects_truncation_when_the_index_comes_first(tmp_path):
  clip = synthetic.render_clip(synthetic.SyntheticSpec(duration_sec=2.0, height=64, width=64), 0)
  path = tmp_path / 'faststart.mp4'
  with av.open(str(path), 'w', options={'movflags': 'faststart'}) as container:
    video = container.add_stream('libx264', rate=25)
    video.height, video.width, video.pix_fmt = 64, 64, 'yuv420p'
    sound = container.add_stream('aac', rate=16000, layout='mono')
    for frame in clip.frames:
      container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(video.encode())
    for start in range(0, clip.audio.size, 1024):
      chunk = av.AudioFrame.from_ndarray(clip.audio[None, start : start + 1024].copy(), format='fltp', layout='mono')
      chunk.sample_rate, chunk.pts = 16000, start
      container.mux(sound.encode(chunk))
    container.mux(sound.encode())
  data = path.read_bytes()
  assert builders.probe_clip(data).num_frames == 50
  with pytest.raises(clips_lib.ClipError, match='truncated'):
    builders.probe_clip(data[: len(data) * 7 // 10])


def test_synthetic_build_is_deterministic_in_any_number_of_processes(tmp_path):
  kwargs = dict(spec=TINY, split_sizes={'train': 3, 'valid': 2, 'test': 2}, requirements=TINY_OK, seed=5)
  pooled = builders.build('synthetic_sync', data_dir=tmp_path / 'pool', num_workers=2, **kwargs)
  serial = builders.build('synthetic_sync', data_dir=tmp_path / 'serial', num_workers=0, **kwargs)
  for split, size in (('train', 3), ('valid', 2), ('test', 2)):
    a, b = _records(pooled, split), _records(serial, split)
    assert sorted(a) == [f'{split}/{i:07d}' for i in range(size)]
    for clip_id, record in a.items():
      assert record['video'] == b[clip_id]['video']
      assert record['seed'].tolist() == [5, ('train', 'valid', 'test').index(split), int(clip_id[-7:])]
      assert record['label_name'].decode() == synthetic.EVENT_KINDS[record['label']]
      if split == 'train':
        assert math.isnan(record['offset_sec'])
      else:
        assert float(record['offset_sec']) in np.round(np.linspace(-2, 2, 21), 2)
        assert float(record['offset_sec']) == float(b[clip_id]['offset_sec'])
        assert float(record['vstart_sec']) == float(b[clip_id]['vstart_sec'])
  report = json.loads((Path(pooled.data_path) / builders.REPORT_NAME).read_text())
  assert report['parameters']['spec']['height'] == 64
  assert all(s['written'] == s['listed'] for s in report['splits'].values())


def test_synthetic_num_clips_caps_every_split(tmp_path):
  builder = builders.build(
      'synthetic_sync', data_dir=tmp_path, spec=TINY, requirements=TINY_OK, num_clips=1, num_workers=0
  )
  assert {split: len(builder.as_data_source(split=split)) for split in ('train', 'valid', 'test')} == {
      'train': 1, 'valid': 1, 'test': 1
  }


def test_synthetic_rejects_clips_too_short_for_fixed_offsets():
  with pytest.raises(ValueError, match='at least 9'):
    builders.SyntheticSync(spec=synthetic.SyntheticSpec(duration_sec=5.0))


def test_build_script_synthetic(tmp_path):
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'build_dataset.py'), '--dataset', 'synthetic_sync',
       '--data_dir', str(tmp_path), '--num_clips', '1', '--num_workers', '0'],
      capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = builders.read_build_report(tmp_path, 'synthetic_sync')
  assert {s: v['written'] for s, v in report['splits'].items()} == {'train': 1, 'valid': 1, 'test': 1}
  assert 'written' in result.stdout


@pytest.mark.slow
def test_beam_direct_runner_builds_the_same_records_and_report(tmp_path, bad_clips):
  beam = require_optional('apache_beam', 'beam')
  videos, metadata, _ = bad_clips
  options = beam.options.pipeline_options.PipelineOptions(['--runner=DirectRunner'])
  kwargs = dict(manual_dir=videos, metadata_dir=metadata)
  on_beam = builders.build('lrs3_h264', data_dir=tmp_path / 'beam', beam_options=options, **kwargs)
  local = builders.build('lrs3_h264', data_dir=tmp_path / 'local', num_workers=0, **kwargs)
  assert _records(on_beam, 'test').keys() == _records(local, 'test').keys() == {'pretrain/good'}
  assert _report(on_beam)['splits'] == _report(local)['splits']
  assert not any(name.startswith('clips-') for name in os.listdir(on_beam.data_path)), 'manifests removed'

  synthetic_kwargs = dict(spec=TINY, split_sizes={'train': 2, 'test': 2}, requirements=TINY_OK)
  on_beam = builders.build('synthetic_sync', data_dir=tmp_path / 'beam', beam_options=options, **synthetic_kwargs)
  local = builders.build('synthetic_sync', data_dir=tmp_path / 'local', num_workers=0, **synthetic_kwargs)
  for split in ('train', 'test'):
    a, b = _records(on_beam, split), _records(local, split)
    assert a.keys() == b.keys() and all(a[k]['video'] == b[k]['video'] for k in a)
