"""Inference and analysis on trained models.

The downstream API: segment features and logits of arrays (`segments`), DeSync and p(sync) (`desync`),
offset predictions for files (`windows`, returning `results`), all through jitted calls (`compiled`).
Above them: batch prediction over files (`batch`), dataset evaluation (`evaluation`), evidence attribution
(`attribution`) and the scripts' shared error handling (`cli`). The scripts `predict.py`, `evaluate.py` and
`attribute.py` are thin layers over these.

File predictions, batches, evaluation and attribution take Synchformer ('sync') and SparseSync models alike,
recognised from the model (`kinds`: each kind's window, pipeline, class grid and evaluation step); the array API
(`segments`, `desync`) is Synchformer's.
"""
from synchformer_jax.inference.desync import desync, p_in_sync
from synchformer_jax.inference.results import OffsetCurve, OffsetPrediction, OffsetSearch
from synchformer_jax.inference.segments import encode_audio_sync, encode_video_sync, sync_logits
from synchformer_jax.inference.windows import offset_curve, predict_offsets, search_offset

__all__ = ['OffsetCurve', 'OffsetPrediction', 'OffsetSearch', 'desync', 'encode_audio_sync', 'encode_video_sync',
           'offset_curve', 'p_in_sync', 'predict_offsets', 'search_offset', 'sync_logits']
