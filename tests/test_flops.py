"""The analytic FLOP counter against published counts and against the dots and convolutions XLA is given."""
import pytest

from synchformer_jax.benchmarks import suites
from synchformer_jax.models import flops
from synchformer_jax.models.config import config_for_size


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
