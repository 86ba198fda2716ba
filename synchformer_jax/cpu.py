"""What this CPU can do, and the XLA:CPU settings that inference uses by default.

XLA:CPU (jaxlib 0.10.2) hands plain dots to YNNPACK by default. On x86 CPUs, taking them away from YNNPACK and
giving them to oneDNN's matmul custom call runs the full Stage II forward in float32 in 25 % less time on one
core of an AMX Xeon (57.6 → 43.4 s; BENCHMARKS.md, issue 18); only the order of float32 summation inside each dot
changes, and the parity cases pass with it. `use_inference_flags()` adds those flags; `synchformer_jax.load` and the inference
scripts call it, so it is the default for CPU inference, not a flag a user must know.

XLA reads its flags once, when JAX initialises its backends: after that, `use_inference_flags()` can only
report that it is too late. Flags already in XLA_FLAGS are left as they are; `SYNCHFORMER_XLA_CPU_DEFAULTS=1`
keeps XLA's own defaults.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform

INFERENCE_FLAGS = {'xla_cpu_experimental_ynn_fusion_type': '', 'xla_cpu_use_onednn': 'true',
                   'xla_cpu_experimental_onednn_custom_call': 'true'}
KEEP_DEFAULTS_ENV = 'SYNCHFORMER_XLA_CPU_DEFAULTS'

# The vector extensions that decide which kernels XLA:CPU, oneDNN and torch use: /proc/cpuinfo flag -> name.
ISA_FLAGS = {'avx2': 'AVX2', 'avx512f': 'AVX-512', 'avx512_bf16': 'AVX512-BF16', 'amx_tile': 'AMX'}


def cpu_info(key: str) -> str | None:
  """The first `key` line of /proc/cpuinfo (Linux), or None."""
  try:
    with open('/proc/cpuinfo') as f:
      return next((line.split(':', 1)[1].strip() for line in f if line.startswith(key)), None)
  except OSError:
    return None


@functools.cache
def cpu_isa() -> tuple[str, ...]:
  """The CPU's vector extensions among `ISA_FLAGS`, by name ('AVX2', 'AVX-512', 'AVX512-BF16', 'AMX')."""
  flags = set((cpu_info('flags') or '').split())
  return tuple(name for flag, name in ISA_FLAGS.items() if flag in flags)


def has_bf16_matmul_units() -> bool:
  """AMX tiles or AVX512-BF16: bfloat16 products run faster than float32 ones (without them, slower)."""
  return bool({'AMX', 'AVX512-BF16'} & set(cpu_isa()))


def release_free_memory() -> None:
  """Hands memory the process has freed back to the OS, where glibc's allocator holds it (Linux; elsewhere nothing).

  glibc keeps freed blocks below its mmap threshold (which grows to 32 MiB) for reuse; restoring a model and tracing
  it free many such blocks, and kept they add to the peak memory of the first forward (0.3 GiB for the full
  Stage II model; BENCHMARKS.md, issue 18)."""
  try:
    trim = ctypes.CDLL(None).malloc_trim
  except (OSError, AttributeError):  # not glibc
    return
  trim(0)


def backends_initialised() -> bool:
  from jax._src import xla_bridge  # the public API has no "backends initialised?" query
  return xla_bridge.backends_are_initialized()


def inference_flags_set() -> bool:
  """Whether XLA_FLAGS holds every one of `INFERENCE_FLAGS` (or the user keeps XLA's defaults on purpose)."""
  current = os.environ.get('XLA_FLAGS', '')
  return os.environ.get(KEEP_DEFAULTS_ENV) == '1' or all(f'--{name}=' in current for name in INFERENCE_FLAGS)


def use_inference_flags() -> list[str]:
  """Adds `INFERENCE_FLAGS` to XLA_FLAGS on x86 (oneDNN is x86-only), unless `SYNCHFORMER_XLA_CPU_DEFAULTS=1`.

  Returns the flags added: none when they are set already, when the machine is not x86, or when JAX's backends
  are initialised (too late: see `backends_initialised`).
  """
  if os.environ.get(KEEP_DEFAULTS_ENV) == '1' or platform.machine().lower() not in ('x86_64', 'amd64'):
    return []
  if backends_initialised():
    return []
  current = os.environ.get('XLA_FLAGS', '')
  added = [f'--{name}={value}' for name, value in INFERENCE_FLAGS.items() if f'--{name}=' not in current]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  return added
