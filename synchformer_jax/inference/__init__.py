"""Inference and analysis on trained models: the Python API for downstream projects (`api`), batch
prediction over files (`batch`), dataset evaluation (`evaluation`), evidence attribution
(`attribution`) and their plots (`plots`). The scripts `predict.py`, `evaluate.py` and `attribute.py`
are thin layers over these.
"""
from synchformer_jax.inference.api import (OffsetCurve, OffsetPrediction, OffsetSearch, desync, encode_audio_sync,
                                           encode_video_sync, offset_curve, p_in_sync, predict_offsets,
                                           search_offset, sync_logits)

__all__ = ['OffsetCurve', 'OffsetPrediction', 'OffsetSearch', 'desync', 'encode_audio_sync', 'encode_video_sync',
           'offset_curve', 'p_in_sync', 'predict_offsets', 'search_offset', 'sync_logits']
