"""SparseSync's test-time data pipeline against the original's outputs on real clips
(shared/parity/sparsesync_data_cases; tolerances from its README).

Every case folder found at run time gives one test per check: the clip named in case.json is decoded with
the project's windowed decoder at the case's fixed (offset, v_start). `pytest -s` prints the worst errors.
"""
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from synchformer_jax.data.decode import DecodedClip, MediaFile
from synchformer_jax.data.sparsesync import (SparseSyncPlan, crop_audio, crop_frames, log_spectrogram,
                                             make_sparsesync_example, plan_sparsesync_clip,
                                             standardise_per_frequency)
from tests.conftest import SHARED_DIR, case_dirs, require_fixture

SAMPLES_DIR = SHARED_DIR / 'samples'
CASES_DIR = Path(os.environ.get('SYNCHFORMER_SPARSESYNC_DATA_PARITY_DIR',
                                SHARED_DIR / 'parity' / 'sparsesync_data_cases'))
# An empty or missing folder still gives one test, so that missing fixtures fail in CI.
CASES = [pytest.param(case, id=case.name) for case in case_dirs(CASES_DIR) or [CASES_DIR]]


def _md5(array: np.ndarray) -> str:
  return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


@functools.cache
def _run_case(case_dir: Path) -> tuple[dict, dict, SparseSyncPlan, DecodedClip, dict]:
  """(case.json, outputs.npz, the plan, its decoded window, the model input): one decode per case."""
  case = json.loads(require_fixture(case_dir / 'case.json', 'SparseSync data parity case').read_text())
  clip_path = require_fixture(SAMPLES_DIR / case['video'], 'sample clip')
  with np.load(case_dir / 'outputs.npz') as npz:
    ref = dict(npz)
  media = MediaFile(clip_path)
  plan = plan_sparsesync_clip(media.info, offset_sec=case['offset_sec'], vstart_sec=case['vstart_sec'])
  clip = media.read(plan.frame_window, plan.sample_window)
  return case, ref, plan, clip, make_sparsesync_example(plan, clip)


def _report(case_dir: Path, what: str, error: float) -> None:
  print(f'{case_dir.name}: {what} {error:.3g}')


@pytest.mark.parametrize('case_dir', CASES)
def test_crop_indices_and_target(case_dir):
  case, ref, plan, _, example = _run_case(case_dir)
  np.testing.assert_array_equal(plan.video_frame_index, ref['video_frame_index'])
  assert plan.v_start_frame == case['v_start_frame']
  assert plan.audio_sample_start == int(ref['audio_sample_start']) == case['audio_sample_start']
  assert [plan.crop_top, plan.crop_left] == case['crop_top_left'] and plan.crop_size == case['crop_size']
  assert example['offset_target'] == int(ref['target']) == case['target']
  assert float(example['offset_sec']) == pytest.approx(float(ref['offset_sec']), abs=1e-6)


@pytest.mark.parametrize('case_dir', CASES)
def test_video(case_dir):
  case, ref, plan, clip, example = _run_case(case_dir)
  video_uint8 = crop_frames(plan, clip).transpose(0, 3, 1, 2)
  np.testing.assert_array_equal(video_uint8, ref['video_uint8'])
  assert [_md5(frame) for frame in video_uint8] == ref['video_crop_md5'].tolist()
  expected_md5 = ref['frame_md5'][clip.first_frame:clip.first_frame + len(clip.frames)]
  assert [_md5(frame) for frame in clip.frames] == expected_md5.tolist()

  video = example['video']
  assert video.shape == tuple(case['output_video_shape']) and video.dtype == np.float32
  first_last_err = float(np.abs(video[[0, -1]] - ref['video_first_last']).max())
  _report(case_dir, 'video_first_last max |err|', first_last_err)
  assert first_last_err <= 1e-6
  v64 = video.astype(np.float64)
  np.testing.assert_allclose([v64.mean(), v64.std()], ref['video_stats'], rtol=0, atol=1e-6)


def _audio_errors(audio: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
  error = np.abs(audio.astype(np.float64) - reference)
  return float(error.max()), float(error.mean())


@pytest.mark.parametrize('case_dir', CASES)
def test_audio_end_to_end(case_dir):
  case, ref, plan, clip, example = _run_case(case_dir)
  np.testing.assert_array_equal(crop_audio(plan, clip), ref['audio_wave'])
  audio = example['audio']
  assert audio.shape == tuple(case['output_audio_shape']) and audio.dtype == np.float32
  max_err, mean_err = _audio_errors(audio, ref['audio'])
  _report(case_dir, f'audio end to end max |err| {max_err:.3g}, mean', mean_err)
  assert max_err <= 1e-3 and mean_err <= 1e-5


@pytest.mark.parametrize('case_dir', CASES)
def test_audio_from_the_stored_waveform(case_dir):
  _, ref, _, _, _ = _run_case(case_dir)
  log_spec = log_spectrogram(ref['audio_wave'])
  logspec_err = float(np.abs(log_spec - ref['audio_logspec_raw']).max())
  max_err, mean_err = _audio_errors(standardise_per_frequency(log_spec).astype(np.float32)[None], ref['audio'])
  _report(case_dir, f'audio_logspec_raw max |err| {logspec_err:.3g}; audio max {max_err:.3g}, mean', mean_err)
  assert logspec_err <= 2e-3
  assert max_err <= 1e-3 and mean_err <= 1e-5
