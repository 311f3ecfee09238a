"""A run's program: the model object, its optimizer, the train state's layout and the jitted
step, built from abstract shapes only.

`flix.train` builds its step here and then fills the state (`initial_state`); `flix.compile`
builds the same program and compiles it for a target without allocating anything the size of
the model (`flix.training.aot`). So what is compiled for a pod is what trains on it.

Layout: parameters are sharded by their logical axis names (`Partitioner.shardings`:
`param_rules`, feature tables' feature axis where `feature_shard_rows` says); each optimizer
state leaf is sharded like its parameter (`Partitioner.like_params`: Adam's moments, Adafactor's
full or factored second moments, per-row counts), other leaves (step counts) are replicated, as
are the step counter and the rng. Batches are sharded over 'data'. The step traces under the
partitioner's activation rules (`Partitioner.activation_rules`) and donates the state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flix.config import FlixConfig
from flix.data.converter import feature_converter
from flix.models.model import BaseModel, make_model
from flix.trainable import freeze_base, trainable_mask
from flix.training.partitioning import Partitioner
from flix.training.sparse_step import make_row_sparse_train_step
from flix.training.state import TrainState
from flix.training.step import StepConfig, make_train_step


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """What a run trains, laid out over a mesh, with no array allocated.

  Attributes:
    model: the model object (its network's `flix` holds the adapters, or None).
    optimizer: the run's optimizer with the base frozen for methods 'flix' and 'lora'
      (`flix.trainable.freeze_base`).
    method: 'flix', 'lora' or 'full'.
    n_types: the length of the data's feature ids (the batch's `feature_ids` `[batch, n_types]`).
    step_config: dense or row-sparse, lazy rows (`flix.training.step.StepConfig`).
    partitioner: the mesh and the logical axis rules.
    state: the train state as `jax.ShapeDtypeStruct` leaves carrying their NamedShardings.
  """

  model: BaseModel
  optimizer: optax.GradientTransformation
  method: str
  n_types: int
  step_config: StepConfig
  partitioner: Partitioner
  state: TrainState

  @property
  def flix(self) -> FlixConfig | None:
    return self.model.flix

  def shardings(self) -> TrainState:
    """The state's NamedShardings (a TrainState of them)."""
    return jax.tree.map(lambda x: x.sharding, self.state)

  def step_fn(self) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted `(state, batch) -> (state, metrics)` step; it donates the state."""
    mask = trainable_mask(self.state.params, self.method)
    make_step = (make_row_sparse_train_step if self.step_config.row_sparse
                 else make_train_step)
    shardings = self.shardings()
    step = make_step(self.model, self.optimizer, mask, self.step_config)

    def constrained(state, batch):
      with self.partitioner.activation_rules():
        return step(state, batch)

    return jax.jit(constrained, in_shardings=(shardings, self.partitioner.batch_sharding()),
                   out_shardings=(shardings, self.partitioner.replicated()),
                   donate_argnums=0)

  def batch(self, task_feature_lengths: Mapping[str, int], batch_size: int,
            pack: bool) -> dict[str, jax.ShapeDtypeStruct]:
    """The global training batch the family's feature converter gives for these lengths, as
    int32 `jax.ShapeDtypeStruct`s `[batch_size, length]` sharded over 'data'."""
    converter = feature_converter(self.model, self.n_types, pack=pack)
    lengths = converter.get_model_feature_lengths(dict(task_feature_lengths))
    sharding = self.partitioner.batch_sharding()
    return {name: jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=sharding)
            for name, length in sorted(lengths.items())}


def build_program(model_config: Any, flix: FlixConfig | None, n_types: int, *, method: str,
                  feature_dropout: float, optimizer: optax.GradientTransformation,
                  step_config: StepConfig, partitioner: Partitioner) -> TrainProgram:
  """The model of `model_config` with adapters `flix`, `optimizer` on its trained leaves, and
  the state's layout over `partitioner`'s mesh."""
  model = make_model(model_config, flix, feature_dropout=feature_dropout,
                     remat_policy=step_config.remat_policy,
                     scan_layers=step_config.scan_layers)
  boxed = jax.eval_shape(lambda: model.init_params(jax.random.key(0)))
  shapes = nn.unbox(boxed)
  params = jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                 sharding=sharding),
                        shapes, partitioner.shardings(boxed))
  optimizer = freeze_base(optimizer, shapes, method)
  replicated = partitioner.replicated()
  rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                     params=params, opt_state=_abstract_opt_state(optimizer, params, partitioner),
                     rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated))
  return TrainProgram(model=model, optimizer=optimizer, method=method, n_types=n_types,
                      step_config=step_config, partitioner=partitioner, state=state)


def _abstract_opt_state(optimizer: optax.GradientTransformation, params: Any,
                        partitioner: Partitioner) -> Any:
  """`optimizer.init(params)`'s shapes, each sharded like its parameter
  (`Partitioner.like_params`; others replicated)."""
  shapes = jax.eval_shape(optimizer.init, params)
  shardings = partitioner.like_params(shapes, params)
  return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                               sharding=sharding),
                      shapes, shardings)


def initial_state(program: TrainProgram, params: Any, random_seed: int) -> TrainState:
  """Step 0 of `program` from plain `params`: laid out as `program.state`, their optimizer
  state and the run's rng."""
  shardings = program.shardings()
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(program.optimizer.init, out_shardings=shardings.opt_state)(params)
  root = jax.random.key(random_seed)
  return TrainState(step=jax.device_put(jnp.int32(0), shardings.step), params=params,
                    opt_state=opt_state,
                    rng=jax.device_put(jax.random.key_data(jax.random.fold_in(root, 1)),
                                       shardings.rng))


def state_bytes_per_device(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded `jax.ShapeDtypeStruct`s (or arrays): each
  leaf's shard shape (`sharding.shard_shape`) times its item size; no layout padding."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total
