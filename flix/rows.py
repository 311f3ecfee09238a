"""Compact adapter tables: run a batch on the rows of its active features only.

A feature table holds F_t rows, but a batch of B examples touches at most min(B, F_t) of them.
`take_rows` gathers those rows into compact tables `[U_t, ...]` (U_t = min(B, F_t)) and
`compact_ids` renumbers the batch's ids into them; a model built with
`flix.replace(row_limit=B)` then runs on the compact tables, and its gradients are compact too.
`put_rows` writes compact rows back. Nothing F-sized is touched per step except by `put_rows`'s
in-place row writes, so the cost of a step no longer grows with F.

Padding rows (when a batch has fewer than U_t distinct values) have id F_t: they gather as
zeros and are dropped by `put_rows`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flix.config import FlixConfig
from flix.layers import a_name, b_name


def active_rows(ids: jax.Array, flix: FlixConfig) -> tuple[jax.Array, ...]:
  """Sorted distinct active ids per type, each `[min(batch, F_t)]`, padded with F_t."""
  rows = []
  for col, t in enumerate(flix.space.types):
    values = jnp.where(ids[:, col] >= 0, ids[:, col], t.size)
    rows.append(jnp.unique(values, size=min(ids.shape[0], t.size), fill_value=t.size))
  return tuple(rows)


def compact_ids(ids: jax.Array, rows: tuple[jax.Array, ...]) -> jax.Array:
  """Renumbers ids `[batch, n_types]` into positions of `rows`; INACTIVE stays INACTIVE."""
  cols = [jnp.where(ids[:, c] >= 0, jnp.searchsorted(r, ids[:, c]), ids[:, c])
          for c, r in enumerate(rows)]
  return jnp.stack(cols, axis=1).astype(ids.dtype) if cols else ids


def _row_index(flix: FlixConfig, rows) -> dict[str, jax.Array]:
  index = {}
  for t, r in zip(flix.space.types, rows):
    index[a_name(t.name)] = index[b_name(t.name)] = r
  return index


def take_rows(params, flix: FlixConfig, rows) -> dict:
  """Params with every feature table replaced by its rows `rows` (plain, unboxed arrays)."""
  index = _row_index(flix, rows)

  def take(path, leaf):
    r = index.get(str(path[-1].key))
    return leaf if r is None else jnp.take(leaf, r, axis=0, mode="fill", fill_value=0)

  return jax.tree_util.tree_map_with_path(take, nn.unbox(params))


def put_rows(full, compact, flix: FlixConfig, rows) -> dict:
  """`full` with the feature-table rows `rows` overwritten by `compact`'s; other leaves from `compact`."""
  index = _row_index(flix, rows)

  def put(path, big, small):
    r = index.get(str(path[-1].key))
    return small if r is None else big.at[r].set(small, mode="drop")

  return jax.tree_util.tree_map_with_path(put, nn.unbox(full), compact)
