"""Shared test helpers: where ../shared lives, and the rule that a missing fixture fails in CI; one XLA
compilation cache for the whole run, and the most expensive tests scheduled first."""
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get('SYNCHFORMER_SHARED_DIR', REPO_ROOT.parent / 'shared'))


def in_ci() -> bool:
  return os.environ.get('CI', '').lower() == 'true'


def missing(message: str):
  """A test's prerequisite is absent: skip locally, fail in CI (CI=true), where nothing may be skipped."""
  pytest.fail(message) if in_ci() else pytest.skip(message)  # CI: fail


def require_fixture(path: Path, what: str) -> Path:
  """Returns `path`, or reports it missing."""
  path = Path(path)
  if not path.exists():
    missing(f'missing test fixture: {what} at {path}')
  return path


def case_dirs(root: Path) -> list[Path]:
  """Case folders under `root` (each holds a case.json), found at collection time."""
  root = Path(root)
  return sorted(p for p in root.iterdir() if (p / 'case.json').is_file()) if root.is_dir() else []


def require_optional(module: str, extra: str):
  """An optional dependency (a pyproject extra): skipped when missing locally, a failure in CI."""
  try:
    return importlib.import_module(module)
  except ImportError:
    missing(f"{module} is not installed (pip install -e '.[{extra}]'; CI installs it)")


def require_torch():
  """torch reads/writes the original's checkpoints."""
  return require_optional('torch', 'torch')


# One persistent XLA compilation cache per test run, shared by the xdist workers and every process a test
# starts (training runs, scripts): a program that several tests or processes compile (a resumed run's steps,
# features extracted again) is compiled once. A different program (other shapes, shardings, device counts,
# XLA flags) has another key, so the cache never stands in for a compilation a test would otherwise do.
_CACHE_DIR_ENV = 'JAX_COMPILATION_CACHE_DIR'


def pytest_configure(config):
  # The tests run XLA:CPU as inference does by default (`synchformer_jax.cpu`), in this process and in those it
  # starts; before any test module initialises JAX.
  from synchformer_jax import cpu
  cpu.use_inference_flags()
  if hasattr(config, 'workerinput') or os.environ.get(_CACHE_DIR_ENV):
    return  # an xdist worker inherits the controller's environment; a cache the caller chose is kept
  directory = tempfile.mkdtemp(prefix='synchformer_jax_xla_cache_')
  config._synchformer_xla_cache = directory
  os.environ[_CACHE_DIR_ENV] = directory
  if importlib.util.find_spec('filelock'):  # a size limit makes JAX lock the entries it reads and writes
    os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(16 << 30))
  if 'jax' in sys.modules:
    import jax
    jax.config.update('jax_compilation_cache_dir', directory)


def pytest_unconfigure(config):
  directory = getattr(config, '_synchformer_xla_cache', None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)


# The longest tests (minutes on 2 cores), longest first: started first, they run side by side on the two
# xdist workers instead of last on one of them. Others keep their collection order.
_LONGEST_FIRST = (
    'tests/train/test_multihost.py::',
    'tests/train/test_resume.py::test_sigterm_and_sigkill',
    'tests/train/test_sparsesync_training.py::test_trains_end_to_end_and_resumes_after_sigkill',
    'tests/test_sparsesync_model.py::test_remat_gives_the_same',
    'tests/test_sparsesync_model.py::test_batch_statistics_are_over_the_global_batch',
    'tests/train/test_features.py::',
    'tests/train/test_stages.py::test_stage1_then_the_fine_tune',
    'tests/scaling/test_sweep.py::test_two_points_train_through_the_real_trainer',
    'tests/benchmarks/test_compile_for.py::test_stage1_with_fsdp',
    'tests/train/test_multidevice.py::test_a_checkpoint_of_another_model',
    'tests/benchmarks/test_head_probe.py::test_with_the_beacon',
    'tests/parity/test_models_vs_reference.py::test_model_vs_reference[sync_full]',
    'tests/train/test_sharding.py::test_stage2',
    'tests/train/test_sharding.py::test_stage1',
    'tests/parity/test_models_vs_reference.py::test_model_vs_reference[avclip_full]',
    'tests/test_models.py::test_every_remat_policy_gives_the_same_gradients',
    'tests/train/test_loop.py::test_nan_loss',
    'tests/benchmarks/test_harness.py::test_train_step_benchmark',
)


def _rank(item) -> int:
  return next((i for i, prefix in enumerate(_LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(_LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
  items.sort(key=_rank)  # stable: the rest keep their order


def random_model_dir(directory: Path, target: str, cfg, seed: int = 0) -> str:
  """A model directory of `target` with random variables drawn in NumPy: no initialiser runs, so it costs a save
  (building a SparseSync trunk eagerly compiles one small program per kernel shape, most of a minute on 2 cores)."""
  import numpy as np
  from flax import nnx

  from synchformer_jax import pretrained
  from synchformer_jax.models import build_target, stored_variables

  rng = np.random.default_rng(seed)
  shapes = stored_variables(nnx.eval_shape(lambda: build_target(target, cfg)))
  variables = {name: (np.full(var.shape, seed, var.dtype) if np.issubdtype(var.dtype, np.integer)
                      else rng.normal(0.0, 0.05, var.shape).astype(var.dtype) + (name.endswith(('.var', '.scale'))))
               for name, var in shapes.items()}
  pretrained.save_variables(variables, str(directory), target, cfg)
  return str(directory)
