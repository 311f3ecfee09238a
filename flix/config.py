"""`FlixConfig`: the method's side of FLix: each feature type's adapter rank, the always-on
shared adapter, which projections get adapters, their scaling and compute strategy.

The data's side is the `FeatureSpace` (types and values, hence the ids); FlixConfig pairs one
with ranks:

    space = FeatureSpace.build({"task": ["cardinal", "ordinal"], "lang": ["en", "fr", "de"]})
    flix = FlixConfig(space, ranks={"task": 8, "lang": 4}, shared_rank=0)
    lora = FlixConfig.lora(16)  # Only the shared adapter (an empty FeatureSpace): plain LoRA.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from typing import Literal, Mapping, Sequence

from flix.errors import UnknownFeatureError
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
    space: the feature space (types and values: the data's; an empty one for plain LoRA).
    ranks: each feature type's adapter rank, in the space's type order. Given as one int (every
      type), a mapping that names exactly the space's types (`{"task": 8, "lang": 4}`; a type
      missing or unknown is an error), or a sequence in the space's order; stored as the tuple.
    shared_rank: rank of the always-on `shared` adapter; 0 means none.
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
  ranks: Mapping[str, int] | Sequence[int] | int
  shared_rank: int = 0
  alpha: float | None = None
  rslora: bool = False
  targets: tuple[str, ...] = ("*",)
  strategy: Strategy = "auto"
  row_limit: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    object.__setattr__(self, "ranks", _type_ranks(self.space, self.ranks))
    if isinstance(self.shared_rank, bool) or not isinstance(self.shared_rank, int) or (
        self.shared_rank < 0):
      raise ValueError(f"shared_rank must be an int >= 0, got {self.shared_rank!r}")
    if not self.space.types and not self.shared_rank:
      raise ValueError("FlixConfig needs at least one feature type in its space or a "
                       "shared_rank > 0 (FlixConfig.lora(rank) for plain LoRA)")
    if self.strategy not in STRATEGIES:
      raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
    if self.alpha is not None and not self.alpha > 0:
      raise ValueError(f"alpha must be > 0 or None, got {self.alpha!r}")
    if self.row_limit is not None and self.row_limit < 1:
      raise ValueError(f"row_limit must be >= 1 or None, got {self.row_limit!r}")
    if not self.targets or not all(isinstance(p, str) and p for p in self.targets):
      raise ValueError(f"targets must be non-empty fnmatch patterns, got {self.targets!r}")

  @classmethod
  def lora(cls, rank: int, **kwargs) -> "FlixConfig":
    """Plain LoRA: only the always-on shared adapter, of `rank` (an empty FeatureSpace)."""
    return cls(FeatureSpace(), ranks=(), shared_rank=rank, **kwargs)

  def rank(self, name: str) -> int:
    """The adapter rank of feature type `name`."""
    self.space.type(name)  # Raises UnknownFeatureError naming the known types.
    return self.ranks[self.space.names.index(name)]

  @property
  def active_rank(self) -> int:
    """Rank of one example's update when every feature is active (the LoRA-equivalent rank)."""
    return self.example_rank + self.shared_rank

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
    return sum(self.table_rows(t.size) * r for t, r in zip(self.space.types, self.ranks))

  @property
  def example_rank(self) -> int:
    """Columns of one example's feature adapters (one row per type): sum over types of r_t."""
    return sum(self.ranks)

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
    """`{"space": {"types": [...]}, "ranks": {type: rank}, "shared_rank": ..., "alpha": ...}`."""
    data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    data.update(space=self.space.to_dict(), ranks=dict(zip(self.space.names, self.ranks)),
                targets=list(self.targets))
    return json.dumps(data, indent=2, ensure_ascii=False)

  @classmethod
  def from_json(cls, text: str) -> "FlixConfig":
    """Inverse of `to_json`; also reads the JSON saved before ranks moved from the feature
    space to FlixConfig (each rank in `space.types[i].rank`, the shared rank in
    `space.shared_rank`), as checkpoints written then hold it."""
    data = json.loads(text)
    space = data["space"]
    if "ranks" not in data:  # The old format.
      data["ranks"] = {t["name"]: t["rank"] for t in space["types"]}
      data["shared_rank"] = space.get("shared_rank", 0)
    data["space"] = FeatureSpace.from_dict(space)
    return cls(**data)


def _type_ranks(space: FeatureSpace, ranks) -> tuple[int, ...]:
  """`ranks` (one int, `{type: rank}` naming exactly the space's types, or a sequence in the
  space's order) as a tuple in the space's order; each rank an int >= 1."""
  names = list(space.names)
  if isinstance(ranks, int) and not isinstance(ranks, bool):
    out = (ranks,) * len(names)
  elif isinstance(ranks, Mapping):
    missing = [n for n in names if n not in ranks]
    unknown = [n for n in ranks if n not in names]
    if missing or unknown:
      problem = "; ".join(p for p in (f"no rank for {missing}" if missing else "",
                                      f"unknown types {unknown}" if unknown else "") if p)
      error = UnknownFeatureError if unknown else ValueError
      raise error(f"ranks {dict(ranks)} must name exactly the feature space's types {names} "
                  f"({problem}); give each type its rank, or one int for all")
    out = tuple(ranks[n] for n in names)
  elif isinstance(ranks, Sequence) and not isinstance(ranks, str):
    out = tuple(ranks)
    if len(out) != len(names):
      raise ValueError(f"ranks {list(out)} must hold one rank per feature type {names}, in "
                       "that order (or use {type: rank})")
  else:
    raise ValueError(f"ranks must be an int, {{type: rank}} or one rank per feature type "
                     f"{names}, got {ranks!r}")
  bad = [(n, r) for n, r in zip(names, out)
         if isinstance(r, bool) or not isinstance(r, int) or r < 1]
  if bad:
    raise ValueError(f"adapter ranks must be ints >= 1, got {dict(bad)} (types {names})")
  return out

