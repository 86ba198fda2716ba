"""The synthetic clips' shortcut audit: one stream alone does not tell the offset, both together do."""
import numpy as np
import pytest

from synchformer_jax.benchmarks import leak_audit
from synchformer_jax.data import synthetic


@pytest.fixture(scope='module')
def envelopes():
  spec = synthetic.SyntheticSpec(height=64, width=64)  # 10-s clips; resolution does not matter here
  return [leak_audit.event_envelopes(synthetic.render_clip(spec, seed), fps=25, audio_rate=16000) for seed in range(40)]


def test_no_single_stream_shortcut_but_two_streams_recover_the_offset(envelopes):
  result = leak_audit.offset_predictability(envelopes, num_samples=8000, seed=0)
  # 4,000 held-out windows: one standard error of an at-chance accuracy is 0.0034.
  assert result.audio_only < result.chance + 0.015
  assert result.video_only < result.chance + 0.015
  assert result.cross_correlation > 6 * result.chance


def test_predictability_catches_a_planted_position_leak(envelopes):
  # Audio that brightens along the clip tells where its window sits, hence (a little) the offset.
  leaky = [(video, np.linspace(0.0, 1.0, audio.size, dtype=np.float32)) for video, audio in envelopes]
  result = leak_audit.offset_predictability(leaky, num_samples=8000, seed=0)
  assert result.audio_only > result.chance + 0.02
  assert result.video_only < result.chance + 0.015
