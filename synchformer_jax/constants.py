"""The facts of the task that more than one layer needs: stages, rates, segmentation, the offset grid.

Defined here once and imported by models, data, training and inference, which are otherwise independent.
This module imports nothing of the package, and nothing but numpy.
"""
from __future__ import annotations

import numpy as np

# What the trainer trains: Synchformer's three stages in order (Segment AVCLIP, offset classification,
# synchronizability), and SparseSync, the predecessor, trained end to end. A stage's name is also the `kind`
# of the model it trains.
SYNCHFORMER_STAGES = ('avclip', 'sync', 'synchability')
STAGES = (*SYNCHFORMER_STAGES, 'sparsesync')

# The batch key of each stage's class target (Stage I is self-supervised: it has none).
TARGET_KEY = {'sync': 'offset_target', 'synchability': 'sync_target', 'sparsesync': 'offset_target'}
TARGET_KEYS = {stage: (TARGET_KEY[stage],) if stage in TARGET_KEY else () for stage in STAGES}

# Every stream is resampled to these rates (the original's re-encode).
VIDEO_FPS = 25
AUDIO_RATE = 16_000
SAMPLES_PER_FRAME = AUDIO_RATE // VIDEO_FPS  # 640

# A segment is 16 frames (0.64 s) of video and the 10,240 samples beside them; one segment is 66 log-mel
# frames of 128 bins (65 STFT frames, padded by one).
SEGMENT_FRAMES = 16
SEGMENT_SAMPLES = SEGMENT_FRAMES * SAMPLES_PER_FRAME
MEL_BINS = 128
SEGMENT_MEL_FRAMES = 66
# Stage II / III segments overlap by half: a new one every 8 frames (0.32 s); Stage I's do not overlap.
SYNC_SEGMENT_STRIDE_FRAMES = SEGMENT_FRAMES // 2
SYNC_SEGMENT_STRIDE_SAMPLES = SYNC_SEGMENT_STRIDE_FRAMES * SAMPLES_PER_FRAME
SYNC_SEGMENT_STRIDE_SEC = SYNC_SEGMENT_STRIDE_FRAMES / VIDEO_FPS

# Stage II classifies the offset of the audio against the video into a 0.2-s grid over [-2, 2] s.
MAX_OFFSET_SEC = 2.0
OFFSET_STEP_SEC = 0.2
NUM_OFFSET_CLASSES = round(2 * MAX_OFFSET_SEC / OFFSET_STEP_SEC) + 1  # 21
OFFSET_GRID = np.linspace(-MAX_OFFSET_SEC, MAX_OFFSET_SEC, NUM_OFFSET_CLASSES, dtype=np.float32)  # class c: -2 + 0.2 c
# SparseSync's offset grids, by number of classes: linspace(-max, max, classes) (21: the grid above; 3: -1, 0, 1 s).
SPARSESYNC_MAX_OFFSET_SEC = {21: 2.0, 3: 1.0}
# The synchronizability fine-tune: class 1 is 'can be synchronised'.
NUM_SYNCHABILITY_CLASSES = 2
# How a training offset is drawn: from the grid, uniformly (regression target), or uniformly with an
# in/out-of-sync label.
OFFSET_TYPES = ('grid', 'uniform', 'uniform_binary')
