"""The package's layering, read from its imports (AST, function-level imports included): a forbidden edge fails.

  constants, errors                      the task's facts and the bad-input error: import nothing of the package
  models | data | metrics | plots        independent of each other (data also imports no JAX)
  sharding | checkpointing | pretrained  device placement; orbax; model directories
  conversion                             PyTorch checkpoints (torch: here, in torch_exec and benchmarks)
  torch_exec                             a jaxpr run by torch kernels (CPU bfloat16 inference)
  train | inference                      neither imports the other
  scaling                                sweeps over the trainer, and their fits
  benchmarks                             on top; scripts are thin entry points above it all
"""
import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

BASE = {'constants', 'errors'}
ALLOWED = {
    'constants': set(), 'errors': set(), 'cpu': set(), 'sharding': set(), 'plots': set(),
    'models': BASE, 'data': BASE, 'metrics': BASE,
    'checkpointing': BASE,
    'pretrained': BASE | {'models', 'checkpointing', 'cpu'},
    'torch_exec': BASE | {'models'},
    'conversion': BASE | {'models', 'checkpointing', 'pretrained'},
    'train': BASE | {'models', 'data', 'metrics', 'plots', 'sharding', 'checkpointing', 'pretrained'},
    'inference': BASE | {'models', 'data', 'metrics', 'plots', 'checkpointing', 'pretrained', 'cpu', 'torch_exec'},
    'scaling': BASE | {'models', 'plots', 'train'},
    'benchmarks': BASE | {'models', 'data', 'metrics', 'plots', 'sharding', 'checkpointing', 'pretrained', 'train',
                          'inference', 'conversion', 'cpu', 'torch_exec'},
    '__init__': {'pretrained'},
}
# Third-party packages only some components may import.
RESTRICTED = {'orbax': {'checkpointing'}, 'torch': {'conversion', 'torch_exec', 'benchmarks'}, 'matplotlib': {'plots'},
              'tensorboardX': {'train'}}
NOT_IN_DATA = ('jax', 'jaxlib', 'flax', 'optax', 'absl')


def _imports(tree: ast.AST, package: str, module: str) -> list[tuple[int, str]]:
  """(line, dotted name) of every import in a module, relative imports resolved."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parent = module.split('.')[:-node.level]
        base = '.'.join(parent + ([base] if base else []))
      if base == package:  # `from package import component`: each name is a component
        found += [(node.lineno, f'{package}.{alias.name}') for alias in node.names]
      else:
        found.append((node.lineno, base))
  return found


def forbidden_imports(package_dir: Path) -> list[str]:
  package = package_dir.name
  problems = []
  for path in sorted(package_dir.rglob('*.py')):
    relative = path.relative_to(package_dir)
    component = relative.parts[0].removesuffix('.py')
    module = '.'.join((package, *relative.with_suffix('').parts))
    if component not in ALLOWED:
      problems.append(f'{relative}: component {component!r} has no place in the layering')
      continue
    for line, name in _imports(ast.parse(path.read_text()), package, module):
      parts = name.split('.')
      where = f'{relative}:{line} imports {name}'
      if parts[0] == package and len(parts) > 1:
        if parts[1] != component and parts[1] not in ALLOWED[component]:
          problems.append(f'{where}: {component} may not import {parts[1]}')
      elif parts[0] in RESTRICTED and component not in RESTRICTED[parts[0]]:
        problems.append(f'{where}: only {sorted(RESTRICTED[parts[0]])} may import {parts[0]}')
      elif component == 'data' and parts[0] in NOT_IN_DATA:
        problems.append(f'{where}: data imports no JAX, Flax, Optax or absl')
  return problems


def test_the_package_keeps_its_layers():
  assert forbidden_imports(REPO_ROOT / 'synchformer_jax') == []


def test_forbidden_edges_are_found(tmp_path):
  package = tmp_path / 'synchformer_jax'
  for folder in ('data', 'train', 'models'):
    (package / folder).mkdir(parents=True)
  (package / 'data' / 'loader.py').write_text('import jax\nfrom synchformer_jax.models import build_model\n')
  (package / 'train' / 'loop.py').write_text('def f():\n  from synchformer_jax import inference\n  import torch\n')
  (package / 'models' / 'layers.py').write_text('from ..constants import OFFSET_GRID\nfrom . import config\n')
  (package / 'scratch.py').write_text('')
  assert forbidden_imports(package) == [
      'data/loader.py:1 imports jax: data imports no JAX, Flax, Optax or absl',
      'data/loader.py:2 imports synchformer_jax.models: data may not import models',
      "scratch.py: component 'scratch' has no place in the layering",
      'train/loop.py:2 imports synchformer_jax.inference: train may not import inference',
      "train/loop.py:3 imports torch: only ['benchmarks', 'conversion', 'torch_exec'] may import torch",
  ]
