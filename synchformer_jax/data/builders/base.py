"""The TFDS builder shared by all clip datasets: encoded mp4 bytes plus metadata, in ArrayRecord.

A dataset only says which clips each split lists (`_list_clips`) and how to load them. This
base class then prepares every clip (load, probe, check, see `clips.ClipPreparer`) either

- locally, in a process pool (`num_workers` processes), or
- on Apache Beam, when the download config carries a Beam runner or options (TFDS's Beam
  path). The clip lists travel to the workers as JSON-lines manifests rather than inside the
  pipeline graph, which would not scale to AudioSet's two million clips.

Clips that cannot be used are left out and never stop a build; `build_report.json`, written
beside the dataset (`<data_dir>/<name>/<version>/`), names each with its reason.
Records never hold decoded frames: decoding happens in the input pipeline.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import functools
import inspect
import json
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from synchformer_jax.data.builders import clips as clips_lib

REPORT_NAME = 'build_report.json'
_REPORT_PART_PREFIX = 'build_report-'  # one per split, merged into REPORT_NAME at the end
_MANIFEST_PREFIX = 'clips-'  # Beam path only: the listed clips of a split, one JSON per line


def exact_float64(doc: str, shape: tuple[int | None, ...] = ()) -> tfds.features.Tensor:
  """A float64 feature stored as raw bytes: TFDS's default encoding rounds floats to float32,
  which moves truncated frame and sample indices (data.md §2.0)."""
  return tfds.features.Tensor(shape=shape, dtype=np.float64, encoding=tfds.features.Encoding.BYTES, doc=doc)


def _common_features() -> dict[str, tfds.features.FeatureConnector]:
  integer = functools.partial(tfds.features.Scalar, np.int64)
  return {
      'id': tfds.features.Text(doc='clip id, as spelled by split lists and offset CSVs'),
      'video': tfds.features.Tensor(shape=(), dtype=np.object_, doc='the encoded mp4 file'),
      'duration_sec': exact_float64('min(video frames / fps, audio duration)'),
      'video_fps': exact_float64('video frame rate'),
      'num_frames': integer(doc='video frames (packets)'),
      'height': integer(doc='frame height, pixels'),
      'width': integer(doc='frame width, pixels'),
      'audio_rate': integer(doc='audio sample rate, Hz'),
      'audio_channels': integer(doc='audio channels (decoders average them to mono)'),
      'offset_sec': exact_float64('fixed evaluation offset (audio later by this), as in its CSV; NaN: none'),
      'vstart_sec': exact_float64('fixed evaluation start of the video crop, as in its CSV; NaN: none'),
  }


def fixed_offset_fields(offsets: Mapping[str, tuple[float, float]] | None, key: str) -> dict[str, float]:
  """Record fields for a clip's fixed evaluation offset; empty (NaN in the record) if none."""
  if offsets is None or key not in offsets:
    return {}
  offset, vstart = offsets[key]
  return {'offset_sec': offset, 'vstart_sec': vstart}


def _is_excluded(result: clips_lib.KeyExample | clips_lib.Excluded) -> bool:
  return isinstance(result, clips_lib.Excluded)


def _is_example(result: clips_lib.KeyExample | clips_lib.Excluded) -> bool:
  return not isinstance(result, clips_lib.Excluded)


def _write_report_part(excluded: Sequence[clips_lib.Excluded], *, path: epath.Path, split: str, listed: int):
  path.write_text(
      json.dumps({'split': split, 'listed': listed, 'excluded': {e.clip_id: e.reason for e in excluded}})
  )


def _parse_manifest_line(line: str) -> clips_lib.ListedClip:
  return clips_lib.ListedClip(**json.loads(line))


class ClipDatasetBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the clip datasets; subclasses list clips and may add record fields."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 resolves a packaged builder's file through `importlib_resources`, which it
    # does not install on Python >= 3.9 (ModuleNotFoundError); the class's file is the answer.
    return epath.Path(inspect.getfile(cls))

  def __init__(
      self,
      *,
      metadata_dir: epath.PathLike | None = None,
      num_clips: int | None = None,
      num_workers: int | None = None,
      requirements: clips_lib.ClipRequirements = clips_lib.ClipRequirements(),
      file_format: str = 'array_record',
      **kwargs,
  ):
    """Configures a build; none of these arguments changes where the dataset is written.

    Args:
      metadata_dir: split lists and CSVs (layout: see `metadata`); default: the manual dir.
      num_clips: keep only the first `num_clips` listed clips of each split.
      num_workers: local build processes; default os.cpu_count(); 0 or 1 build in-process.
      requirements: what a clip must satisfy to be written.
      file_format: TFDS file format; ArrayRecord gives the random access that grain needs.
      **kwargs: for tfds.core.GeneratorBasedBuilder (data_dir, ...).
    """
    self._metadata_dir = epath.Path(metadata_dir) if metadata_dir else None
    self._num_clips = num_clips
    self._num_workers = os.cpu_count() if num_workers is None else num_workers
    self._requirements = requirements
    self._use_beam = False
    self._pool = None
    super().__init__(file_format=file_format, **kwargs)

  # ---- what a dataset defines -------------------------------------------------------------

  @abc.abstractmethod
  def _list_clips(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[clips_lib.ListedClip]]:
    """{split: listed clips}, in list order."""

  def _extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    """Dataset-specific record fields (labels, ...)."""
    return {}

  def _clip_loader(self) -> clips_lib.ClipLoader:
    return clips_lib.load_file

  def _build_parameters(self) -> dict[str, Any]:
    """What the build depended on besides the data, recorded in the build report."""
    return {
        'metadata_dir': os.fspath(self._metadata_dir) if self._metadata_dir else None,
        'num_clips': self._num_clips,
        'requirements': dataclasses.asdict(self._requirements),
    }

  def _metadata_and_video_dirs(self, dl_manager: tfds.download.DownloadManager) -> tuple[epath.Path, epath.Path]:
    videos = dl_manager.manual_dir
    return (self._metadata_dir or videos), videos

  # ---- TFDS hooks ---------------------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or '').strip(),
        features=tfds.features.FeaturesDict({**_common_features(), **self._extra_features()}),
    )

  def _download_and_prepare(self, dl_manager, download_config):
    self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
    with self._worker_pool():
      super()._download_and_prepare(dl_manager, download_config)
    self._write_build_report()

  def _split_generators(self, dl_manager):
    preparer = clips_lib.ClipPreparer(load=self._clip_loader(), requirements=self._requirements)
    generators = {}
    for split, listed in self._list_clips(dl_manager).items():
      if self._num_clips is not None:
        listed = listed[: self._num_clips]
      make = self._beam_examples if self._use_beam else self._generate_examples
      generators[split] = make(split, listed, preparer)
    return generators

  def _generate_examples(
      self, split: str, listed: Sequence[clips_lib.ListedClip], preparer: clips_lib.ClipPreparer
  ) -> Iterator[clips_lib.KeyExample]:
    if self._pool is not None:
      results = self._pool.imap(preparer, listed, chunksize=max(1, min(16, len(listed) // (4 * self._num_workers))))
    else:
      results = map(preparer, listed)
    excluded = []
    for result in results:
      if _is_excluded(result):
        excluded.append(result)
      else:
        yield result
    _write_report_part(excluded, path=self._report_part_path(split), split=split, listed=len(listed))

  def _beam_examples(self, split: str, listed: Sequence[clips_lib.ListedClip], preparer: clips_lib.ClipPreparer):
    beam = tfds.core.lazy_imports.apache_beam
    manifest = self.data_path / f'{_MANIFEST_PREFIX}{split}.jsonl'
    manifest.write_text(''.join(json.dumps(dataclasses.asdict(clip)) + '\n' for clip in listed))
    report_part = self._report_part_path(split)

    @beam.ptransform_fn
    def prepare_split(root):
      results = (
          root
          | 'ReadManifest' >> beam.io.ReadFromText(os.fspath(manifest))
          | 'Parse' >> beam.Map(_parse_manifest_line)
          | 'Distribute' >> beam.Reshuffle()  # preparing is heavy, listing is not: break fusion
          | 'Prepare' >> beam.Map(preparer)
      )
      _ = (
          results
          | 'Excluded' >> beam.Filter(_is_excluded)
          | 'CollectExcluded' >> beam.combiners.ToList()
          | 'WriteReport' >> beam.Map(_write_report_part, path=report_part, split=split, listed=len(listed))
      )
      return results | 'Examples' >> beam.Filter(_is_example)

    return prepare_split()  # pylint: disable=no-value-for-parameter

  # ---- helpers ------------------------------------------------------------------------------

  @contextlib.contextmanager
  def _worker_pool(self):
    if self._use_beam or self._num_workers <= 1:
      yield
      return
    # spawn, not fork: the caller may have started JAX or other threads.
    with multiprocessing.get_context('spawn').Pool(self._num_workers) as pool:
      self._pool = pool
      try:
        yield
      finally:
        self._pool = None

  def _report_part_path(self, split: str) -> epath.Path:
    return self.data_path / f'{_REPORT_PART_PREFIX}{split}.json'

  def _write_build_report(self):
    splits = {}
    for part in sorted(self.data_path.glob(f'{_REPORT_PART_PREFIX}*.json')):
      summary = json.loads(part.read_text())
      excluded = dict(sorted(summary['excluded'].items()))
      # The reason's kind is its text before any ':' detail, e.g. 'unreadable container'.
      kinds = collections.Counter(reason.split(':', 1)[0] for reason in excluded.values())
      splits[summary['split']] = {
          'listed': summary['listed'],
          'written': summary['listed'] - len(excluded),
          'excluded_by_kind': dict(kinds.most_common()),
          'excluded': excluded,
      }
      part.unlink()
    for manifest in self.data_path.glob(f'{_MANIFEST_PREFIX}*.jsonl'):
      manifest.unlink()
    report = {
        'dataset': self.name,
        'version': str(self.version),
        'parameters': self._build_parameters(),
        'splits': splits,
    }
    (self.data_path / REPORT_NAME).write_text(json.dumps(report, indent=1) + '\n')


def read_build_report(data_dir: epath.PathLike, name: str, version: str = str(ClipDatasetBuilder.VERSION)) -> dict[str, Any]:
  return json.loads((epath.Path(data_dir) / name / version / REPORT_NAME).read_text())
