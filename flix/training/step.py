"""One training step and one evaluation step (pure functions, jit-compiled by the loop)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from flix.features import feature_dropout
from flix.models.t5 import T5
from flix.training import losses
from flix.training.state import TrainState

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """How a train step runs.

  Attributes:
    feature_dropout: per (example, type) drop probability.
    z_loss, normalizer: see `flix.training.losses`.
    row_sparse: lazy row-sparse steps (`flix.training.sparse_step`): gradients and optimizer
      updates touch only the feature-table rows active in the batch; absent rows keep their
      params and optimizer state. Needs a row-separable optimizer (make_optimizer.per_row).
  """

  feature_dropout: float = 0.0
  z_loss: float = 1e-4
  normalizer: float | str | None = losses.NUM_REAL_TARGET_TOKENS
  row_sparse: bool = False


def model_feature_ids(model: T5, batch: Batch) -> jax.Array | None:
  """The batch's feature ids if the model has featurized adapters, else None."""
  return batch["feature_ids"] if model.n_types else None


def step_inputs(model: T5, state: TrainState, batch: Batch, config: StepConfig
                ) -> tuple[jax.Array | None, jax.Array]:
  """(feature ids after feature dropout or None, dropout rng) of this step."""
  rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng, features_rng = jax.random.split(rng)
  ids = model_feature_ids(model, batch)
  if ids is not None and config.feature_dropout:
    ids = feature_dropout(ids, features_rng, config.feature_dropout)
  return ids, dropout_rng


def make_loss_fn(model: T5, batch: Batch, ids: jax.Array | None, dropout_rng: jax.Array,
                 config: StepConfig) -> Callable[[dict], tuple[jax.Array, dict]]:
  """params -> (loss, metrics) of `model` on `batch` with dropout."""

  def loss_fn(params):
    logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                         batch["decoder_input_tokens"], ids, enable_dropout=True,
                         rngs={"dropout": dropout_rng})
    return losses.cross_entropy(logits, batch["decoder_target_tokens"],
                                batch["decoder_loss_weights"], z_loss=config.z_loss,
                                normalizer=config.normalizer)

  return loss_fn


def trained_norm(grads, trainable: dict) -> jax.Array:
  """Global norm of the trained leaves of `grads` (`trainable`: bool tree like the params)."""
  return optax.tree.norm([g for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(trainable))
                          if t])


def make_train_step(model: T5, optimizer: optax.GradientTransformation, trainable: dict,
                    config: StepConfig = StepConfig()
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """(state, batch) -> (state, metrics). Dropout and feature dropout draw from fold_in(rng, step).

  `optimizer` leaves frozen parameters alone (`flix.trainable.freeze_base`); `trainable` is the
  bool mask of trained leaves, used for the reported gradient norm.
  """

  def step(state: TrainState, batch: Batch):
    ids, dropout_rng = step_inputs(model, state, batch, config)
    loss_fn = make_loss_fn(model, batch, ids, dropout_rng, config)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": trained_norm(grads, trainable)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def make_eval_step(model: T5, config: StepConfig = StepConfig()) -> Callable[[dict, Batch], dict]:
  """(params, batch) -> teacher-forced loss metrics (no dropout of any kind)."""

  def step(params, batch: Batch):
    logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                         batch["decoder_input_tokens"], model_feature_ids(model, batch))
    loss, metrics = losses.cross_entropy(logits, batch["decoder_target_tokens"],
                                         batch["decoder_loss_weights"], z_loss=config.z_loss,
                                         normalizer=config.normalizer)
    return {**metrics, "loss": loss}

  return step
