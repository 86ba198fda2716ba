"""TFDS builders of the clip datasets (ArrayRecord files of encoded mp4 bytes plus metadata).

Importing this package registers the builders with TFDS, so that `tfds.data_source(name, ...)`
and `tfds.builder(name, ...)` find them.
"""

from __future__ import annotations

from etils import epath
import tensorflow_datasets as tfds

from synchformer_jax.data.builders.audioset import Audioset
from synchformer_jax.data.builders.base import REPORT_NAME, ClipDatasetBuilder, read_build_report
from synchformer_jax.data.builders.clips import ClipInfo, ClipRequirements, probe_clip
from synchformer_jax.data.builders.lrs3 import Lrs3H264
from synchformer_jax.data.builders.synthetic_sync import SyntheticSync
from synchformer_jax.data.builders.vggsound import Vggsound, VggsoundSparse

BUILDERS: dict[str, type[ClipDatasetBuilder]] = {
    cls.name: cls for cls in (SyntheticSync, Vggsound, VggsoundSparse, Lrs3H264, Audioset)
}


def build(
    name: str,
    *,
    data_dir: epath.PathLike,
    manual_dir: epath.PathLike | None = None,
    beam_options=None,
    **builder_kwargs,
) -> ClipDatasetBuilder:
  """Builds dataset `name` under `data_dir` (a no-op if that version is already there).

  Args:
    name: a key of BUILDERS.
    data_dir: where `<name>/<version>/` is written.
    manual_dir: the folder of mp4s (not used by `synthetic_sync`).
    beam_options: `apache_beam.options.pipeline_options.PipelineOptions` to build on Beam
      (its runner option picks the runner; DirectRunner by default); None builds locally.
    **builder_kwargs: for the builder (metadata_dir, num_clips, num_workers, ...).
  """
  if name not in BUILDERS:
    raise ValueError(f'unknown dataset {name!r}; known: {sorted(BUILDERS)}')
  builder = BUILDERS[name](data_dir=data_dir, **builder_kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, beam_options=beam_options)
  )
  return builder


__all__ = [
    'Audioset',
    'BUILDERS',
    'ClipDatasetBuilder',
    'ClipInfo',
    'ClipRequirements',
    'Lrs3H264',
    'REPORT_NAME',
    'SyntheticSync',
    'Vggsound',
    'VggsoundSparse',
    'build',
    'probe_clip',
    'read_build_report',
]
