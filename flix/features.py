"""The feature space: which dataset features own adapters, and how examples map to ids.

A `FeatureSpace` holds named feature types (e.g. `task`, `lang`), each a closed vocabulary
of values with its own adapter rank, plus an optional always-on `shared` adapter (FLix with
only `shared` is exactly LoRA). An example's features, e.g. `{"task": "ordinal", "lang": "fr"}`,
become an int32 array `[n_types]` (one id per type, in the space's type order). The id
`INACTIVE` (-1) means "this type contributes nothing" for the example: the feature was dropped
by feature dropout, or its value is unknown under the `drop` policy (the zero-shot path for an
unseen language).

This is the one place where feature values become ids; everything downstream carries the ids.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Literal, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

INACTIVE = -1
SHARED = "shared"

UnknownPolicy = Literal["error", "drop"]
UNKNOWN_POLICIES = ("error", "drop")


class UnknownFeatureError(ValueError):
  """A feature value (or type) that the feature space does not know."""


@dataclasses.dataclass(frozen=True)
class FeatureType:
  """One feature type: a closed vocabulary of values, each owning a rank-`rank` adapter."""

  name: str
  values: tuple[str, ...]
  rank: int

  def __post_init__(self):
    object.__setattr__(self, "values", tuple(self.values))
    if not self.name or not self.name.isidentifier():
      raise ValueError(f"feature type name must be a Python identifier, got {self.name!r}")
    if self.name == SHARED:
      raise ValueError(f"{SHARED!r} is reserved for the always-on adapter; set "
                       "FeatureSpace.shared_rank instead of declaring a type named so")
    if not self.values:
      raise ValueError(f"feature type {self.name!r} has no values")
    if len(set(self.values)) != len(self.values):
      dupes = sorted({v for v in self.values if self.values.count(v) > 1})
      raise ValueError(f"feature type {self.name!r} lists values more than once: {dupes}")
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"feature type {self.name!r} needs a rank >= 1, got {self.rank!r}")

  @property
  def size(self) -> int:
    return len(self.values)

  def id_of(self, value: str, unknown: UnknownPolicy = "error") -> int:
    try:
      return self.values.index(value)
    except ValueError:
      if unknown == "drop":
        return INACTIVE
      raise UnknownFeatureError(
          f"unknown value {value!r} for feature type {self.name!r}; known values: "
          f"{list(self.values)} (use unknown='drop' to run without this feature)") from None


@dataclasses.dataclass(frozen=True)
class FeatureSpace:
  """Feature types in a fixed order, plus an optional always-on shared adapter.

  Attributes:
    types: the featurized types; ids arrays have one column per type, in this order.
    shared_rank: rank of the always-on `shared` adapter; 0 means no shared adapter.
  """

  types: tuple[FeatureType, ...] = ()
  shared_rank: int = 0

  def __post_init__(self):
    object.__setattr__(self, "types", tuple(self.types))
    names = [t.name for t in self.types]
    if len(set(names)) != len(names):
      raise ValueError(f"feature type names must be unique, got {names}")
    if not isinstance(self.shared_rank, int) or self.shared_rank < 0:
      raise ValueError(f"shared_rank must be an int >= 0, got {self.shared_rank!r}")
    if not self.types and not self.shared_rank:
      raise ValueError("a feature space needs at least one feature type or a shared_rank > 0")

  @classmethod
  def build(cls, types: Mapping[str, Sequence[str]], ranks: Mapping[str, int] | int,
            shared_rank: int = 0) -> "FeatureSpace":
    """E.g. `FeatureSpace.build({"task": [...], "lang": [...]}, ranks={"task": 8, "lang": 4})`."""
    if isinstance(ranks, int):
      ranks = {name: ranks for name in types}
    missing = [name for name in types if name not in ranks]
    if missing:
      raise ValueError(f"no rank given for feature types {missing}")
    return cls(tuple(FeatureType(n, tuple(v), ranks[n]) for n, v in types.items()), shared_rank)

  @classmethod
  def lora(cls, rank: int) -> "FeatureSpace":
    """Plain LoRA: only the always-on shared adapter."""
    return cls((), shared_rank=rank)

  def with_ranks(self, ranks: Mapping[str, int] | int, shared_rank: int | None = None
                 ) -> "FeatureSpace":
    """The same types and values (so the same ids) with other ranks."""
    if isinstance(ranks, int):
      ranks = {t.name: ranks for t in self.types}
    unknown = sorted(set(ranks) - set(self.names))
    if unknown:
      raise UnknownFeatureError(f"ranks given for unknown feature types {unknown}; known types: "
                                f"{list(self.names)}")
    return FeatureSpace(tuple(FeatureType(t.name, t.values, ranks.get(t.name, t.rank))
                              for t in self.types),
                        self.shared_rank if shared_rank is None else shared_rank)

  # -- structure ----------------------------------------------------------------------------
  @property
  def n_types(self) -> int:
    return len(self.types)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.types)

  @property
  def sizes(self) -> tuple[int, ...]:
    return tuple(t.size for t in self.types)

  @property
  def ranks(self) -> tuple[int, ...]:
    return tuple(t.rank for t in self.types)

  @property
  def active_rank(self) -> int:
    """Rank of one example's update when every feature is active (the LoRA-equivalent rank)."""
    return sum(self.ranks) + self.shared_rank

  def type(self, name: str) -> FeatureType:
    for t in self.types:
      if t.name == name:
        return t
    raise UnknownFeatureError(f"unknown feature type {name!r}; known types: {list(self.names)}")

  # -- examples -> ids ------------------------------------------------------------------------
  def encode(self, features: Mapping[str, str], unknown: UnknownPolicy = "error") -> np.ndarray:
    """Maps one example's features to int32 ids `[n_types]`.

    Every type of the space must be named (a missing type is an error under `error`, INACTIVE
    under `drop`); naming a type the space does not have is always an error.
    """
    if unknown not in UNKNOWN_POLICIES:
      raise ValueError(f"unknown policy {unknown!r}; expected one of {UNKNOWN_POLICIES}")
    extra = [k for k in features if k not in self.names]
    if extra:
      raise UnknownFeatureError(
          f"unknown feature types {extra} in {dict(features)}; known types: {list(self.names)}")
    ids = np.full((self.n_types,), INACTIVE, np.int32)
    for i, t in enumerate(self.types):
      if t.name not in features:
        if unknown == "error":
          raise UnknownFeatureError(
              f"example {dict(features)} has no value for feature type {t.name!r}")
        continue
      ids[i] = t.id_of(features[t.name], unknown)
    return ids

  def encode_batch(self, examples: Iterable[Mapping[str, str]],
                   unknown: UnknownPolicy = "error") -> np.ndarray:
    """int32 ids `[batch, n_types]`."""
    rows = [self.encode(e, unknown) for e in examples]
    return np.stack(rows) if rows else np.zeros((0, self.n_types), np.int32)

  def decode(self, ids: Sequence[int]) -> dict[str, str]:
    """Inverse of `encode` for one example; inactive types are left out."""
    self.check_ids(np.asarray(ids)[None])
    return {t.name: t.values[i] for t, i in zip(self.types, ids) if i != INACTIVE}

  def check_ids(self, ids) -> None:
    """Raises ValueError unless `ids` is int `[batch, n_types]` with ids in [INACTIVE, size)."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != self.n_types:
      raise ValueError(f"feature ids must have shape [batch, {self.n_types}] (types "
                       f"{list(self.names)}), got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"feature ids must be integers, got dtype {ids.dtype}")
    for col, t in enumerate(self.types):
      bad = np.flatnonzero((ids[:, col] < INACTIVE) | (ids[:, col] >= t.size))
      if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"feature id {int(ids[row, col])} for type {t.name!r} (example {row}) is out of "
            f"range: expected {INACTIVE} (inactive) or 0..{t.size - 1}")

  # -- serialisation --------------------------------------------------------------------------
  def to_json(self) -> str:
    return json.dumps({"types": [dataclasses.asdict(t) for t in self.types],
                       "shared_rank": self.shared_rank}, indent=2, ensure_ascii=False)

  @classmethod
  def from_json(cls, text: str) -> "FeatureSpace":
    data = json.loads(text)
    return cls(tuple(FeatureType(t["name"], tuple(t["values"]), t["rank"]) for t in data["types"]),
               data.get("shared_rank", 0))


def feature_dropout(ids: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
  """Switches each (example, type) feature off with probability `rate`.

  Args:
    ids: int `[batch, n_types]` feature ids.
    rng: a PRNG key; the same key gives the same mask.
    rate: drop probability in [0, 1]. The shared adapter is not in `ids` and is never dropped.

  Returns:
    ids with dropped entries set to INACTIVE.
  """
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"feature dropout rate must be in [0, 1], got {rate}")
  if rate == 0.0:
    return ids
  keep = jax.random.bernoulli(rng, 1.0 - rate, ids.shape)
  return jnp.where(keep, ids, INACTIVE).astype(ids.dtype)
