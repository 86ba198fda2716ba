"""`lrs3_h264`: LRS3 'No Face Crop' clips, from a folder `pretrain/<ytid>/<clip>.mp4`."""

from __future__ import annotations

from synchformer_jax.data.builders import base
from synchformer_jax.data.builders import clips as clips_lib
from synchformer_jax.data.builders import metadata


class Lrs3H264(base.ClipDatasetBuilder):
  """LRS3 'No Face Crop' (data.md §3.6): whole frames, 25 fps H.264, AAC 16 kHz (often stereo).

  Ids are `pretrain/<ytid>/<clip>`; fixed offsets exist for every split, train included.
  """

  name = 'lrs3_h264'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the clips in the manual dir as `pretrain/<ytid>/<clip>.mp4` (the original's
`h264_uncropped_25fps_256side_16000hz_aac` folder). The metadata dir (default: the manual dir)
holds `lrs3_{train,valid,test}.txt` and optionally
`fixed_offsets/lrs3_{split}_size21_crop5_min-2.00_max2.00.csv`. Splits whose list is absent
are not built.
"""

  def _list_clips(self, dl_manager):
    metadata_dir, videos = self._metadata_and_video_dirs(dl_manager)
    listed = {}
    for split in metadata.SPLITS:
      ids_path = metadata_dir / f'lrs3_{split}.txt'
      if not ids_path.exists():
        continue
      offsets_path = metadata.fixed_offsets_path(metadata_dir, 'lrs3', split)
      offsets = metadata.read_fixed_offsets(offsets_path) if offsets_path.exists() else None
      listed[split] = [
          clips_lib.ListedClip(
              clip_id=clip_id,
              path=str(videos / f'{clip_id}.mp4'),
              metadata=base.fixed_offset_fields(offsets, clip_id),
              excluded_reason='no fixed offset' if offsets is not None and clip_id not in offsets else '',
          )
          for clip_id in metadata.read_split_list(ids_path)
      ]
    if not listed:
      raise FileNotFoundError(f'no lrs3_{{train,valid,test}}.txt in {metadata_dir}')
    return listed
