"""Readers for the original's metadata files: split lists, fixed offsets, labels, filter lists.

The user supplies these files (the project does not ship them) in one folder laid out like
the original's `data/` folder, flattened:

  <metadata_dir>/
    vggsound.csv                         official VGGSound table: ytid,start_sec,label,split
    vggsound_{train,valid,test}.txt      clip ids, one per line
    lrs3_{train,valid,test}.txt          pretrain/<ytid>/<clip>
    audioset.csv                         <short_dir>/<ytid>,start,end,"<class ids>",<phase>
    picked_sparse_classes.csv            VGGSound-Sparse classes (tab-separated class, is_sparse)
    vggsound_sparse_clean.csv            the manual synchronisability annotation
    vggsound_sparse_clean_fixed_offsets.csv
    fixed_offsets/<dataset>_<split>_size21_crop5_min-2.00_max2.00.csv   path,offset_sec,vstart_sec
    filtered_examples_<dataset>/*.txt    optional lists of clips to drop

Offsets and video starts stay Python floats (float64) exactly as written in the CSVs: the
transforms truncate products of them, and float32 would move some rows by a frame (data.md §2.0).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator

from etils import epath

# Synchformer's grid: 21 classes over +-2 s, 5-s crops (data.md §3.4).
FIXED_OFFSETS_GRID = 'size21_crop5_min-2.00_max2.00'
SPLITS = ('train', 'valid', 'test')


def _rows(path: epath.Path, **reader_kwargs) -> Iterator[list[str]]:
  with path.open() as f:
    yield from csv.reader(f, **reader_kwargs)


def _dict_rows(path: epath.Path, **reader_kwargs) -> Iterator[dict[str, str]]:
  with path.open() as f:
    yield from csv.DictReader(f, **reader_kwargs)


def clip_id(ytid: str, start_sec: float, end_sec: float) -> str:
  """The original's clip id: `<ytid>_<start ms>_<end ms>`, milliseconds truncated."""
  return f'{ytid}_{int(start_sec * 1000)}_{int(end_sec * 1000)}'


def read_split_list(path: epath.Path) -> list[str]:
  """Ids listed one per line, blank lines skipped, order kept."""
  return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def fixed_offsets_path(metadata_dir: epath.Path, dataset: str, split: str) -> epath.Path:
  return metadata_dir / 'fixed_offsets' / f'{dataset}_{split}_{FIXED_OFFSETS_GRID}.csv'


def read_fixed_offsets(path: epath.Path) -> dict[str, tuple[float, float]]:
  """{clip key: (offset_sec, vstart_sec)} from a `path,offset_sec,vstart_sec` CSV."""
  return {row['path']: (float(row['offset_sec']), float(row['vstart_sec'])) for row in _dict_rows(path)}


def read_filter_lists(folder: epath.Path) -> dict[str, str]:
  """{clip id: name of the first filter list naming it} over `folder/*.txt`; empty if absent."""
  dropped: dict[str, str] = {}
  if folder.exists():
    for list_path in sorted(folder.glob('*.txt')):
      for clip in read_split_list(list_path):
        dropped.setdefault(clip.removesuffix('.mp4'), list_path.name)
  return dropped


def read_vggsound_labels(path: epath.Path) -> dict[str, str]:
  """{clip id: class name} from the official, header-less `vggsound.csv`."""
  labels = {}
  for row in _rows(path):
    if len(row) < 3:
      continue
    ytid, start, label = row[0], row[1], row[2]
    try:
      start_sec = int(start)
    except ValueError:  # a header row
      continue
    labels[clip_id(ytid, start_sec, start_sec + 10)] = label
  return labels


def read_picked_sparse_classes(path: epath.Path) -> list[str]:
  """The VGGSound-Sparse classes (is_sparse == 'y'), sorted: the list index is the label."""
  return sorted(row['class'] for row in _dict_rows(path, delimiter='\t') if row['is_sparse'].strip() == 'y')


def read_sparse_rejected(path: epath.Path) -> set[str]:
  """Clip ids that manual inspection judged not synchronisable (present, is_sync == 0).

  These are exactly the original's `test_failed_manual_inspection.txt` (data.md §3.3).
  """
  return {
      clip_id(row['video_id'], int(row['start_sec']), int(row['start_sec']) + 10)
      for row in _dict_rows(path)
      if row['is_sync'] == '0' and row['vid_is_missing'] == '0'
  }


def read_sparse_fixed_offsets(path: epath.Path) -> dict[str, tuple[float, float]]:
  """{clip id: (offset_sec, vstart_sec)} of the accepted (is_sync == 1) proposal per clip."""
  accepted = {}
  for row in _dict_rows(path):
    if row['is_sync'] == '1':
      accepted[row['video_id']] = (float(row['offset_sec']), float(row['vstart_sec']))
  return accepted


AUDIOSET_SPLIT_DIRS = {  # split -> (short dir in audioset.csv and offset keys, folder of its mp4s)
    'train': ('unbalanced', 'unbalanced_train_segments'),
    'valid': ('balanced', 'balanced_train_segments'),
    'test': ('eval', 'eval_segments'),
}


def read_audioset_rows(path: epath.Path) -> Iterator[tuple[str, str, list[int]]]:
  """(short dir, clip id, class ids) per `audioset.csv` row; rows of unknown short dirs skipped."""
  short_dirs = {short for short, _ in AUDIOSET_SPLIT_DIRS.values()}
  for row in _rows(path, skipinitialspace=True):
    if len(row) < 4 or '/' not in row[0]:
      continue
    short_dir, ytid = row[0].split('/', 1)
    if short_dir not in short_dirs:
      continue
    labels = [int(x) for x in row[3].split(',') if x.strip()]
    yield short_dir, clip_id(ytid, float(row[1]), float(row[2])), labels
