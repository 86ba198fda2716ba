"""`audioset`: AudioSet segments, from folders `{unbalanced,balanced,eval}_*_segments/`."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from synchformer_jax.data.builders import base
from synchformer_jax.data.builders import clips as clips_lib
from synchformer_jax.data.builders import metadata


class Audioset(base.ClipDatasetBuilder):
  """AudioSet (data.md §7): train = unbalanced, valid = balanced, test = eval segments.

  Ids are `<short dir>/<ytid>_<start ms>_<end ms>` (short dir: unbalanced, balanced, eval), as
  the fixed-offset CSVs key them. At this scale, build with Beam (`--beam`).
  """

  name = 'audioset'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the re-encoded clips in the manual dir as
`{unbalanced_train,balanced_train,eval}_segments/<ytid>_<start ms>_<end ms>.mp4`. The metadata
dir (default: the manual dir) holds `audioset.csv` and optionally
`fixed_offsets/audioset_{valid,test}_size21_crop5_min-2.00_max2.00.csv` and
`filtered_examples_audioset/*.txt` (entries `<segments folder>/<clip>`).
"""

  def _extra_features(self):
    return {'labels': tfds.features.Tensor(shape=(None,), dtype=np.int64, doc='AudioSet class indices')}

  def _list_clips(self, dl_manager):
    metadata_dir, videos = self._metadata_and_video_dirs(dl_manager)
    dropped = metadata.read_filter_lists(metadata_dir / 'filtered_examples_audioset')
    rows_by_short_dir: dict[str, dict[str, list[int]]] = {}
    for short_dir, clip_id, labels in metadata.read_audioset_rows(metadata_dir / 'audioset.csv'):
      rows_by_short_dir.setdefault(short_dir, {}).setdefault(clip_id, labels)  # first row of a duplicate wins
    listed = {}
    for split, (short_dir, folder) in metadata.AUDIOSET_SPLIT_DIRS.items():
      if short_dir not in rows_by_short_dir:
        continue
      offsets_path = metadata.fixed_offsets_path(metadata_dir, 'audioset', split)
      offsets = metadata.read_fixed_offsets(offsets_path) if offsets_path.exists() else None
      clips = []
      for clip_id, labels in sorted(rows_by_short_dir[short_dir].items()):
        key = f'{short_dir}/{clip_id}'
        if f'{folder}/{clip_id}' in dropped:
          reason = f'in filter list {dropped[f"{folder}/{clip_id}"]}'
        elif offsets is not None and key not in offsets:
          reason = 'no fixed offset'
        else:
          reason = ''
        clips.append(
            clips_lib.ListedClip(
                clip_id=key,
                path=str(videos / folder / f'{clip_id}.mp4'),
                metadata={'labels': labels, **base.fixed_offset_fields(offsets, key)},
                excluded_reason=reason,
            )
        )
      listed[split] = clips
    if not listed:
      raise FileNotFoundError(f'no usable rows in {metadata_dir / "audioset.csv"}')
    return listed
