"""Lazy row-sparse train step: only the batch's feature-table rows are differentiated and updated.

Inside the jitted step, for a batch of B examples:
  1. `active_rows` finds each feature type's distinct active ids (at most min(B, F_t));
  2. `take_rows` / `take_state_rows` gather those rows of every table and of its optimizer state
     into compact `[min(B, F_t), ...]` arrays (non-table leaves stay whole);
  3. the model object on compact tables (`with_row_limit(B)`) runs with `compact_ids`, and the
     gradient is taken with respect to the compact params: no F-sized gradient exists;
  4. the optimizer updates the compact tree (non-table params get their normal dense update);
  5. `put_rows` / `put_state_rows` write the updated rows back in place.

"Lazy" updates, like TF LazyAdam: a row absent from a batch (feature dropout included) keeps its
params and optimizer state bitwise unchanged, as in the (lazy by default) dense step. With a
row-separable optimizer (`make_optimizer.per_row`, the default; `flix.training.per_row`) a row's
step counts advance only when it is updated, so each row trains exactly as if it were its own
parameter seeing only its own steps, and a row-sparse step equals a lazy dense step.

The optimizer must keep every table's state row-indexed (checked when the step is traced,
`flix.rows.check_row_indexable`): optax's own Adam qualifies (then with a global bias-correction
count, as TF LazyAdam), optax's Adafactor does not (it factors `[F, r, d_in]` across rows).
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

from flix.models.model import BaseModel
from flix.rows import (active_rows, check_row_indexable, compact_ids, put_rows, put_state_rows,
                       take_rows, take_state_rows)
from flix.training.state import TrainState
from flix.training.step import Batch, StepConfig, step_rng, stop_frozen, trained_norm


def make_row_sparse_train_step(model: BaseModel, optimizer: optax.GradientTransformation,
                               trainable: dict, config: StepConfig = StepConfig()
                               ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """Like `step.make_train_step`, with lazy updates computed on the batch's table rows only."""
  del config  # Row-sparse steps are always lazy.
  if not model.n_types:
    raise ValueError("row_sparse steps need feature tables (method 'flix' with at least one "
                     "feature type); this model has none")
  flix = model.flix

  def step(state: TrainState, batch: Batch):
    check_row_indexable(optimizer.init, state.params, flix)  # Trace time only.
    rng = step_rng(state)
    ids = model.training_feature_ids(batch, rng)
    compact_model = model.with_row_limit(ids.shape[0])
    rows = active_rows(ids, flix)
    params = take_rows(state.params, flix, rows)
    opt_state = take_state_rows(state.opt_state, flix, rows)
    loss_fn = lambda p: compact_model.loss_fn(stop_frozen(p, trainable), batch, rng,
                                              feature_ids=compact_ids(ids, rows, flix))
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": trained_norm(grads, trainable)}
    return state.replace(step=state.step + 1, params=put_rows(state.params, params, flix, rows),
                         opt_state=put_state_rows(state.opt_state, opt_state, flix, rows)
                         ), metrics

  return step
