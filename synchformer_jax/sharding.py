"""Device meshes and logical-axis sharding rules (MaxText style).

Model parameters are annotated with logical axes (`embed`, `mlp`, `qkv`); `LOGICAL_RULES` maps them to
mesh axes. The default mesh has axes `data` (pure data parallel), `fsdp` (data parallel whose
parameters and optimiser state are split across it, ZeRO-3 style) and `tensor` (splits MLP and
attention widths). A batch is split over `data` × `fsdp`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')
LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('qkv', 'tensor'),
)


# Activations: split over the batch; whole along tokens and width between blocks (a `tensor` split of the MLP and
# the heads happens inside a block, where the weights put it).
ACTIVATION_RULES: tuple[tuple[str, Any], ...] = (
    ('activation_batch', BATCH_AXES),
    ('activation_length', None),
    ('activation_embed', None),
)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=ACTIVATION_RULES) -> Iterator[None]:
  """Inside a traced step: the model's activation constraints (`models.layers.constrain`) bind to `mesh`."""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nnx.logical_axis_rules(rules):
    yield


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `MESH_AXES`; one axis may be -1 to take the remaining devices.

  Axes are `Auto`: parameters and batches carry explicit shardings and XLA propagates them through
  the model; between blocks the model pins its activations (`activation_sharding`).
  """
  devices = list(devices if devices is not None else jax.devices())
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'mesh: unknown axes {sorted(unknown)}, expected a subset of {MESH_AXES}')
  sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f'mesh: sizes must be positive, with at most one -1; got {dict(shape)}')
  known = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if len(devices) % known:
      raise ValueError(f'mesh: {len(devices)} devices do not divide by {known} ({dict(shape)})')
    sizes[free[0]] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f'mesh: {dict(sizes)} needs {math.prod(sizes.values())} devices, {len(devices)} are available')
  return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def logical_to_mesh(spec: PartitionSpec, rules: Sequence[tuple[str, str | None]] = LOGICAL_RULES) -> PartitionSpec:
  """Logical axis names → mesh axes; names without a rule are replicated."""
  table = dict(rules)
  return PartitionSpec(*(table.get(name) if isinstance(name, str) else None for name in spec))


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Replicates any dimension the mesh axis does not divide (e.g. a 21-way head over 4 devices)."""
  return PartitionSpec(*(axis if axis is None or shape[i] % mesh.shape[axis] == 0 else None
                         for i, axis in enumerate(spec)))


def state_shardings(abstract_state: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
  """NamedShardings for an nnx state (abstract or concrete), from the variables' logical axes."""
  specs = nnx.get_partition_spec(abstract_state)
  return jax.tree.map(
      lambda spec, leaf: NamedSharding(mesh, _fit(logical_to_mesh(spec, rules), leaf.shape, mesh)),
      specs, abstract_state, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


# XLA:CPU optimises an initialisation program (hundreds of random draws of distinct shapes) slowly and runs it
# once: a tiny SparseSync's took 70 s to compile on 2 cores, 15 s at optimisation level 0.
CPU_INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def create_sharded(build: Callable[[], Any], mesh: Mesh, rules=LOGICAL_RULES) -> Any:
  """Builds NNX object(s) with every variable created directly in its shards (no full host copy)."""
  graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
  shardings = state_shardings(abstract_state, mesh, rules)
  lowered = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings).lower()
  on_cpu = all(d.platform == 'cpu' for d in mesh.devices.flat)
  state = lowered.compile(compiler_options=CPU_INIT_COMPILER_OPTIONS if on_cpu else None)()
  return nnx.merge(graphdef, state)


def to_global_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Every process's local batch (numpy arrays) as global arrays split over the mesh's batch axes.

  The leading (batch) dimension of each local array is this process's share; the global batch is the
  concatenation over processes in process order.
  """
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value) for name, value in batch.items()}
