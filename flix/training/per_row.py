"""Row-separable optimizers: every feature-table row is its own parameter.

A feature table `[F, r, d_in]` (or `[F, r, d_out]`) holds F independent adapters. `per_row(inner)`
applies the optax transformation `inner` to each leaf on its own, and to each *row* of a feature
table on its own (`jax.vmap` over the leading feature axis), so that:
  * every optimizer-state leaf of a table has a leading `[F]` axis, step counts included (a row's
    count advances only when the row is updated);
  * a row's update reads only that row's gradient, parameters and state.
That is what makes lazy row updates (`flix.training.sparse_step`) possible: rows absent from a
batch keep their parameters and state untouched.

For Adam this is plain Adam (elementwise) with per-row bias-correction counts. For Adafactor each
row is its own `[r, d_in]` matrix: factored when both dims are >= min_dim_size_to_factor (128;
with adapter ranks < 128 the per-row second moment is unfactored, `[F, r, d_in]` like Adam's nu),
and update clipping (`clip_by_block_rms`) uses that row's RMS. Global-norm gradient clipping,
weight decay and the learning-rate schedule stay outside `per_row` (they use the global step).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from flix.layers import table_type


class PerLeafState(NamedTuple):
  """inner: a tree like the params whose leaves are `inner`'s state for that leaf (per row on
  feature tables: every leaf of it has a leading `[F]` axis)."""

  inner: Any


def is_table_param(path, leaf) -> bool:
  """Whether a param leaf is a feature table (`flix.layers.table_type` of its name)."""
  del leaf
  return table_type(getattr(path[-1], "key", "")) is not None


def per_row(inner: optax.GradientTransformation,
            tables: optax.GradientTransformation | None = None) -> optax.GradientTransformation:
  """`inner` per leaf, and per row on feature tables (`is_table_param`).

  tables: the transformation for one whole table `[F, ...]`, computing `inner` row by row with
  every state leaf indexed by row (e.g. `row_adafactor.scale_table_rows_by_rms`). Default:
  `inner` vmapped over the leading axis.
  """
  on_table = tables if tables is not None else optax.GradientTransformation(
      jax.vmap(inner.init), jax.vmap(inner.update))

  def leaf_fn(path, leaf, name):
    return getattr(on_table if is_table_param(path, leaf) else inner, name)

  def init(params):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    states = [leaf_fn(p, v, "init")(v) for p, v in leaves]
    return PerLeafState(jax.tree_util.tree_unflatten(treedef, states))

  def update(updates, state, params=None):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    states = treedef.flatten_up_to(state.inner)
    plain = (treedef.flatten_up_to(params) if params is not None else [None] * len(leaves))
    new_updates, new_states = [], []
    for (path, g), s, p in zip(leaves, states, plain):
      u, s = leaf_fn(path, g, "update")(g, s, p)
      new_updates.append(u)
      new_states.append(s)
    return (jax.tree_util.tree_unflatten(treedef, new_updates),
            PerLeafState(jax.tree_util.tree_unflatten(treedef, new_states)))

  return optax.GradientTransformation(init, update)
