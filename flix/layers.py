"""`FlixDense`: a frozen base projection plus featurized low-rank adapters.

For an example whose active features are f_1..f_k (one per feature type, or none), the layer
computes

    y = x W + sum_t s_t (x A_t[f_t]^T) B_t[f_t] + s_shared (x A_shared^T) B_shared

with W `[d_in, d_out]`, A_t `[F_t, r_t, d_in]`, B_t `[F_t, r_t, d_out]` (B zero-initialised, so a
fresh adapter is an exact no-op), and s = alpha / r (alpha / sqrt(r) for rsLoRA). A is stored
rank-major, `[r, d_in]` per feature as PEFT's `lora_A.weight`: with d_in the minor axis of both x
and A, the adapter's share of a 512 -> 512 layer's forward + backward on XLA:CPU is ~1.6x
smaller than with `[d_in, r]` (docs/performance.md).

Compute strategies for the featurized part (the shared adapter is always a plain 2-D LoRA):
  masked:  all feature tables side by side as one rank-(sum_t F_t r_t) LoRA, the columns of
           inactive features zeroed per example. Two dense 2-D matmuls; cost grows with F * r,
           independent of batch x adapter bytes. Best when F * r is close to an example's
           own rank (e.g. types of one or two values).
  gather:  gathers each example's A_t[f] and B_t[f] (batch x adapter bytes) and applies them
           with batched matmuls. Cost independent of F; the forward reads only active rows.
           Tables with at most T rows (T = tokens per example; the compact tables of a training
           step) are gathered by an exact one-hot matmul, whose gradient is a matmul too.
  ragged:  sorts tokens by feature value and uses `jax.lax.ragged_dot` (grouped matmul, reads
           each active adapter once). Meant for backends with a grouped-matmul kernel; XLA:CPU
           lowers it to a dense loop over all F groups (measured: cost linear in F).
  auto:    masked while sum_t F_t r_t is at most 2x an example's sum_t r_t and at most 64
           columns (`FlixConfig.resolved_strategy`), otherwise gather.
All strategies give the same outputs and gradients (to float32 rounding).

Gradients with respect to a table are table-sized (F rows) in JAX; `flix.rows` makes a
training step's adapter work independent of F by running the model on the batch's rows only.

Layout: each example's gathered rows `[B, r, d]`, the adapter activations `[B, T, r]` and the
delta `[B, T, d_out]` are constrained to logical axes (`nn.with_logical_constraint`: batch, the
kernel's own axis for d) as T5X constrains activations, so that SPMD partitioning gathers rows
locally instead of all-gathering whole tables; a no-op unless a step traces under the
partitioner's rules (`flix.training.partitioning.Partitioner.activation_rules`).

Feature ids enter as int `[batch, n_types]`; `INACTIVE` (-1) switches a type off for an
example. Bad ids are never silently clamped: concrete ids are checked eagerly (ValueError);
under `jit` an example with an out-of-range id gets NaN outputs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flix.config import FlixConfig
from flix.features import INACTIVE

# Logical axis names of the adapter axes (base axes reuse the kernel's T5X names).
FEATURE_AXIS = "flix_feature"
RANK_AXIS = "flix_rank"
# Logical axes of activations (T5X's names).
BATCH_AXIS, LENGTH_AXIS = "batch", "length"

Initializer = Callable[..., jax.Array]

# LoRA's A init (PEFT: kaiming_uniform(a=sqrt(5))): uniform(-1/sqrt(d_in), 1/sqrt(d_in)).
# A is `[..., r, d_in]`: fan-in is the last axis.
lora_a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                               in_axis=-1, out_axis=-2, batch_axis=(0,))
lora_a_shared_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform",
                                                      in_axis=-1, out_axis=-2)


ADAPTER_PREFIX = "lora_"
SHARED = "shared"


def a_name(type_name: str) -> str:
  return f"{ADAPTER_PREFIX}a_{type_name}"


def b_name(type_name: str) -> str:
  return f"{ADAPTER_PREFIX}b_{type_name}"


def is_adapter_name(name) -> bool:
  """Whether a parameter name belongs to an adapter (shared or feature table): `lora_*`."""
  return str(name).startswith(ADAPTER_PREFIX)


def table_type(name) -> str | None:
  """The feature type whose table a parameter name holds (`lora_a_<type>` / `lora_b_<type>`),
  or None for the shared adapter and non-adapter parameters. The one definition of "is this a
  feature table", by name (a type may itself end in "_shared")."""
  for prefix in (a_name(""), b_name("")):
    if str(name).startswith(prefix):
      rest = str(name)[len(prefix):]
      return None if rest == SHARED else rest
  return None


def check_feature_ids(ids, n_types: int, rows: Sequence[int], batch: int) -> jax.Array:
  """Validates feature ids `[batch, n_types]`; returns a per-example bool `[batch]` of bad rows.

  Shapes and dtypes are checked always (they are static). Values are checked eagerly when the
  ids are concrete (ValueError naming the bad id); under tracing the returned mask marks
  examples with out-of-range ids so that the caller can poison them with NaN.
  """
  if ids is None:
    raise ValueError(f"this layer has {n_types} feature types and needs feature_ids "
                     f"[batch, {n_types}], got None")
  if ids.ndim != 2 or ids.shape != (batch, n_types):
    raise ValueError(f"feature_ids must have shape [batch={batch}, n_types={n_types}], "
                     f"got {tuple(ids.shape)}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"feature_ids must be integers, got dtype {ids.dtype}")
  upper = jnp.asarray(rows, jnp.int32)
  if not isinstance(ids, jax.core.Tracer):
    host = np.asarray(ids)
    for col, size in enumerate(rows):
      bad = np.flatnonzero((host[:, col] < INACTIVE) | (host[:, col] >= size))
      if bad.size:
        row = int(bad[0])
        raise ValueError(f"feature id {int(host[row, col])} in column {col} (example {row}) is "
                         f"out of range: expected {INACTIVE} (inactive) or 0..{size - 1}")
  return jnp.any((ids < INACTIVE) | (ids >= upper), axis=1)


class FlixDense(nn.Module):
  """Dense `[..., d_in] -> [..., d_out]` with featurized low-rank adapters.

  Attributes:
    features: d_out.
    kernel_axes: logical axis names of the base kernel, e.g. ("embed", "mlp").
    flix: adapter configuration; None gives a plain dense layer (no adapters).
    kernel_init: base kernel initialiser.
    dtype: compute dtype (parameters stay float32).
    use_bias: a base bias `[d_out]` (zero-initialised, logical axis the kernel's output axis),
      part of the frozen base like the kernel (e.g. Qwen2's q/k/v projections).
  """

  features: int
  kernel_axes: tuple[str, str]
  flix: FlixConfig | None = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, feature_ids: jax.Array | None = None) -> jax.Array:
    """x: `[batch, ..., d_in]`; feature_ids: int `[batch, n_types]`. Returns `[batch, ..., d_out]`."""
    d_in, d_out = x.shape[-1], self.features
    in_axis, out_axis = self.kernel_axes
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (d_in, d_out), jnp.float32)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, d_in).astype(self.dtype)  # 2-D matmuls: ~2x faster gradients on CPU.
    y = x2 @ kernel.astype(self.dtype)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (out_axis,)),
                        (d_out,), jnp.float32)
      y = y + bias.astype(self.dtype)
    if self.flix is None:
      return y.reshape(*lead, d_out)

    space = self.flix.space
    if self.flix.shared_rank:
      r = self.flix.shared_rank
      a = self.param(a_name(SHARED),
                     nn.with_logical_partitioning(lora_a_shared_init, (RANK_AXIS, in_axis)),
                     (r, d_in), jnp.float32)
      b = self.param(b_name(SHARED),
                     nn.with_logical_partitioning(nn.initializers.zeros, (RANK_AXIS, out_axis)),
                     (r, d_out), jnp.float32)
      y = y + ((x2 @ a.astype(self.dtype).T) * self.flix.scale(r)) @ b.astype(self.dtype)

    if space.n_types:
      if not lead:
        raise ValueError("FlixDense inputs need a leading batch axis, got a 1-D input")
      batch = lead[0]
      rows = [self.flix.table_rows(t.size) for t in space.types]
      bad = check_feature_ids(feature_ids, space.n_types, rows, batch)
      tables = []
      for t, n, r in zip(space.types, rows, self.flix.ranks):
        a = self.param(a_name(t.name), nn.with_logical_partitioning(
            lora_a_init, (FEATURE_AXIS, RANK_AXIS, in_axis)), (n, r, d_in), jnp.float32)
        b = self.param(b_name(t.name), nn.with_logical_partitioning(
            nn.initializers.zeros, (FEATURE_AXIS, RANK_AXIS, out_axis)), (n, r, d_out),
                       jnp.float32)
        tables.append((a.astype(self.dtype), b.astype(self.dtype), self.flix.scale(r)))
      ids = feature_ids.astype(jnp.int32)
      x3 = constrain(x2.reshape(batch, -1, d_in), in_axis)
      compute = STRATEGY_FNS[self.flix.resolved_strategy()]
      delta = constrain(compute(x3, ids, tables, bad, (in_axis, out_axis)), out_axis)
      y = y + delta.reshape(-1, d_out)
    return y.reshape(*lead, d_out)


Tables = Sequence[tuple[jax.Array, jax.Array, float]]  # per type: (A [F,r,d_in], B [F,r,d_out], s)
Axes = tuple[str, str]  # The kernel's logical (input, output) axis names.

# Every strategy maps (x3 `[B, T, d_in]`, ids `[B, n_types]`, tables, poison `[B]` bool, the
# kernel's logical axes) to the featurized delta `[B, T, d_out]`; examples marked `poison` (bad
# ids under jit) come out NaN.


def constrain(x: jax.Array, last_axis: str | None) -> jax.Array:
  """`x` `[B, T, last]` laid out as (batch, length, `last_axis`) under the partitioner's rules
  (a no-op outside them; see the module docstring)."""
  return nn.with_logical_constraint(x, (BATCH_AXIS, LENGTH_AXIS, last_axis))


def constrain_rows(rows: jax.Array, last_axis: str) -> jax.Array:
  """Per-example rows `[B, r, d]` laid out as (batch, rank, `last_axis`)."""
  return nn.with_logical_constraint(rows, (BATCH_AXIS, RANK_AXIS, last_axis))


FAN_IN_NORMAL = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
FAN_IN_TRUNCATED_NORMAL = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def projections(flix: FlixConfig | None, block: str, dtype,
                kernel_init: Initializer = FAN_IN_TRUNCATED_NORMAL):
  """The projections of one network block: `make(features, kernel_axes, name, **kwargs)` gives a
  `FlixDense` named `name`, adapted when `flix` targets `"{block}.{name}"` (plain otherwise).

  Call `make` inside the block's `nn.compact` method. kwargs (e.g. `kernel_init`, `use_bias`)
  override the block's defaults.
  """
  def make(features: int, kernel_axes: tuple[str, str], name: str, **kwargs) -> FlixDense:
    target = f"{block}.{name}" if block else name
    adapter = flix if flix is not None and flix.adapts(target) else None
    kwargs.setdefault("kernel_init", kernel_init)
    return FlixDense(features, kernel_axes, adapter, dtype=dtype, name=name, **kwargs)
  return make


def example_scales(ids: jax.Array, col: int, scale: float, poison: jax.Array,
                   dtype) -> jax.Array:
  """Per-example adapter scale `[B]` of type `col`: s if active, 0 if INACTIVE, NaN if poisoned.

  Poisoning through this `[B]` vector (and not the `[B, T, d_out]` output) costs nothing per token.
  """
  scales = jnp.where(ids[:, col] >= 0, scale, 0.0).astype(dtype)
  return jnp.where(poison, jnp.nan, scales).astype(dtype)


def masked_delta(x3: jax.Array, ids: jax.Array, tables: Tables, poison: jax.Array,
                 axes: Axes = (None, None)) -> jax.Array:
  """All tables as one wide LoRA with inactive columns zeroed. x3 `[B, T, d_in]` -> `[B, T, d_out]`."""
  del axes  # Its activations `[B, T, sum F r]` are constrained by their own (rank) axis.
  batch, length, d_in = x3.shape
  a_cols, b_rows, coefs = [], [], []
  for col, (a, b, scale) in enumerate(tables):
    n, r, _ = a.shape
    a_cols.append(a.reshape(n * r, d_in))
    b_rows.append(b.reshape(n * r, b.shape[-1]))
    onehot = jax.nn.one_hot(ids[:, col], n, dtype=x3.dtype)  # -1 -> all zeros.
    scales = jnp.where(ids[:, col] >= 0, scale, 0.0).astype(x3.dtype)
    coefs.append(jnp.repeat(onehot * scales[:, None], r, axis=1))
  a_all, b_all = jnp.concatenate(a_cols, 0), jnp.concatenate(b_rows, 0)
  # Poisoned examples: added, not multiplied (XLA folds one_hot * NaN into a select giving 0).
  coef = jnp.concatenate(coefs, 1) + jnp.where(poison, jnp.nan, 0.0).astype(x3.dtype)[:, None]
  h = (x3.reshape(-1, d_in) @ a_all.T).reshape(batch, length, -1) * coef[:, None, :]
  h = constrain(h, RANK_AXIS)
  return (h.reshape(batch * length, -1) @ b_all).reshape(batch, length, -1)


def example_rows(table: jax.Array, ids: jax.Array, tokens: int) -> jax.Array:
  """Row `ids[i]` of `table` `[n, ...]` for every example: `[B, ...]`; rows of ids outside 0..n-1
  are garbage or zero (callers zero or poison them through the example's scale).

  Tables with at most `tokens` (tokens per example) rows, such as the compact tables of a
  training step, are gathered by a one-hot matmul (exact: precision HIGHEST): its FLOPs are at most
  the adapter's own, and on XLA:CPU it and its gradient (a matmul) cost less than a gather and its
  scatter-add gradient (layer bench: 1.15x instead of 1.2-1.28x plain LoRA r16).
  """
  n = table.shape[0]
  if n <= tokens:
    onehot = jax.nn.one_hot(ids, n, dtype=table.dtype)
    # No reshape of the table to [n, r * d]: merging r with a sharded d would all-gather it.
    return jnp.einsum("bn,n...->b...", onehot, table, precision=jax.lax.Precision.HIGHEST)
  return jnp.take(table, ids, axis=0, mode="clip")  # Clamps ids outside 0..n-1.


def gather_delta(x3: jax.Array, ids: jax.Array, tables: Tables, poison: jax.Array,
                 axes: Axes = (None, None)) -> jax.Array:
  """Per-example gather of active rows + batched matmuls. x3 `[B, T, d_in]` -> `[B, T, d_out]`."""
  a_cols, b_rows, coefs = [], [], []
  tokens = x3.shape[1]
  for col, (a, b, scale) in enumerate(tables):
    # Inactive and bad ids get scale 0 or NaN (example_scales), so their rows do not matter.
    a_cols.append(example_rows(a, ids[:, col], tokens))  # [B, r, d_in]
    b_rows.append(example_rows(b, ids[:, col], tokens))  # [B, r, d_out]
    scales = example_scales(ids, col, scale, poison, x3.dtype)
    coefs.append(jnp.repeat(scales[:, None], a.shape[1], axis=1))
  a_ex = constrain_rows(jnp.concatenate(a_cols, 1), axes[0])
  b_ex = constrain_rows(jnp.concatenate(b_rows, 1), axes[1])
  h = jnp.einsum("btd,brd->btr", x3, a_ex) * jnp.concatenate(coefs, 1)[:, None, :]
  return jnp.einsum("btr,bro->bto", constrain(h, RANK_AXIS), b_ex)


def ragged_delta(x3: jax.Array, ids: jax.Array, tables: Tables, poison: jax.Array,
                 axes: Axes = (None, None)) -> jax.Array:
  """Tokens grouped by feature value, `jax.lax.ragged_dot` per type. `[B, T, d_in] -> [B, T, d_out]`."""
  del axes  # Tokens sorted across the batch have no per-example layout to keep.
  batch, length, d_in = x3.shape
  x2 = x3.reshape(-1, d_in)
  out = None
  for col, (a, b, scale) in enumerate(tables):
    n = a.shape[0]
    token_ids = jnp.repeat(ids[:, col], length)  # [N]
    key = jnp.where(token_ids >= 0, token_ids, n)  # inactive tokens sort last, outside groups.
    order = jnp.argsort(key, stable=True)
    group_sizes = jnp.bincount(key, length=n + 1)[:n].astype(jnp.int32)
    # Rows past the groups come out 0.
    h = jax.lax.ragged_dot(x2[order], jnp.swapaxes(a, 1, 2), group_sizes) * scale
    y_sorted = jax.lax.ragged_dot(h, b, group_sizes)
    y = jnp.zeros_like(y_sorted).at[order].set(y_sorted, unique_indices=True)
    out = y if out is None else out + y
  return jnp.where(poison[:, None, None], jnp.nan, out.reshape(batch, length, -1))


STRATEGY_FNS = {"masked": masked_delta, "gather": gather_delta, "ragged": ragged_delta}
