"""Compact adapter tables: run a batch on the rows of its active features only.

A feature table holds F_t rows, but a batch of B examples touches at most min(B, F_t) of them.
`take_rows` gathers those rows into compact tables `[U_t, ...]` (U_t = min(B, F_t)) and
`compact_ids` renumbers the batch's ids into them; a model built with
`flix.replace(row_limit=B)` then runs on the compact tables, and its gradients are compact too.
`put_rows` writes compact rows back (`take_state_rows` / `put_state_rows` do the same for
optimizer state). Nothing F-sized is touched per step except by `put_rows`'s
in-place row writes, so the cost of a step no longer grows with F.

Padding rows (when a batch has fewer than U_t distinct values) have id F_t: they gather as
zeros and are dropped by `put_rows`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flix.config import FlixConfig
from flix.features import INACTIVE
from flix.layers import a_name, b_name


def _valid(ids: jax.Array, size: int) -> jax.Array:
  return (ids >= 0) & (ids < size)


def active_rows(ids: jax.Array, flix: FlixConfig) -> tuple[jax.Array, ...]:
  """Sorted distinct valid active ids per type, each `[min(batch, F_t)]`, padded with F_t.

  Out-of-range ids (bad ids) are not rows: `compact_ids` maps them outside the compact table.
  """
  rows = []
  for col, t in enumerate(flix.space.types):
    values = jnp.where(_valid(ids[:, col], t.size), ids[:, col], t.size)
    rows.append(jnp.unique(values, size=min(ids.shape[0], t.size), fill_value=t.size))
  return tuple(rows)


def compact_ids(ids: jax.Array, rows: tuple[jax.Array, ...], flix: FlixConfig) -> jax.Array:
  """Renumbers ids `[batch, n_types]` into positions of `rows`; INACTIVE stays INACTIVE.

  A bad id (outside INACTIVE..F_t - 1) becomes len(rows_t), one past the compact table, so the
  layer marks its example bad (NaN outputs under jit) exactly as it would on the full table.
  """
  cols = []
  for c, (r, t) in enumerate(zip(rows, flix.space.types)):
    col = ids[:, c]
    bad = jnp.where(col == INACTIVE, INACTIVE, r.shape[0])
    cols.append(jnp.where(_valid(col, t.size), jnp.searchsorted(r, col), bad))
  return jnp.stack(cols, axis=1).astype(ids.dtype) if cols else ids


def active_row_mask(ids: jax.Array, flix: FlixConfig) -> tuple[jax.Array, ...]:
  """Per type, bool `[F_t]`: which rows the batch's (valid, active) ids use."""
  masks = []
  for col, t in enumerate(flix.space.types):
    hits = jax.nn.one_hot(jnp.where(_valid(ids[:, col], t.size), ids[:, col], -1), t.size)
    masks.append(jnp.any(hits > 0, axis=0))
  return tuple(masks)


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


# -- optimizer state ------------------------------------------------------------------------------
def _table_key(path, index: dict) -> str | None:
  """The last dict key on `path` naming a feature table (state leaves live under param paths)."""
  for entry in reversed(path):
    key = getattr(entry, "key", None)
    if isinstance(key, str) and key in index:
      return key
  return None


def take_state_rows(state, flix: FlixConfig, rows) -> dict:
  """Optimizer state with every table's leaves (leading `[F_t]` axis) cut to rows `rows`.

  A leaf belongs to a table when a dict key on its path names it (optax states mirror the param
  tree); other leaves (global step counts, non-table params' state) are kept whole.
  """
  index = _row_index(flix, rows)

  def take(path, leaf):
    key = _table_key(path, index)
    if key is None:
      return leaf
    if not getattr(leaf, "ndim", 0):
      raise ValueError(f"optimizer state leaf {jax.tree_util.keystr(path)} of table {key} is a "
                       "scalar, so it is not row-indexable")
    return jnp.take(leaf, index[key], axis=0, mode="fill", fill_value=0)

  return jax.tree_util.tree_map_with_path(take, state)


def put_state_rows(full, compact, flix: FlixConfig, rows):
  """`full` with table leaves' rows `rows` overwritten by `compact`'s; other leaves from `compact`."""
  index = _row_index(flix, rows)

  def put(path, big, small):
    key = _table_key(path, index)
    return small if key is None else big.at[index[key]].set(small, mode="drop")

  return jax.tree_util.tree_map_with_path(put, full, compact)


def keep_inactive_rows(old, new, flix: FlixConfig, active: tuple[jax.Array, ...]):
  """`new` with the rows that `active` (bool `[F_t]` per type) marks False taken from `old`, in
  every feature-table leaf (params, or optimizer state stored under table paths)."""
  index = _row_index(flix, active)

  def keep(path, before, after):
    key = _table_key(path, index)
    if key is None or not getattr(after, "ndim", 0):
      return after
    mask = index[key].reshape((-1,) + (1,) * (after.ndim - 1))
    return jnp.where(mask, after, before)

  return jax.tree_util.tree_map_with_path(keep, nn.unbox(old), nn.unbox(new))


def check_row_indexable(init, params, flix: FlixConfig,
                        what: str = "row-sparse steps") -> None:
  """Raises ValueError unless every optimizer-state leaf of a feature table is indexed by row.

  `init` is the optimizer's init; it is traced (abstractly) for `params` and for params whose
  tables have one more row: a table's state leaves must grow by exactly one leading row, and all
  other state leaves must not change shape (e.g. optax.adafactor's column statistics `v_col`
  of a `[F, r, d_in]` table average over rows and fail this check).
  """
  sizes = {}
  for t in flix.space.types:
    sizes[a_name(t.name)] = sizes[b_name(t.name)] = t.size

  def grow(path, leaf):
    n = sizes.get(str(path[-1].key))
    shape = tuple(leaf.shape)
    if n is not None:
      if shape[0] != n:
        raise ValueError(f"table {jax.tree_util.keystr(path)} has {shape[0]} rows, expected {n}")
      shape = (n + 1,) + shape[1:]
    return jax.ShapeDtypeStruct(shape, leaf.dtype)

  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(params))
  before = jax.tree_util.tree_flatten_with_path(jax.eval_shape(init, abstract))[0]
  after = jax.tree_util.tree_flatten_with_path(
      jax.eval_shape(init, jax.tree_util.tree_map_with_path(grow, abstract)))[0]
  for (path, x), (_, y) in zip(before, after):
    key = _table_key(path, sizes)
    name = jax.tree_util.keystr(path)
    if key is None and x.shape != y.shape:
      raise ValueError(f"optimizer state leaf {name} {x.shape} depends on a table's row count "
                       f"but is not stored under that table; {what} cannot update it row by row")
    if key is not None and (len(x.shape) == 0 or x.shape[0] != sizes[key]
                            or y.shape != (sizes[key] + 1,) + x.shape[1:]):
      raise ValueError(
          f"optimizer state leaf {name} {x.shape} of table {key} [{sizes[key]}, ...] is not "
          f"indexed by row (its statistics mix rows), so {what} cannot update it "
          "lazily; use a row-separable optimizer (make_optimizer.per_row = True)")
