"""`synthetic_sync`: generated sparse-sync clips (see `synchformer_jax.data.synthetic`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from synchformer_jax.constants import MAX_OFFSET_SEC
from synchformer_jax.data import synthetic
from synchformer_jax.data.builders import base
from synchformer_jax.data.builders import clips as clips_lib
from synchformer_jax.data.transforms import CLIP_MAX_SEC, OFFSET_CROP_SEC

DEFAULT_SPLIT_SIZES = {'train': 2000, 'valid': 250, 'test': 250}
# Folded into every seed so that splits never share a clip.
_SPLIT_IDS = {'train': 0, 'valid': 1, 'test': 2}
_EVAL_SPLITS = ('valid', 'test')


class SyntheticSync(base.ClipDatasetBuilder):
  """Synthetic sparse audio-visual synchronisation clips (H.264 25 fps + AAC 16 kHz mono).

  Clip i of a split is rendered from seed (seed, split id, i), stored in the record. The valid
  and test splits carry fixed evaluation offsets drawn like the original's fixed-offset CSVs.
  """

  name = 'synthetic_sync'

  def __init__(
      self,
      *,
      spec: synthetic.SyntheticSpec = synthetic.SyntheticSpec(),
      split_sizes: Mapping[str, int] = DEFAULT_SPLIT_SIZES,
      seed: int = 0,
      **kwargs,
  ):
    """Configures the generated dataset (its path does not depend on these arguments).

    Args:
      spec: format and difficulty of the clips.
      split_sizes: clips per split (`num_clips` still caps them).
      seed: base seed of the whole dataset.
      **kwargs: for base.ClipDatasetBuilder.
    """
    if unknown := set(split_sizes) - set(_SPLIT_IDS):
      raise ValueError(f'unknown splits {sorted(unknown)}; known: {list(_SPLIT_IDS)}')
    if spec.duration_sec < OFFSET_CROP_SEC + 2 * MAX_OFFSET_SEC:
      raise ValueError(
          f'clips of {spec.duration_sec} s cannot hold a {OFFSET_CROP_SEC}-s crop at every offset up to '
          f'+-{MAX_OFFSET_SEC} s; use at least {OFFSET_CROP_SEC + 2 * MAX_OFFSET_SEC} s'
      )
    self._spec = spec
    self._split_sizes = dict(split_sizes)
    self._seed = seed
    super().__init__(**kwargs)

  def _extra_features(self):
    return {
        'label': tfds.features.Scalar(np.int64, doc=f'event kind: index into {synthetic.EVENT_KINDS}'),
        'label_name': tfds.features.Text(doc='event kind'),
        'event_times_sec': base.exact_float64('onsets of the audible events', shape=(None,)),
        'seed': tfds.features.Tensor(shape=(3,), dtype=np.int64, doc='(base seed, split id, index) it was rendered from'),
    }

  def _clip_loader(self):
    return clips_lib.SyntheticLoader(self._spec)

  def _build_parameters(self) -> dict[str, Any]:
    return {
        **super()._build_parameters(),
        'spec': dataclasses.asdict(self._spec),
        'split_sizes': self._split_sizes,
        'seed': self._seed,
    }

  def _list_clips(self, dl_manager):
    del dl_manager  # nothing to read: clips are generated
    num_frames = int(self._spec.fps * min(CLIP_MAX_SEC, self._spec.duration_sec))
    listed = {}
    for split, size in self._split_sizes.items():
      split_id = _SPLIT_IDS[split]
      offsets_rng = np.random.default_rng([self._seed, split_id, len(_SPLIT_IDS)])
      clips = []
      for index in range(size):
        fields: dict[str, Any] = {'seed': (self._seed, split_id, index)}
        if split in _EVAL_SPLITS:
          offset, vstart = synthetic.sample_offset_and_vstart(offsets_rng, num_frames, fps=self._spec.fps)
          fields.update(offset_sec=offset, vstart_sec=vstart)
        clips.append(clips_lib.ListedClip(clip_id=f'{split}/{index:07d}', metadata=fields))
      listed[split] = clips
    return listed
