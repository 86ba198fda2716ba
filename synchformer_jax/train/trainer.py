"""Train state, losses and the jitted train / eval steps for every stage.

The state is the NNX pair (model, optimizer), split into a graph definition and a pytree of arrays
that jit takes with explicit shardings and donates. Stage I trains both towers with the segment
contrastive loss; Stage II / III keep the towers frozen and in eval mode (their features are computed
under `stop_gradient`, or precomputed) and train the projections, transformer and head. SparseSync trains
end to end with every BatchNorm in train mode, as the original does: batch statistics over the global batch,
and the running statistics, part of the state, updated by every step.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from synchformer_jax import sharding
from synchformer_jax.constants import TARGET_KEY
from synchformer_jax.models import Buffer, build_model, classification_loss
from synchformer_jax.models.config import ModelConfig, SparseSyncConfig
from synchformer_jax.train.optim import make_optimizer

FROZEN_TOWERS = ('vfeat_extractor', 'afeat_extractor')


def trainable(kind: str):
  """The parameters a stage trains (an NNX filter)."""
  if kind in ('avclip', 'sparsesync'):
    return nnx.Param
  return nnx.All(nnx.Param, nnx.Not(nnx.Any(*(nnx.PathContains(t) for t in FROZEN_TOWERS))))


@dataclasses.dataclass
class Trainer:
  """Holds the graph definition, the shardings and the compiled steps; the state itself is a pytree."""
  model_cfg: ModelConfig | SparseSyncConfig
  mesh: Mesh
  graphdef: Any
  state_shardings: Any
  train_step: Callable
  eval_step: Callable

  def merge(self, state) -> tuple[nnx.Module, nnx.Optimizer]:
    return nnx.merge(self.graphdef, state)


def _set_modes(model: nnx.Module, kind: str) -> None:
  model.train()
  if kind in ('sync', 'synchability'):  # the original keeps the frozen towers in eval mode while training Stage II
    for tower in FROZEN_TOWERS:
      getattr(model, tower).eval()


def _classifier_logits(model, batch, kind: str) -> jax.Array:
  if kind == 'sparsesync':
    return model(batch['video'], batch['audio'])[0]
  if 'vfeat' in batch:  # features precomputed once by the frozen towers
    vfeat, afeat = batch['vfeat'], batch['afeat']
  else:
    vfeat, afeat = jax.lax.stop_gradient(model.extract_features(batch['video'], batch['audio']))
  return model.classify(vfeat, afeat)


def loss_and_metrics(model: nnx.Module, batch: dict[str, jax.Array], kind: str) -> tuple[jax.Array, dict]:
  if kind == 'avclip':
    loss, aux = model(batch['video'], batch['audio'])
    return loss, {'logit_scale': aux['logit_scale']}
  logits = _classifier_logits(model, batch, kind)
  targets = batch[TARGET_KEY[kind]]
  loss = classification_loss(logits, targets)
  return loss, {'accuracy': jnp.mean(jnp.argmax(logits, -1) == targets)}


def _builder(model_cfg: ModelConfig, optim_cfg, total_steps: int, seed: int,
             init_params: Callable[[nnx.Module], None] | None = None) -> Callable[[], tuple]:
  tx = make_optimizer(optim_cfg, total_steps)
  wrt = trainable(model_cfg.kind)

  def build():
    model = build_model(model_cfg, seed)
    if init_params is not None:
      init_params(model)
    return model, nnx.Optimizer(model, tx, wrt=wrt)
  return build


def create_state(model_cfg: ModelConfig, optim_cfg, total_steps: int, mesh: Mesh, seed: int,
                 init_params: Callable[[nnx.Module], None] | None = None):
  """(graphdef, state, state shardings): model and optimiser created directly in their shards.

  `init_params(model)` may overwrite parameters (pretrained towers) before the optimiser state is made.
  """
  model, optimizer = sharding.create_sharded(_builder(model_cfg, optim_cfg, total_steps, seed, init_params), mesh)
  graphdef, state = nnx.split((model, optimizer))
  return graphdef, state, jax.tree.map(lambda x: x.sharding, state)


def abstract_state(model_cfg: ModelConfig, optim_cfg, total_steps: int, mesh: Mesh, seed: int = 0):
  """(graphdef, state as `jax.ShapeDtypeStruct`s with their shardings): what `create_state` would make, with no
  memory for it (to compile the steps ahead of time, e.g. for devices this host does not have)."""
  graphdef, shapes = nnx.split(nnx.eval_shape(_builder(model_cfg, optim_cfg, total_steps, seed)))
  shardings = sharding.state_shardings(shapes, mesh)
  return graphdef, jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def parameter_counts(model_cfg: ModelConfig) -> dict[str, int]:
  """Parameters of a model ('params') and those its stage trains ('trainable'), from shapes alone."""
  model = nnx.eval_shape(lambda: build_model(model_cfg))
  count = lambda state: sum(math.prod(x.shape) for x in jax.tree.leaves(state))
  return {'params': count(nnx.state(model, nnx.Param)),
          'trainable': count(nnx.state(model, trainable(model_cfg.kind)))}


def model_variables(state) -> nnx.State:
  """The model's parameters and buffers in a train state (what a model directory stores), not the optimiser's."""
  return nnx.filter_state(state[0], nnx.Any(nnx.Param, Buffer))


def _micro_batches(batch: dict[str, jax.Array], count: int) -> dict[str, jax.Array]:
  """(B, ...) → (count, B / count, ...): micro-batch i takes rows i, i + count, ... so that every device keeps its
  own rows (the batch is split over devices along B)."""
  def split(x):
    x = x.reshape(x.shape[0] // count, count, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def make_trainer(model_cfg: ModelConfig, mesh: Mesh, graphdef, state_shardings, grad_accum: int = 1) -> Trainer:
  """The jitted steps. With `grad_accum` k > 1 a train step takes the whole batch of an optimiser step and runs
  it as k micro-batches in a `lax.scan`, averaging their gradients and metrics before one update."""
  kind = model_cfg.kind
  wrt = trainable(kind)
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  grad_fn = nnx.value_and_grad(lambda m, b: loss_and_metrics(m, b, kind), has_aux=True,
                               argnums=nnx.DiffState(0, wrt))

  def accumulated_grads(model, batch):
    micro = jax.lax.with_sharding_constraint(_micro_batches(batch, grad_accum),
                                             NamedSharding(mesh, PartitionSpec(None, sharding.BATCH_AXES)))
    model_def, params, rest = nnx.split(model, wrt, ...)

    def micro_step(carry, micro_batch):
      rest, grad_sum = carry
      # The parameters come from outside the loop: fresh Variables for them, made in the loop's trace.
      m = nnx.merge(model_def, jax.tree.map(lambda x: x, params), rest)
      (loss, metrics), grads = grad_fn(m, micro_batch)
      return (nnx.split(m, wrt, ...)[2], jax.tree.map(jnp.add, grad_sum, grads)), (loss, metrics)

    zeros = jax.tree.map(jnp.zeros_like, params)
    (rest, grad_sum), (losses, metrics) = jax.lax.scan(micro_step, (rest, zeros), micro)
    nnx.update(model, rest)  # the random streams advanced over the micro-batches
    mean = lambda x: jnp.mean(x, axis=0)
    return (mean(losses), jax.tree.map(mean, metrics)), jax.tree.map(lambda g: g / grad_accum, grad_sum)

  def train_step(state, batch):
    with sharding.activation_sharding(mesh):
      model, optimizer = nnx.merge(graphdef, state)
      _set_modes(model, kind)
      if kind == 'avclip':
        model.clamp_logit_scale()
      if grad_accum == 1:
        (loss, metrics), grads = grad_fn(model, batch)
      else:
        (loss, metrics), grads = accumulated_grads(model, batch)
      optimizer.update(model, grads)
      metrics = {**metrics, 'loss': loss, 'grad_norm': optax.tree.norm(grads)}
      return nnx.split((model, optimizer))[1], metrics

  def eval_step(state, batch):
    with sharding.activation_sharding(mesh):
      model, _ = nnx.merge(graphdef, state)
      model.eval()
      if kind == 'avclip':
        vfeat, afeat = model.embed_segments(batch['video'], batch['audio'])
        # The temperature per segment row, so that it is gathered and un-padded like the embeddings.
        temperature = jnp.broadcast_to(model.logit_scale[...], vfeat.shape[:1])
        return {'segment_vfeat': vfeat, 'segment_afeat': afeat, 'temperature': temperature}
      return {'logits': _classifier_logits(model, batch, kind)}

  return Trainer(
      model_cfg, mesh, graphdef, state_shardings,
      train_step=jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, replicated), donate_argnums=0),
      eval_step=jax.jit(eval_step, in_shardings=(state_shardings, batch_sharding), out_shardings=replicated))
