"""Shared test helpers: where ../shared lives, and the rule that a missing fixture fails in CI."""
import importlib
import os
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
