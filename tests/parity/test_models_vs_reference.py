"""Numerical parity with the original PyTorch Synchformer and SparseSync, case by case.

Every case folder of every case set in $SYNCHFORMER_PARITY_DIR (folders separated by ':'; default
../shared/parity/cases and ../shared/parity/sparsesync_cases) is a test: its checkpoint (regenerated with the
case set's make_weights.py when the folder ships none) goes through the converter's CLI code path into a model
directory, the model is loaded with `synchformer_jax.load`, run in float32 on the case's inputs, and every
reference output is compared at the parity README's tolerances, or at the case's own `tolerances` for the
outputs it names. The worst error of each output is printed (`pytest -s` shows it).
"""
import importlib.util
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import synchformer_jax
from synchformer_jax.conversion import convert_checkpoint
from synchformer_jax.models.config import config_from_size_params
from tests.conftest import SHARED_DIR, case_dirs, missing, require_fixture, require_torch

_DEFAULT_SETS = (SHARED_DIR / 'parity' / 'cases', SHARED_DIR / 'parity' / 'sparsesync_cases')
PARITY_DIRS = [Path(d) for d in os.environ['SYNCHFORMER_PARITY_DIR'].split(':') if d] \
    if os.environ.get('SYNCHFORMER_PARITY_DIR') else list(_DEFAULT_SETS)
SYNCHFORMER_KINDS = ('sync', 'synchability', 'avclip')


def case_params():
  params = []
  for parity_dir in PARITY_DIRS:
    cases = case_dirs(parity_dir)
    if not cases:  # one test that reports the missing fixtures (fails in CI)
      params.append(pytest.param(parity_dir, id=f'no-cases-in-{parity_dir.name}'))
    for case_dir in cases:
      size = json.loads((case_dir / 'case.json').read_text()).get('size')
      marks = [pytest.mark.slow] if size == 'full' else []
      params.append(pytest.param(case_dir, id=case_dir.name, marks=marks))
  return params


def _make_weights_module(case_dir: Path):
  """The case set's own make_weights.py (beside the cases folder)."""
  path = require_fixture(case_dir.parent.parent / 'make_weights.py', 'parity make_weights.py')
  spec = importlib.util.spec_from_file_location('parity_make_weights', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tolerance(case: dict, name: str, reference: np.ndarray) -> tuple[float, float]:
  """(atol, rtol): the case's own bound for this output, else the parity README's for its size."""
  if name in case.get('tolerances', {}):
    return float(case['tolerances'][name]), 0.0
  if case['size'] == 'full':
    return 1e-3 * max(1.0, float(np.abs(reference).max(initial=0.0))), 0.0
  return 1e-4, 1e-4


def run_model(model, kind: str, inputs: dict[str, np.ndarray], targets: np.ndarray | None,
              engine: str = 'xla') -> dict[str, np.ndarray]:
  """The model's outputs under the reference's names, run by XLA (`jax.jit`) or by the CPU torch engine
  (`synchformer_jax.torch_exec`: the same jaxpr on torch's kernels, inputs and weights on the host)."""
  graphdef, state = nnx.split(model)

  def forward(state, video, audio, targets):
    model = nnx.merge(graphdef, state)
    if kind == 'avclip':
      loss, aux = model(video, audio)
      return {**aux, 'loss': loss}
    logits, aux = model(video, audio, targets)
    return {**aux, 'logits': logits}

  if engine == 'torch':
    from synchformer_jax import torch_exec
    fn, state = torch_exec.TorchFunction(forward), jax.device_get(state)
  else:
    fn = jax.jit(forward)
  out = fn(state, np.asarray(inputs['video']), np.asarray(inputs['audio']), targets)
  return {k: np.asarray(v) for k, v in out.items()}


def convert_case(case_dir: Path, tmp_path: Path):
  """(case.json, the case set's make_weights module, a model directory of the case's converted checkpoint)."""
  if not (case_dir / 'case.json').is_file():  # a case set without cases
    missing(f'missing test fixture: parity cases in {case_dir}')
  case = json.loads((case_dir / 'case.json').read_text())
  kind = case['kind']
  if kind not in (*SYNCHFORMER_KINDS, 'sparsesync'):
    pytest.fail(f'{case_dir.name}: parity case kind {kind!r} has no synchformer_jax model')
  make_weights = _make_weights_module(case_dir)
  checkpoint = case_dir / 'checkpoint.pt'
  if not checkpoint.exists():
    require_torch()
    checkpoint = Path(make_weights.write_checkpoint(str(case_dir), str(tmp_path / 'checkpoint.pt')))

  # SparseSync's shapes tell its whole architecture (classes, widths, input size); the converter reads them.
  cfg = config_from_size_params(kind, case['size_params']) if kind in SYNCHFORMER_KINDS else None
  conversion = convert_checkpoint(str(checkpoint), str(tmp_path / 'model'), config=cfg)
  assert conversion.target == kind
  assert conversion.missing == [] and conversion.unused == []
  if checkpoint.parent == tmp_path:
    checkpoint.unlink()  # free the disk before running the full-size model
  return case, make_weights, str(tmp_path / 'model')


def _torch_engine_case_params():
  """The reduced-size cases; SYNCHFORMER_TORCH_ENGINE_FULL=1 adds the full-size ones (minutes each on the
  torch engine: a measurement for BENCHMARKS.md rather than part of the suite's budget)."""
  with_full = os.environ.get('SYNCHFORMER_TORCH_ENGINE_FULL') == '1'
  return [p for p in case_params() if with_full or 'full' not in p.id]


@pytest.mark.parametrize('case_dir', case_params())
def test_model_vs_reference(case_dir, tmp_path):
  _check_vs_reference(case_dir, tmp_path, 'xla')


@pytest.mark.parametrize('case_dir', _torch_engine_case_params())
def test_model_on_the_torch_engine_vs_reference(case_dir, tmp_path):
  """The CPU torch engine (inference's bfloat16 path on CPUs with AMX), here in float32 at the same tolerances."""
  require_torch()
  _check_vs_reference(case_dir, tmp_path, 'torch')


def _check_vs_reference(case_dir: Path, tmp_path: Path, engine: str):
  case, make_weights, model_dir = convert_case(case_dir, tmp_path)
  kind = case['kind']
  model = synchformer_jax.load(model_dir)
  # The case counts floating-point tensors (BatchNorm's integer counters are not among them).
  stored = jax.tree.leaves(nnx.state(model, (nnx.Param, synchformer_jax.models.layers.Buffer)))
  assert sum(int(np.prod(p.shape)) for p in stored if jnp.issubdtype(p.dtype, jnp.floating)) == case['n_params']

  reference = dict(np.load(case_dir / 'outputs.npz'))
  targets = reference.pop('targets', None)
  outputs = run_model(model, kind, make_weights.case_inputs(str(case_dir)), targets, engine)
  failures = []
  for name, ref in reference.items():
    got = outputs[name]
    assert got.shape == ref.shape, f'{name}: shape {got.shape}, reference {ref.shape}'
    atol, rtol = _tolerance(case, name, ref)
    worst = float(np.abs(got - ref).max(initial=0.0))
    print(f'{case_dir.name} ({engine}): {name:<16} worst |err| {worst:.3e} (atol {atol:.1e}, rtol {rtol:.0e})')
    if not np.allclose(got, ref, atol=atol, rtol=rtol):
      failures.append(f'{name}: worst |err| {worst:.3e} exceeds atol {atol:.1e} / rtol {rtol:.0e}')
  assert not failures, '; '.join(failures)
