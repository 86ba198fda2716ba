"""Model FLOPs utilisation: the analytic FLOPs of a training step against the devices' peak."""
from __future__ import annotations

from typing import Any, Callable

import jax

from synchformer_jax.models.config import ModelConfig, SparseSyncConfig
from synchformer_jax.models.flops import forward_flops

# Dense bf16 peak FLOP/s per device, for MFU. CPUs have no entry: MFU is not reported there.
# The first name a device kind contains is its entry: 'TPU v5 lite' (v5e) before 'TPU v5' (what v5p reports).
PEAK_BF16_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'TPU v4': 275e12, 'TPU v5 lite': 197e12,
                   'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v5': 459e12, 'TPU v6 lite': 918e12, 'TPU v6e': 918e12}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  kind = (device or jax.devices()[0]).device_kind
  return next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in kind), None)


def train_step_flops(cfg: ModelConfig | SparseSyncConfig, batch: int, *, frozen_towers_run: bool = True) -> int:
  """Model FLOPs of one training step, analytically: 3× the forward of what is trained (forward, and a
  backward of twice its cost), 1× the forward of frozen towers (Stage II / III) unless the step trains on
  their precomputed features (`frozen_towers_run=False`). Rematerialisation's recomputed forward is not model
  work and is not counted."""
  parts = forward_flops(cfg)
  if cfg.kind in ('avclip', 'sparsesync'):  # trained end to end
    return 3 * parts['total'] * batch
  towers = parts['video'] + parts['audio'] if frozen_towers_run else 0
  return (towers + 3 * parts['head']) * batch


def flops_and_mfu(model_flops: float, step_s: float) -> dict[str, Any]:
  """Analytic model FLOPs of a step, the FLOP/s achieved, and MFU where the device's peak is known."""
  peak = peak_flops_per_device()
  achieved = model_flops / step_s
  return {'analytic_flops': float(model_flops), 'achieved_tflops_per_s': achieved / 1e12,
          'mfu': achieved / peak if peak else None}


def step_flops(jitted: Callable, *args) -> float | None:
  """FLOPs of one call of a jitted function, from XLA's cost analysis of its lowering (no compile)."""
  cost = jitted.lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get('flops')
  return float(flops) if flops else None
