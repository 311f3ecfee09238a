"""Optimizers and learning-rate schedules (gin-configurable).

Adafactor is set up as T5X fine-tunes (decay rate 0.8, no momentum, update clipping at RMS 1)
with one difference: no `multiply_by_parameter_scale`. T5X scales each update by the parameter's
RMS (at least 1e-3); an adapter's B starts at zero, so its first updates would be 1e-3 x lr.

Feature tables are row-separable by default (`per_row=True`): each table row (one feature's
adapter) has its own optimizer statistics, step count and update clipping, so a feature's update
never depends on other features' rows. For parameters that are not tables this is the plain
optax optimizer.
"""

from __future__ import annotations

import gin
import optax

from flix.training.per_row import per_row as per_row_transform
from flix.training.row_adafactor import scale_table_rows_by_rms

OPTIMIZERS = ("adafactor", "adamw")
SCHEDULES = ("constant", "rsqrt", "linear", "cosine")


@gin.configurable
def learning_rate_schedule(base: float = 1e-3, schedule: str = "constant", warmup_steps: int = 0,
                           decay_steps: int = 10_000, final_fraction: float = 0.0
                           ) -> optax.Schedule:
  """Linear warmup to `base`, then constant, rsqrt (T5X: base * sqrt(warmup / step)), linear or
  cosine decay to `final_fraction * base` over `decay_steps`."""
  if schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
  if schedule == "constant":
    after = optax.constant_schedule(base)
  elif schedule == "rsqrt":
    start = max(warmup_steps, 1)
    after = lambda step: base * (start / (step + start)) ** 0.5
  elif schedule == "linear":
    after = optax.linear_schedule(base, base * final_fraction, decay_steps)
  else:
    after = optax.cosine_decay_schedule(base, decay_steps, final_fraction)
  if not warmup_steps:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, base, warmup_steps), after],
                              [warmup_steps])


@gin.configurable
def make_optimizer(name: str = "adafactor", learning_rate: optax.ScalarOrSchedule | None = None,
                   clip_norm: float | None = 1.0, weight_decay: float = 0.0,
                   adafactor_decay_rate: float = 0.8, b1: float = 0.9, b2: float = 0.999,
                   per_row: bool = True, table_min_dim_size_to_factor: int = 128
                   ) -> optax.GradientTransformation:
  """Adafactor (see the module docstring) or AdamW, after global-norm gradient clipping (None:
  no clipping).

  per_row: row-separable form (`flix.training.per_row`): the second-moment/momentum part runs per
  leaf and per feature-table row, so that lazy steps (`flix.training.step`, `sparse_step`)
  update a batch's rows only. AdamW is then AdamW with per-row step counts; Adafactor factors
  each table row as its own matrix and clips each row's update by its own RMS. Learning rate,
  weight decay and global-norm clipping are unchanged. False: optax's optimizers over whole
  tables (statistics shared across a table's rows; needs StepConfig.lazy_rows = False).
  table_min_dim_size_to_factor: per-row Adafactor factors a table row `[r, d]` (second moment
  `[r] + [d]` instead of `[r, d]`) when both dims are at least this (optax's and T5X's 128, so
  rank < 128 rows keep a full second moment as large as the table). 1 factors every row: at
  rank 8 and d 4096 the tables' statistics shrink 8x, the memory lever for tables of 10^4+
  values (docs/tpu.md, "Real-size compiles"). Adafactor with per_row only.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
  if (not isinstance(table_min_dim_size_to_factor, int)
      or isinstance(table_min_dim_size_to_factor, bool) or table_min_dim_size_to_factor < 1):
    raise ValueError("make_optimizer.table_min_dim_size_to_factor must be an integer >= 1, got "
                     f"{table_min_dim_size_to_factor!r}")
  if table_min_dim_size_to_factor != 128 and not (per_row and name == "adafactor"):
    raise ValueError("make_optimizer.table_min_dim_size_to_factor applies to per-row Adafactor "
                     f"only (name 'adafactor', per_row True), got name {name!r}, per_row "
                     f"{per_row!r}")
  lr = learning_rate if learning_rate is not None else learning_rate_schedule()
  if per_row:
    opt = _per_row_optimizer(name, lr, weight_decay, adafactor_decay_rate, b1, b2,
                             table_min_dim_size_to_factor)
  elif name == "adafactor":
    opt = optax.adafactor(lr, decay_rate=adafactor_decay_rate, multiply_by_parameter_scale=False,
                          weight_decay_rate=weight_decay or None)
  else:
    opt = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
  return optax.chain(optax.clip_by_global_norm(clip_norm), opt) if clip_norm else opt


def _per_row_optimizer(name: str, lr: optax.ScalarOrSchedule, weight_decay: float,
                       decay_rate: float, b1: float, b2: float, table_min_dim_size_to_factor: int
                       ) -> optax.GradientTransformation:
  """The chains of optax.adamw / optax.adafactor (as configured above), statistics per row."""
  if name == "adamw":
    return optax.chain(per_row_transform(optax.scale_by_adam(b1=b1, b2=b2)),
                       optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(lr))
  rows = per_row_transform(optax.chain(optax.scale_by_factored_rms(decay_rate=decay_rate),
                                       optax.clip_by_block_rms(1.0)),
                           tables=scale_table_rows_by_rms(
                               decay_rate=decay_rate,
                               min_dim_size_to_factor=table_min_dim_size_to_factor))
  tail = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  return optax.chain(rows, optax.scale_by_learning_rate(lr, flip_sign=False), *tail,
                     optax.scale(-1))
