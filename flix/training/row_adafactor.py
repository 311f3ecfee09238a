"""Adafactor's scaling of a feature table, computed for all its rows at once.

`per_row(chain(optax.scale_by_factored_rms(decay_rate), optax.clip_by_block_rms(1.0)))` vmaps
optax over a table `[F, r, d]`. That is correct but slow for lazy row-sparse steps: optax keeps
`[1]`-shaped placeholders for the statistics a row does not use, which become `[F, 1]` state
leaves that every step gathers and scatters, and XLA fuses `v ** -0.5` into the update as a
general power. `scale_table_rows_by_rms` computes the same thing on the stacked table: each row
`[r, d]` is its own Adafactor parameter, with its own step count, its own second moment
(factored over its two largest dims when both are >= `min_dim_size_to_factor`, else a full `v`)
and its own update-RMS clipping; only the statistics a row uses are stored.

Numerically it is optax's formula; `lax.rsqrt` replaces `x ** -0.5` (they differ by at most
2 ulp in float32).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class TableRms(NamedTuple):
  """Unfactored statistics of a table `[F, *row]`: count `[F]` (int32), v `[F, *row]`."""

  count: jax.Array
  v: jax.Array


class FactoredTableRms(NamedTuple):
  """Factored statistics: count `[F]`, v_row / v_col `[F, *row]` without the row's d0 / d1 axis."""

  count: jax.Array
  v_row: jax.Array
  v_col: jax.Array


def factored_dims(row_shape: tuple[int, ...], min_dim_size_to_factor: int
                  ) -> tuple[int, int] | None:
  """optax's rule for one row: its two largest axes (d1, d0) if the smaller is large enough."""
  if len(row_shape) < 2:
    return None
  order = np.argsort(row_shape)
  if row_shape[order[-2]] < min_dim_size_to_factor:
    return None
  return int(order[-2]), int(order[-1])


def by_row(values: jax.Array, x: jax.Array) -> jax.Array:
  """`values` `[F]` shaped to broadcast against `x` `[F, ...]`."""
  return values.reshape(values.shape + (1,) * (x.ndim - 1))


def scale_table_rows_by_rms(decay_rate: float = 0.8, epsilon: float = 1e-30,
                            min_dim_size_to_factor: int = 128, clip_threshold: float = 1.0
                            ) -> optax.GradientTransformation:
  """Adafactor's second-moment scaling and block-RMS clipping of one table `[F, ...]`, per row.

  Equals `jax.vmap` of `chain(scale_by_factored_rms(decay_rate, epsilon=epsilon,
  min_dim_size_to_factor=...), clip_by_block_rms(clip_threshold))` over the table's leading axis,
  up to rsqrt rounding. Its init and update take one array, not a tree. Every state leaf has the
  leading `[F]` axis, so rows can be gathered and updated lazily (`flix.training.sparse_step`).
  """

  def init(table):
    count = jnp.zeros(table.shape[:1], jnp.int32)
    dims = factored_dims(table.shape[1:], min_dim_size_to_factor)
    if dims is None:
      return TableRms(count, jnp.zeros_like(table))
    d1, d0 = dims
    return FactoredTableRms(count, jnp.zeros(np.delete(table.shape, 1 + d0), table.dtype),
                            jnp.zeros(np.delete(table.shape, 1 + d1), table.dtype))

  def update(g, s, params=None):
    del params
    t = (s.count + 1).astype(jnp.float32)
    decay = 1.0 - t ** (-decay_rate)  # optax's _decay_rate_pow, one value per row.
    moment = lambda old, new: (by_row(decay, old) * old + by_row(1.0 - decay, new) * new
                               ).astype(g.dtype)
    g_sqr = g * g + epsilon
    if isinstance(s, TableRms):
      v = moment(s.v, g_sqr)
      u = g * jax.lax.rsqrt(v)
      new_state = TableRms(optax.safe_increment(s.count), v)
    else:
      d1, d0 = (1 + d for d in factored_dims(g.shape[1:], min_dim_size_to_factor))
      v_row = moment(s.v_row, jnp.mean(g_sqr, axis=d0))
      v_col = moment(s.v_col, jnp.mean(g_sqr, axis=d1))
      reduced_d1 = d1 - 1 if d1 > d0 else d1
      row_factor = jax.lax.rsqrt(v_row / jnp.mean(v_row, axis=reduced_d1, keepdims=True))
      u = g * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(jax.lax.rsqrt(v_col), d1)
      new_state = FactoredTableRms(optax.safe_increment(s.count), v_row, v_col)
    rms = jnp.sqrt(jnp.mean(u * u, axis=tuple(range(1, g.ndim)), keepdims=True))
    return u / jnp.maximum(1.0, rms / clip_threshold), new_state

  return optax.GradientTransformation(init, update)
