"""A benchmark record as a row of BENCHMARKS.md's tables."""
from __future__ import annotations

from typing import Any


def _gib(value) -> str:
  return f'{value:.2f} GiB' if value is not None else '—'


def markdown_row(result: dict[str, Any]) -> str:
  """A BENCHMARKS.md table row: | benchmark | setting | numbers | machine | load | command |."""
  r, m = result, result['machine']
  setting = f"{r.get('stage')} {r.get('size')} B={r.get('batch')} {r.get('dtype')}"
  if r.get('remat'):
    setting += f" remat={r['remat']}"
  numbers = []
  if 'error' in r:
    numbers.append(f"failed: {r['error']}")
  if 'engine' in r:
    numbers.append(f"engine {r['engine']}")
  if 'compile_s' in r:
    numbers.append(f"compile {r['compile_s']:.1f} s")
  if 'first_call_s' in r:
    numbers.append(f"first call {r['first_call_s']:.1f} s")
  if 'steady_s_median' in r:
    numbers.append(f"steady {r['steady_s_median']:.2f} s ({', '.join(f'{t:.2f}' for t in r['steady_s_all'])}), "
                   f"CPU {100 * r['cpu_utilisation']:.0f} %")
  if 'clips_per_s' in r:
    numbers.append(f"{r['clips_per_s']:.3g} clips/s")
  if 'xla_flops' in r:
    analytic = r['analytic_flops']['total'] if isinstance(r.get('analytic_flops'), dict) else r.get('analytic_flops')
    numbers.append(f"XLA {r['xla_flops'] / 1e12:.4g} TFLOP, analytic {analytic / 1e12:.4g} TFLOP")
  if r.get('final'):
    f = r['final']
    cue = f", beacon {r['beacon_period_sec']:g} s" if r.get('beacon_period_sec') else ''
    if r.get('audio_tokens', 'events') != 'events':
      cue += f", audio tokens {r['audio_tokens']}"
    passed = r.get('first_step_acc1_50')
    cue += f", acc@1 ≥ 50 % from step {passed}" if passed else ''
    numbers.append(f"{r['layers']} layers, lr {r['learning_rate']:g}{cue}: after {f['step']} steps ({f['seconds']:.0f} s) "
                   f"loss {f['loss']:.3f}, held-out acc@1 {100 * f['accuracy_1']:.1f} %, ±1 {100 * f['accuracy_1_tol1']:.1f} %; "
                   f"cross-correlation acc@1 {100 * r['cross_correlation_accuracy_1']:.1f} %")
  if r.get('mfu') is not None:
    numbers.append(f"MFU {100 * r['mfu']:.1f} %")
  if 'xla_peak_gib' in r:
    numbers.append(f"XLA peak {_gib(r['xla_peak_gib'])} (temp {_gib(r['xla_temp_gib'])})")
  if 'peak_rss_gib' in r:
    numbers.append(f"peak RSS {_gib(r['peak_rss_gib'])}")
  if r.get('profile'):
    numbers.append('most time in ' + ', '.join(f"{p['op']} {100 * p['share']:.0f} %" for p in r['profile'][:4]))
  load = r.get('load_average_1min')
  load = '–'.join(f'{x:.1f}' for x in load) if isinstance(load, list) else (f'{load:.1f}' if load else '—')
  machine = f"{m['cpu']} ×{m['cpu_count']} ({m['device']}), jax {m['jax']}"
  if m['xla_flags']:
    machine += f", XLA_FLAGS={m['xla_flags']}"
  if m.get('isa_caps'):
    machine += ', ' + ' '.join(f'{name}={value}' for name, value in m['isa_caps'].items())
  return f"| {r['benchmark']} | {setting} | {'; '.join(numbers)} | {machine} | {load} | `{r['command']}` |"
