"""Merging one feature combination into the base kernels, and taking it out again.

For a combination c (one id per type, INACTIVE for none) a layer's update is the matrix
dW_c = sum_t s_t A_t[c_t] B_t[c_t] + s_shared A_shared B_shared `[d_in, d_out]`, so
`x (W + dW_c)` equals the adapter path for every example whose features are c. `unmerge`
subtracts the same dW_c; in float32 it restores W to within rounding of |W| + |dW_c|.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flix.config import FlixConfig
from flix.layers import SHARED, a_name, b_name, is_adapter_name

_HIGHEST = jax.lax.Precision.HIGHEST


def is_adapted(layer_params) -> bool:
  """Whether a param subtree is one adapted projection (a kernel with adapter leaves)."""
  return isinstance(layer_params, dict) and "kernel" in layer_params and any(
      is_adapter_name(k) for k in layer_params)


def combination_delta(layer_params, flix: FlixConfig, ids) -> jax.Array:
  """dW_c `[d_in, d_out]` of one FlixDense's params for combination ids `[n_types]`."""
  ids = np.asarray(ids)
  flix.space.check_ids(ids[None])
  for t in flix.space.types:
    table = layer_params.get(a_name(t.name))
    if table is not None and table.shape[0] != t.size:
      raise ValueError(f"table {a_name(t.name)} has {table.shape[0]} rows but feature type "
                       f"{t.name!r} has {t.size} values: merge needs the full tables, not the "
                       f"compact ones of a row-sparse step (FlixConfig.row_limit)")
  kernel = layer_params["kernel"]
  delta = jnp.zeros(kernel.shape, jnp.float32)
  shared_rank = flix.shared_rank
  if shared_rank and a_name(SHARED) in layer_params:
    delta += flix.scale(shared_rank) * jnp.matmul(
        layer_params[a_name(SHARED)].T, layer_params[b_name(SHARED)], precision=_HIGHEST)
  for t, r, i in zip(flix.space.types, flix.ranks, ids):
    if i >= 0 and a_name(t.name) in layer_params:
      delta += flix.scale(r) * jnp.matmul(
          layer_params[a_name(t.name)][i].T, layer_params[b_name(t.name)][i], precision=_HIGHEST)
  return delta


def merge(layer_params, flix: FlixConfig, ids) -> jax.Array:
  """W + dW_c."""
  return layer_params["kernel"] + combination_delta(layer_params, flix, ids)


def unmerge(merged_kernel, layer_params, flix: FlixConfig, ids) -> jax.Array:
  """W from W + dW_c (up to float rounding)."""
  return merged_kernel - combination_delta(layer_params, flix, ids)


def merge_params(params, flix: FlixConfig, ids) -> dict:
  """A base-model param tree (no adapter leaves) whose kernels carry combination `ids` merged.

  Other leaves of an adapted layer (a base bias) are kept as they are. Apply the tree with the
  same network built without adapters (`flix=None`).
  """

  def walk(node):
    if is_adapted(node):
      base = {k: v for k, v in node.items() if not is_adapter_name(k)}
      return {**base, "kernel": merge(node, flix, ids)}
    if isinstance(node, dict):
      return {k: walk(v) for k, v in node.items()}
    return node

  return walk(nn.unbox(params))
