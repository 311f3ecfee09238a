"""`FlixConfig`: which projections get featurized adapters, their scaling and compute strategy."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from typing import Literal, Sequence

from flix.features import FeatureSpace

Strategy = Literal["auto", "masked", "gather", "ragged"]
STRATEGIES = ("auto", "masked", "gather", "ragged")

# `auto` uses the dense masked strategy only while every feature's rank fits in this many columns
# (sum over types of F_t * r_t) and that is at most MASKED_MAX_EXCESS times an example's own
# adapter rank (sum over types of r_t); otherwise per-example gather. See `flix.layers`.
MASKED_MAX_TABLE_RANK = 64
MASKED_MAX_EXCESS = 2


@dataclasses.dataclass(frozen=True)
class FlixConfig:
  """Featurized low-rank adapters for a network.

  Attributes:
    space: the feature space (types, values, ranks, shared rank).
    alpha: scale numerator; each adapter's update is scaled by alpha / r (alpha / sqrt(r) with
      `rslora`), r being that adapter's rank. None means alpha = r, i.e. scale 1.
    rslora: rank-stabilised scaling.
    targets: fnmatch patterns over the network's projection names (each network declares its
      own, e.g. T5's "encoder.attention.query", "decoder.mlp.wo"; see `T5.projection_names`),
      e.g. ("*",) for all, ("*.query", "*.value") for attention q/v, ("encoder.*",). Patterns are
      checked against a network's names when a model is built (`check_targets`).
    strategy: how featurized adapters are computed (`flix.layers`); "auto" picks per layer.
    row_limit: if set, every feature table holds min(F_t, row_limit) rows: the compact tables of
      `flix.rows`, which hold only the rows a batch uses.
  """

  space: FeatureSpace
  alpha: float | None = None
  rslora: bool = False
  targets: tuple[str, ...] = ("*",)
  strategy: Strategy = "auto"
  row_limit: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    if self.strategy not in STRATEGIES:
      raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
    if self.alpha is not None and not self.alpha > 0:
      raise ValueError(f"alpha must be > 0 or None, got {self.alpha!r}")
    if self.row_limit is not None and self.row_limit < 1:
      raise ValueError(f"row_limit must be >= 1 or None, got {self.row_limit!r}")
    if not self.targets or not all(isinstance(p, str) and p for p in self.targets):
      raise ValueError(f"targets must be non-empty fnmatch patterns, got {self.targets!r}")

  def check_targets(self, projections: Sequence[str]) -> None:
    """Raises ValueError unless every target pattern matches one of `projections` (a network's
    declared projection names)."""
    for pattern in self.targets:
      if not fnmatch.filter(projections, pattern):
        raise ValueError(f"target pattern {pattern!r} matches no projection of this network; "
                         f"its projections are {list(projections)}")

  def adapts(self, target: str) -> bool:
    """Whether the projection named `target` gets adapters."""
    return any(fnmatch.fnmatchcase(target, p) for p in self.targets)

  def scale(self, rank: int) -> float:
    alpha = rank if self.alpha is None else self.alpha
    return alpha / (math.sqrt(rank) if self.rslora else rank)

  def table_rows(self, size: int) -> int:
    return size if self.row_limit is None else min(size, self.row_limit)

  @property
  def table_rank(self) -> int:
    """Columns of all feature tables side by side: sum over types of rows_t * r_t."""
    return sum(self.table_rows(t.size) * t.rank for t in self.space.types)

  @property
  def example_rank(self) -> int:
    """Columns of one example's feature adapters (one row per type): sum over types of r_t."""
    return sum(t.rank for t in self.space.types)

  def resolved_strategy(self) -> str:
    """The strategy `auto` stands for: masked multiplies every token by all `table_rank`
    columns, gather by the example's `example_rank` only (plus a gather of its rows), so masked
    is chosen only while it does at most MASKED_MAX_EXCESS times gather's adapter FLOPs (and
    at most MASKED_MAX_TABLE_RANK columns). Measured (docs/performance.md): where masked did
    more than that, gather's train step was faster at every size tried (the study's FLix
    derived, 57 vs 8 columns: 1.43x LoRA's step time instead of 1.84x)."""
    if self.strategy != "auto":
      return self.strategy
    small = (self.table_rank <= MASKED_MAX_TABLE_RANK
             and self.table_rank <= MASKED_MAX_EXCESS * self.example_rank)
    return "masked" if small else "gather"

  def replace(self, **changes) -> "FlixConfig":
    return dataclasses.replace(self, **changes)

  # -- serialisation --------------------------------------------------------------------------
  def to_json(self) -> str:
    data = dataclasses.asdict(self)
    data["space"] = json.loads(self.space.to_json())
    return json.dumps(data, indent=2, ensure_ascii=False)

  @classmethod
  def from_json(cls, text: str) -> "FlixConfig":
    data = json.loads(text)
    data["space"] = FeatureSpace.from_json(json.dumps(data["space"]))
    return cls(**data)

