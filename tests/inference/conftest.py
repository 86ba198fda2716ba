"""Fixtures of the inference tests: tiny models on disk (Synchformer, and SparseSync with 21 and 3 classes), sample
clips and their re-encoded variants, bad files, a small synthetic dataset split, and a runner for the scripts
(sharing one JAX compilation cache, so each script compiles once)."""
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import synchformer_jax
from synchformer_jax.data import builders, synthetic
from synchformer_jax.constants import AUDIO_RATE, VIDEO_FPS
from synchformer_jax.data.decode import decode_clip
from synchformer_jax.models import build_model, config_for_size
from tests.conftest import REPO_ROOT, SHARED_DIR, random_model_dir, require_fixture

SAMPLES = SHARED_DIR / 'samples'
VGG_CLIP = '3qesirWAGt4_20000_30000.mp4'  # 10 s, 454x256, 16 kHz mono
LRS3_CLIP = 'lrs3_C8zY0oAdQrs_00018.mp4'  # 15.7 s, stereo


@pytest.fixture(scope='session')
def samples() -> Path:
  return require_fixture(SAMPLES, 'sample clips (shared/samples)')


@pytest.fixture(scope='session')
def vgg_clip(samples) -> Path:
  return require_fixture(samples / VGG_CLIP, 'sample clip')


@pytest.fixture(scope='session')
def lrs3_clip(samples) -> Path:
  return require_fixture(samples / LRS3_CLIP, 'sample clip')


def _saved_tiny(kind: str, directory: Path) -> Path:
  synchformer_jax.save(build_model(config_for_size(kind, 'tiny')), str(directory))
  return directory


@pytest.fixture(scope='session')
def tiny_sync_dir(tmp_path_factory) -> Path:
  """An untrained tiny Stage II model (64-px frames) as a model directory."""
  return _saved_tiny('sync', tmp_path_factory.mktemp('models') / 'tiny_sync')


@pytest.fixture(scope='session')
def tiny_synchability_dir(tmp_path_factory) -> Path:
  return _saved_tiny('synchability', tmp_path_factory.mktemp('models') / 'tiny_synchability')


@pytest.fixture(scope='session')
def tiny_sync(tiny_sync_dir):
  return synchformer_jax.load(str(tiny_sync_dir))


@pytest.fixture(scope='session')
def tiny_sparsesync_dirs(tmp_path_factory) -> dict[int, Path]:
  """Untrained tiny SparseSync model directories (64-px frames), by number of classes: 21 (±2 s) and 3 (±1 s).
  Random NumPy weights (`random_model_dir`): `build_model` would run its ~700 initialisers one by one."""
  root = tmp_path_factory.mktemp('models')
  cfg = config_for_size('sparsesync', 'tiny')
  return {classes: Path(random_model_dir(root / f'tiny_sparsesync_{classes}', 'sparsesync',
                                         cfg.replace(num_classes=classes)))
          for classes in (21, 3)}


@pytest.fixture(scope='session')
def script_env(tmp_path_factory) -> dict[str, str]:
  cache = tmp_path_factory.mktemp('jax_cache')
  return {**os.environ, 'JAX_COMPILATION_CACHE_DIR': str(cache), 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'PYTHONPATH': str(REPO_ROOT)}


@pytest.fixture(scope='session')
def synthetic_test_split(tmp_path_factory) -> Path:
  """The data_dir of a `synthetic_sync` dataset with a test split of 4 small clips (9 s of 64-px video, each with a
  fixed evaluation offset)."""
  root = tmp_path_factory.mktemp('synthetic_split')
  spec = synthetic.SyntheticSpec(duration_sec=9.0, height=64, width=64)
  builders.build('synthetic_sync', data_dir=root, num_workers=0, split_sizes={'test': 4}, spec=spec,
                 requirements=builders.ClipRequirements(min_side=spec.height))
  return root


def run_script(name: str, *args, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / name), *map(str, args)], capture_output=True,
                        text=True, env=env, timeout=timeout, cwd=REPO_ROOT)


def encode_video(path: Path, frames: np.ndarray, audio: np.ndarray, *, fps: float = VIDEO_FPS,
                 audio_rate: int = AUDIO_RATE, channels: int = 1, size: tuple[int, int] | None = None) -> Path:
  """Writes 25 fps frames and 16 kHz mono audio as H.264 + AAC in the container of `path`'s extension,
  converted to `fps` (nearest frame), `audio_rate`, `channels` and `size` (width, height)."""
  with av.open(str(path), 'w') as container:
    video = container.add_stream('libx264', rate=Fraction(fps).limit_denominator(1001))
    width, height = size or (frames.shape[2], frames.shape[1])
    video.width, video.height, video.pix_fmt = width, height, 'yuv420p'
    video.options = {'preset': 'ultrafast'}
    layout = 'mono' if channels == 1 else 'stereo'
    sound = container.add_stream('aac', rate=audio_rate, layout=layout)
    n_out = int(len(frames) / VIDEO_FPS * fps)
    for k in range(n_out):
      source = frames[min(int(k * VIDEO_FPS / fps + 0.5), len(frames) - 1)]
      frame = av.VideoFrame.from_ndarray(source, format='rgb24').reformat(width=width, height=height)
      container.mux(video.encode(frame))
    container.mux(video.encode())
    mono = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None], np.float32), format='fltp', layout='mono')
    mono.sample_rate = AUDIO_RATE
    resampler = av.AudioResampler(format='fltp', layout=layout, rate=audio_rate)
    fifo = av.AudioFifo()
    for converted in [*resampler.resample(mono), *resampler.resample(None)]:
      fifo.write(converted)
    frame_size = sound.codec_context.frame_size or 1024
    while (chunk := fifo.read(frame_size, partial=True)) is not None and chunk.samples:
      container.mux(sound.encode(chunk))
    container.mux(sound.encode())
  return path


@pytest.fixture(scope='session')
def media_dir(tmp_path_factory, vgg_clip) -> dict[str, Path]:
  """Good files in other formats and bad files, by name.

  Good: the sample at 30 fps with 44.1 kHz stereo in .mkv, at 320x240 in .mov, and a synthetic clip.
  Bad: a text file named .mp4, a video without audio, a 2-s clip, a truncated mp4.
  """
  root = tmp_path_factory.mktemp('media')
  clip = decode_clip(vgg_clip)
  seconds = 7
  frames, audio = clip.frames[:seconds * VIDEO_FPS], clip.audio[:seconds * AUDIO_RATE]
  files = {
      'fps30_44k_stereo.mkv': encode_video(root / 'fps30_44k_stereo.mkv', frames, audio, fps=30, audio_rate=44100,
                                           channels=2),
      'small_320x240.mov': encode_video(root / 'small_320x240.mov', frames, audio, size=(320, 240)),
      'too_short.mp4': encode_video(root / 'too_short.mp4', frames[:2 * VIDEO_FPS], audio[:2 * AUDIO_RATE]),
  }
  data, _ = synthetic.generate_clip(synthetic.SyntheticSpec(duration_sec=8.0), seed=(7, 7))
  files['synthetic.mp4'] = root / 'synthetic.mp4'
  files['synthetic.mp4'].write_bytes(data)
  files['not_a_video.mp4'] = root / 'not_a_video.mp4'
  files['not_a_video.mp4'].write_text('this is not a video\n')
  files['truncated.mp4'] = root / 'truncated.mp4'
  files['truncated.mp4'].write_bytes(vgg_clip.read_bytes()[:20_000])
  no_audio = root / 'no_audio.mp4'
  with av.open(str(no_audio), 'w') as container:
    stream = container.add_stream('libx264', rate=VIDEO_FPS)
    stream.width, stream.height, stream.pix_fmt = 64, 64, 'yuv420p'
    for frame in frames[:VIDEO_FPS, :64, :64]:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format='rgb24')))
    container.mux(stream.encode())
  files['no_audio.mp4'] = no_audio
  return files
