"""`vggsound` and `vggsound_sparse`, from a folder of re-encoded mp4s `<clip id>.mp4`."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from synchformer_jax.data.builders import base
from synchformer_jax.data.builders import clips as clips_lib
from synchformer_jax.data.builders import metadata

_INSTRUCTIONS = """\
Put the re-encoded clips (H.264 25 fps, short side 256, AAC 16 kHz mono; data.md §1.1) in the
manual dir as `<ytid>_<start ms>_<end ms>.mp4`. The metadata dir (default: the manual dir)
holds `vggsound.csv`, `vggsound_{{train,valid,test}}.txt`, optionally
`fixed_offsets/vggsound_{{valid,test}}_size21_crop5_min-2.00_max2.00.csv` and
`filtered_examples_vggsound/*.txt`{extra}. Splits whose list is absent are not built.
"""


class Vggsound(base.ClipDatasetBuilder):
  """VGGSound (309 classes; data.md §3.2): split lists intersected with vggsound.csv."""

  name = 'vggsound'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(extra='')

  def _extra_features(self):
    return {
        'label': tfds.features.Scalar(np.int64, doc='class index, in sorted class-name order'),
        'label_name': tfds.features.Text(doc='class name'),
    }

  def _classes(self, metadata_dir: epath.Path, labels: dict[str, str]) -> list[str]:
    """The dataset's classes, sorted (the index is the label); clips of others are not listed."""
    del metadata_dir
    return sorted(set(labels.values()))

  def _split_rules(
      self, metadata_dir: epath.Path, split: str
  ) -> tuple[dict[str, tuple[float, float]] | None, bool, dict[str, str]]:
    """(fixed offsets or None, whether a clip without one is excluded, {clip id: exclusion reason})."""
    path = metadata.fixed_offsets_path(metadata_dir, 'vggsound', split)
    return (metadata.read_fixed_offsets(path) if path.exists() else None), True, {}

  def _list_clips(self, dl_manager):
    metadata_dir, videos = self._metadata_and_video_dirs(dl_manager)
    labels = metadata.read_vggsound_labels(metadata_dir / 'vggsound.csv')
    class_index = {name: i for i, name in enumerate(self._classes(metadata_dir, labels))}
    dropped = metadata.read_filter_lists(metadata_dir / 'filtered_examples_vggsound')
    listed = {}
    for split in metadata.SPLITS:
      ids_path = metadata_dir / f'vggsound_{split}.txt'
      if not ids_path.exists():
        continue
      offsets, offset_required, rejected = self._split_rules(metadata_dir, split)
      clips = []
      for clip_id in metadata.read_split_list(ids_path):
        label = labels.get(clip_id)
        if label is not None and label not in class_index:
          continue  # another dataset's class
        if label is None:
          reason = 'not in vggsound.csv'
        elif clip_id in dropped:
          reason = f'in filter list {dropped[clip_id]}'
        elif clip_id in rejected:
          reason = rejected[clip_id]
        elif offset_required and offsets is not None and clip_id not in offsets:
          reason = 'no fixed offset'
        else:
          reason = ''
        fields = {'label': class_index.get(label, -1), 'label_name': label or ''}
        fields.update(base.fixed_offset_fields(offsets, clip_id))
        clips.append(
            clips_lib.ListedClip(
                clip_id=clip_id, path=str(videos / f'{clip_id}.mp4'), metadata=fields, excluded_reason=reason
            )
        )
      listed[split] = clips
    if not listed:
      raise FileNotFoundError(f'no vggsound_{{train,valid,test}}.txt in {metadata_dir}')
    return listed


class VggsoundSparse(Vggsound):
  """VGGSound-Sparse (data.md §3.3): the 12 picked sparse classes, labels 0-11 alphabetically.

  Its test split is the clean test set: clips that manual inspection judged not synchronisable
  are excluded, and a clip's fixed offset is its accepted (is_sync = 1) annotation. Clean test
  clips without an accepted annotation keep NaN offsets, for random-offset evaluation passes.
  """

  name = 'vggsound_sparse'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(
      extra=', and `picked_sparse_classes.csv`, `vggsound_sparse_clean.csv`, `vggsound_sparse_clean_fixed_offsets.csv`'
  )

  def _classes(self, metadata_dir, labels):
    return metadata.read_picked_sparse_classes(metadata_dir / 'picked_sparse_classes.csv')

  def _split_rules(self, metadata_dir, split):
    if split != 'test':
      return super()._split_rules(metadata_dir, split)
    rejected = metadata.read_sparse_rejected(metadata_dir / 'vggsound_sparse_clean.csv')
    offsets = metadata.read_sparse_fixed_offsets(metadata_dir / 'vggsound_sparse_clean_fixed_offsets.csv')
    return offsets, False, {clip_id: 'failed manual inspection' for clip_id in rejected}
