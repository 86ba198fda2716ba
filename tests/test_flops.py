"""The analytic FLOP counter against published counts and against the dots and convolutions XLA is given."""
import dataclasses

import pytest

from synchformer_jax.benchmarks import suites
from synchformer_jax.models import flops
from synchformer_jax.models.config import AudioTowerConfig, SyncTransformerConfig, VideoTowerConfig, config_for_size


def test_a_vit_b16_at_224_px_costs_its_published_17_6_gmacs():
  # ViT-B/16 on a 224-px image (196 patches + CLS): 17.6 GMACs in timm's and fvcore's tables; 2 FLOPs a MAC here.
  blocks = 12 * flops.pre_norm_block(197, 768, 3072)
  embed = flops.linear(196, 3 * 16 * 16, 768)
  assert (blocks + embed) / 2 == pytest.approx(17.6e9, rel=0.005)


def test_full_size_forward_is_5_7_tflop_and_mostly_video():
  counts = flops.forward_flops(config_for_size('sync', 'full'))
  assert counts['total'] == pytest.approx(5.72e12, rel=0.01)
  assert counts['video'] / counts['total'] == pytest.approx(0.96, abs=0.01)


@pytest.mark.parametrize('kind', ['sync', 'synchability', 'avclip'])
def test_analytic_flops_match_the_matmuls_xla_is_given(kind):
  check = suites.forward_flops_check(config_for_size(kind, 'tiny'), batch=2)
  # The CLS query's attention is a multiply-reduce, not a dot, and the tiny model's position-grid resize
  # is an extra dot: together well under 1 %.
  assert check['xla_matmul_over_analytic'] == pytest.approx(1.0, abs=0.01)
  # XLA's own count adds the elementwise work (GELU, softmax, norms): a larger share at width 64.
  assert 1.0 < check['xla_over_analytic'] < 1.15


# Members of the model family a scaling sweep sets by width × depth × heads (and the MLP width, crop, segments).
FAMILY = {
    'narrow_deep': dict(video=VideoTowerConfig(dim=32, depth=3, heads=2, mlp_dim=64, crop=48),
                        audio=AudioTowerConfig(dim=48, depth=3, heads=3, mlp_dim=96),
                        transformer=SyncTransformerConfig(dim=40, layers=2, heads=5, mlp_dim=80, n_segments=6)),
    'wide_shallow': dict(video=VideoTowerConfig(dim=96, depth=1, heads=6, mlp_dim=384, crop=32),
                         audio=AudioTowerConfig(dim=80, depth=1, heads=5, mlp_dim=160),
                         transformer=SyncTransformerConfig(dim=24, layers=3, heads=3, mlp_dim=48, n_segments=4)),
}


@pytest.mark.parametrize('member', sorted(FAMILY))
@pytest.mark.parametrize('kind', ['sync', 'avclip'])
def test_the_analytic_count_covers_every_member_of_the_model_family(kind, member):
  fields = dict(FAMILY[member])
  if kind == 'avclip':  # Stage I compares the two towers' embeddings: one width
    fields['audio'] = dataclasses.replace(fields['audio'], dim=fields['video'].dim, heads=fields['video'].heads)
  cfg = config_for_size(kind, 'tiny').replace(**fields)
  check = suites.forward_flops_check(cfg, batch=1)
  assert check['xla_matmul_over_analytic'] == pytest.approx(1.0, abs=0.015)
