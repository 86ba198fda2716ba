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


def test_the_sparsesync_resnet_counts_resnet_18s_published_1_81_gmacs():
  # torchvision's ResNet-18 on a 224-px RGB image: 1.81 GMACs (its model table; fvcore: 1.814). The audio trunk
  # takes one channel and has no classifier: add the other two input channels of the stem and the 512→1000 fc.
  cfg = config_for_size('sparsesync', 'full').replace(audio_freq=224, audio_frames=224)
  rgb_stem = flops.conv(112 * 112, 7 * 7, 3, 64) - flops.conv(112 * 112, 7 * 7, 1, 64)
  assert (flops.resnet_audio(cfg) + rgb_stem + flops.linear(1, 512, 1000)) / 2 == pytest.approx(1.814e9, rel=0.002)


@pytest.mark.parametrize('size', ['tiny', 'full'])
def test_sparsesync_analytic_flops_agree_with_xla(size):
  # Lowered from abstract parameters and inputs (`forward_flops_check`): nothing is allocated or compiled, so the
  # full size costs a few seconds too.
  check = suites.forward_flops_check(config_for_size('sparsesync', size))
  assert set(check['analytic_flops']) == {'vfeat_extractor', 'afeat_extractor', 'v_bridge', 'transformer', 'total'}
  # XLA's dots and convolutions, counted the analytic way: measured equal (tiny 0.852, full 300.9 GFLOP).
  assert check['xla_matmul_over_analytic'] == pytest.approx(1.0, rel=1e-3)
  # XLA's own count skips the kernel taps over a convolution's zero padding (18 % of a 3×3 conv's on S3D's last
  # 7×7 grid) and adds the elementwise work (BatchNorm, ReLU, pools, GELU): measured 1.2 % (tiny) and 1.6 % (full)
  # below the analytic count.
  assert 0.97 < check['xla_over_analytic'] < 1.0
  if size == 'full':
    assert check['video_share'] == pytest.approx(0.943, abs=0.005)  # the S3D trunk


def test_the_hlo_count_counts_a_computation_once_per_call():
  """A named jit called from every block is one computation in the lowered module, called from each block."""
  import jax
  import jax.numpy as jnp
  from synchformer_jax.benchmarks.hlo_flops import matmul_flops
  from synchformer_jax.models import layers

  def two_layers_and_a_dot(x, kernel, bias):
    return layers.affine(layers.affine(x, kernel, bias), kernel, bias) @ kernel

  x, kernel = jnp.ones((2, 4)), jnp.ones((4, 4))
  hlo = jax.jit(two_layers_and_a_dot).lower(x, kernel, jnp.ones(4)).as_text(dialect='hlo')
  assert hlo.count('dot(') == 2  # one in the shared computation, one in the entry
  assert matmul_flops(hlo) == 3 * 2 * 2 * 4 * 4
