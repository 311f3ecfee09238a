"""One training step (a pure function, jit-compiled by the loop) over a model object.

Feature-table rows are updated lazily on every path: a row whose feature is absent from the
batch (or dropped by feature dropout) keeps its params and optimizer state bitwise unchanged, as
in the row-sparse step (`flix.training.sparse_step`), so each feature's adapter trains only on
its own examples and never moves by momentum or weight decay alone. With a row-separable
optimizer (`make_optimizer(per_row=True)`, the default) the two paths give the same updates.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import optax

from flix.models import remat
from flix.models.model import BaseModel
from flix.rows import active_row_mask, check_row_indexable, keep_inactive_rows
from flix.training.state import TrainState

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """How a train step runs.

  Attributes:
    row_sparse: gradients and optimizer updates are computed on the batch's active table rows
      only (`flix.training.sparse_step`): the step's cost does not grow with the number of
      feature values. Needs a row-separable optimizer (make_optimizer.per_row).
    lazy_rows: on the dense path, rows absent from the batch keep their params and optimizer
      state (needs a row-separable optimizer too). False gives the plain dense update, where
      absent rows still move by momentum and weight decay. The row-sparse path is always lazy.
    remat_policy: rematerialisation of the network's layer blocks (`flix.models.remat`: none,
      full, dots_saveable, ...): less activation memory for more flops; same losses.
    scan_layers: run each layer stack as one `nn.scan` (`flix.models.scan`): the block is
      compiled once instead of once per layer; the parameter tree (checkpoints, conversion,
      merge) does not change, and the losses are the same to float rounding. Composes with
      remat_policy (remat inside the scan).
  """

  row_sparse: bool = False
  lazy_rows: bool = True
  remat_policy: str = "none"
  scan_layers: bool = False

  def __post_init__(self):
    remat.check_policy(self.remat_policy)
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f"StepConfig.scan_layers must be True or False, got "
                       f"{self.scan_layers!r}")


def step_rng(state: TrainState) -> jax.Array:
  """The rng of the step `state.step` (network and feature dropout both derive from it)."""
  return jax.random.fold_in(state.rng, state.step)


def stop_frozen(params, trainable: dict):
  """`params` with the frozen leaves (`trainable` False) behind `jax.lax.stop_gradient`: the
  traced backward pass holds no weight gradient for the frozen base, so the step's jaxpr (and
  `flix.compile`'s model flops) count only the work that is done; XLA dropped those gradients
  from the compiled step before as well (docs/tpu.md). Their gradients come out zero, as the
  optimizer (`flix.trainable.freeze_base`) treats them anyway."""
  return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)


def trained_norm(grads, trainable: dict) -> jax.Array:
  """Global norm of the trained leaves of `grads` (`trainable`: bool tree like the params)."""
  return optax.tree.norm([g for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(trainable))
                          if t])


def make_train_step(model: BaseModel, optimizer: optax.GradientTransformation, trainable: dict,
                    config: StepConfig = StepConfig()
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """(state, batch) -> (state, metrics). Dropout and feature dropout draw from `step_rng`.

  `optimizer` leaves frozen parameters alone (`flix.trainable.freeze_base`); `trainable` is the
  bool mask of trained leaves, used for the reported gradient norm.
  """
  lazy = config.lazy_rows and model.n_types > 0

  def step(state: TrainState, batch: Batch):
    rng = step_rng(state)
    ids = model.training_feature_ids(batch, rng)
    loss_fn = lambda p: model.loss_fn(stop_frozen(p, trainable), batch, rng, feature_ids=ids)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if lazy:
      check_row_indexable(optimizer.init, state.params, model.flix, what="lazy dense steps "
                          "(StepConfig.lazy_rows; set it False for plain dense updates)")
      active = active_row_mask(ids, model.flix)
      params = keep_inactive_rows(state.params, params, model.flix, active)
      opt_state = keep_inactive_rows(state.opt_state, opt_state, model.flix, active)
    metrics = {**metrics, "loss": loss, "grad_norm": trained_norm(grads, trainable)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step

