"""Predictions for video files: one file in the mode it needs, or many files to a results CSV.

Modes: 'single' (one window, as the original's example.py), 'sliding' (windows over the whole file),
'search' (offsets beyond the grid's ±2 s), 'auto' (sliding for files longer than the 10 s the original's
pipelines read, else single), for Synchformer and SparseSync models alike (`windows`). A failing file in a
batch becomes a row with its error, and the batch goes on.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from flax import nnx
from tqdm import tqdm

from synchformer_jax.constants import AUDIO_RATE, VIDEO_FPS
from synchformer_jax.data.decode import MediaFile
from synchformer_jax.data.transforms import CLIP_MAX_SEC
from synchformer_jax.errors import InputError
from synchformer_jax.inference.results import OffsetCurve, OffsetPrediction, OffsetSearch
from synchformer_jax.inference.windows import offset_curve, predict_offsets, search_offset

MODES = ('auto', 'single', 'sliding', 'search')
VIDEO_EXTENSIONS = ('.mp4', '.mkv', '.mov', '.avi', '.webm', '.m4v', '.mpg', '.mpeg', '.ts', '.flv')
RESULT_COLUMNS = ('path', 'offset_sec', 'v_start_sec', 'mode', 'pred_offset_sec', 'prob', 'pred_class', 'top_k',
                  'error')


@dataclasses.dataclass(frozen=True)
class PredictOptions:
  mode: str = 'auto'
  hop_sec: float = 1.0  # sliding
  search_range_sec: float = 0.0  # search: offsets up to ± this (0: the grid's ±2 s only)
  search_step_sec: float = 2.0
  top_k: int = 5
  chunk_size: int | None = None  # segments (Synchformer) / 5-s windows (SparseSync) per call; None: the default
  original_decoder: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise InputError(f'mode: expected one of {MODES}, got {self.mode!r}')


@dataclasses.dataclass(frozen=True)
class FileItem:
  """A file and the artificial offset / window start to apply to it."""

  path: str
  offset_sec: float = 0.0
  v_start_sec: float = 0.0


Result = OffsetPrediction | OffsetCurve | OffsetSearch


def resolve_mode(path: str, mode: str, original_decoder: bool = False) -> str:
  """The mode to use for a file ('auto' resolved). Opens the file, so that a bad one fails here."""
  info = MediaFile(path, original_decoder=original_decoder).info
  if mode != 'auto':
    return mode
  return 'sliding' if min(info.n_frames / VIDEO_FPS, info.n_samples / AUDIO_RATE) > CLIP_MAX_SEC else 'single'


def predict_file(model: nnx.Module, item: FileItem, options: PredictOptions) -> tuple[str, Result]:
  """(the mode used, its result) for one file. Raises an `InputError` for a bad file."""
  mode = resolve_mode(item.path, options.mode, options.original_decoder)
  common = {'offset_sec': item.offset_sec, 'original_decoder': options.original_decoder}
  if mode == 'single':
    return mode, predict_offsets(model, item.path, v_start_sec=item.v_start_sec, **common)
  if mode == 'sliding':
    return mode, offset_curve(model, item.path, hop_sec=options.hop_sec, chunk_size=options.chunk_size, **common)
  return mode, search_offset(model, item.path, search_range_sec=options.search_range_sec,
                             step_sec=options.search_step_sec, chunk_size=options.chunk_size, **common)


def file_prediction(result: Result) -> OffsetPrediction:
  """One prediction for the file: the window, the sliding windows' consensus, or the best search candidate."""
  if isinstance(result, OffsetCurve):
    return result.consensus
  if isinstance(result, OffsetSearch):
    return result.best
  return result


def items_in_directory(directory: str, offset_sec: float = 0.0, v_start_sec: float = 0.0) -> list[FileItem]:
  """The video files (by extension) directly in `directory`, sorted, each with the same offset and start."""
  if not os.path.isdir(directory):
    raise InputError(f'{directory}: not a directory')
  return [FileItem(str(p), offset_sec, v_start_sec) for p in sorted(Path(directory).iterdir())
          if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]


def items_from_csv(path: str) -> list[FileItem]:
  """Rows of a CSV with a header `path[,offset_sec,v_start_sec]`; relative paths are relative to the CSV,
  missing or empty numbers are 0.

  A row whose numbers do not parse is kept with NaN, so that it fails alone (as its file would).
  """
  if not os.path.isfile(path):
    raise InputError(f'{path}: no such CSV file')
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or 'path' not in reader.fieldnames:
      raise InputError(f'{path}: expected a header with a `path` column (and optionally offset_sec, v_start_sec), '
                       f'got {reader.fieldnames}')
    rows = list(reader)
  base = os.path.dirname(os.path.abspath(path))
  return [FileItem(os.path.join(base, row['path']), _number(row.get('offset_sec')), _number(row.get('v_start_sec')))
          for row in rows]


def _number(text: str | None) -> float:
  if text is None or not text.strip():
    return 0.0
  try:
    return float(text)
  except ValueError:
    return float('nan')


def _check_item(item: FileItem) -> None:
  for name in ('offset_sec', 'v_start_sec'):
    value = getattr(item, name)
    if value != value:  # NaN: the CSV cell was not a number
      raise InputError(f'{item.path}: {name} in the CSV is not a number')


def predict_files(model: nnx.Module, items: Iterable[FileItem], options: PredictOptions, *,
                  progress: bool = True) -> Iterator[dict[str, str]]:
  """One results row per file (RESULT_COLUMNS), in order; a bad file gets its `InputError` in `error`.

  Any other exception is a fault of the program, not of one file: it stops the batch (the rows so far are
  written by `write_results_csv`).
  """
  items = list(items)
  for item in tqdm(items, desc='predicting', unit='file', disable=not progress):
    row = {'path': item.path, 'offset_sec': item.offset_sec, 'v_start_sec': item.v_start_sec}
    try:
      _check_item(item)
      mode, result = predict_file(model, item, options)
    except InputError as e:
      yield row | {'error': f'{type(e).__name__}: {e}'}
      continue
    prediction = file_prediction(result)
    top_k = [(round(t['offset_sec'], 4), round(t['prob'], 6)) for t in prediction.top_k(options.top_k)]
    yield row | {'mode': mode, 'pred_offset_sec': round(prediction.offset_sec, 4), 'prob': round(prediction.prob, 6),
                 'pred_class': prediction.predicted_class, 'top_k': json.dumps(top_k), 'error': ''}


def write_results_csv(rows: Iterable[dict[str, str]], path: str) -> int:
  """Writes rows as they come (a crash keeps the rows so far); returns how many failed."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  failed = 0
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, restval='')
    writer.writeheader()
    for row in rows:
      writer.writerow(row)
      f.flush()
      failed += bool(row['error'])
  return failed
