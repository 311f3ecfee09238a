"""The feature space: which dataset features own adapters, and how examples map to ids.

A `FeatureSpace` holds named feature types (e.g. `task`, `lang`), each a closed vocabulary
of values: it is the data's side of FLix. The method's side (each type's adapter rank, the
always-on `shared` adapter, scaling, targets) is `flix.config.FlixConfig`. An example's
features, e.g. `{"task": "ordinal", "lang": "fr"}`, become an int32 array `[n_types]` (one id
per type, in the space's type order). The id `INACTIVE` (-1) means "this type contributes
nothing" for the example: the feature was dropped by feature dropout, or its value is unknown
under the `drop` policy (the zero-shot path for an unseen language).

Derived feature types: a type may be derived from another through a table (e.g. `family` and
`script` from `lang`, `flix.data.languages`). Its value is looked up when the example is
encoded, here and nowhere else, so an unseen language (no `lang` adapter) still gets its family
and script adapters if they were trained. A source value missing from the table, or a derived
value no trained language has, leaves the derived type INACTIVE (dropped, never an error); an
example may also name a derived value explicitly (e.g. for a language the table lacks), which
must agree with the table when both exist. The tables are part of the space, so checkpoints
record them.

This is the one place where feature values become ids; everything downstream carries the ids.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Literal, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flix.errors import UnknownFeatureError

INACTIVE = -1
SHARED = "shared"
# The model-batch key of an example's ids int32 `[n_types]` (`[batch, n_types]` in a batch).
FEATURE_IDS = "feature_ids"

UnknownPolicy = Literal["error", "drop"]
UNKNOWN_POLICIES = ("error", "drop")


@dataclasses.dataclass(frozen=True)
class FeatureType:
  """One feature type: a closed vocabulary of values, each owning an adapter (its rank is the
  method's, `FlixConfig.ranks`).

  A derived type has a `source` type and a `table` of (source value, value) pairs: its value
  for an example is the table's entry for the example's source value.
  """

  name: str
  values: tuple[str, ...]
  source: str | None = None
  table: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "values", tuple(self.values))
    table = dict(self.table.items() if isinstance(self.table, Mapping) else self.table)
    object.__setattr__(self, "table", tuple(sorted(table.items())))
    if self.source is None and self.table:
      raise ValueError(f"feature type {self.name!r} has a table but no source type")
    if not self.name or not self.name.isidentifier():
      raise ValueError(f"feature type name must be a Python identifier, got {self.name!r}")
    if self.name == SHARED:
      raise ValueError(f"{SHARED!r} is reserved for the always-on adapter; set "
                       "FlixConfig.shared_rank instead of declaring a type named so")
    if not self.values:
      raise ValueError(f"feature type {self.name!r} has no values")
    if len(set(self.values)) != len(self.values):
      dupes = sorted({v for v in self.values if self.values.count(v) > 1})
      raise ValueError(f"feature type {self.name!r} lists values more than once: {dupes}")

  @property
  def size(self) -> int:
    return len(self.values)

  @property
  def derived(self) -> bool:
    return self.source is not None

  def derive(self, source_value: str | None) -> str | None:
    """The table's value for `source_value`, or None when it has none."""
    return dict(self.table).get(source_value) if source_value is not None else None

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
  """Feature types in a fixed order (none for plain LoRA, `FlixConfig.lora`).

  Attributes:
    types: the featurized types; ids arrays have one column per type, in this order.
  """

  types: tuple[FeatureType, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "types", tuple(self.types))
    names = [t.name for t in self.types]
    if len(set(names)) != len(names):
      raise ValueError(f"feature type names must be unique, got {names}")
    for t in self.types:
      if t.derived and (t.source not in names or self.type(t.source).derived):
        raise ValueError(f"derived feature type {t.name!r} needs a non-derived source type in "
                         f"the space, got source {t.source!r} (types {names})")

  @classmethod
  def build(cls, types: Mapping[str, Sequence[str]], *,
            derived: Mapping[str, tuple[str, Mapping[str, str]]] | None = None
            ) -> "FeatureSpace":
    """E.g. `FeatureSpace.build({"task": ["cardinal", "ordinal"], "lang": ["en", "fr"]})`.

    derived: `{name: (source type, {source value: value})}`; the derived type's values are the
      table's values for the source type's values (sorted), e.g.
      `{"family": ("lang", {"fr": "Romance", "de": "Germanic"})}`.
    """
    derived = dict(derived or {})
    built = [FeatureType(n, tuple(v)) for n, v in types.items()]
    for name, (source, table) in derived.items():
      if source not in types:
        raise ValueError(f"derived feature type {name!r}: source {source!r} is not one of the "
                         f"types {list(types)}")
      values = sorted({table[v] for v in types[source] if v in table})
      if not values:
        raise ValueError(f"derived feature type {name!r} has no value: none of {source!r}'s "
                         f"values {list(types[source])} is in its table")
      built.append(FeatureType(name, tuple(values), source, table))
    return cls(tuple(built))

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

  def type(self, name: str) -> FeatureType:
    for t in self.types:
      if t.name == name:
        return t
    raise UnknownFeatureError(f"unknown feature type {name!r}; known types: {list(self.names)}")

  # -- examples -> ids ------------------------------------------------------------------------
  def encode(self, features: Mapping[str, str], unknown: UnknownPolicy = "error", *,
             partial: bool = False) -> np.ndarray:
    """Maps one example's features to int32 ids `[n_types]`, deriving derived types.

    Every non-derived type of the space must be named (a missing type is an error under
    `error`, INACTIVE under `drop`), unless `partial` (a combination of some of the features,
    e.g. one adapter to export: unnamed types are INACTIVE, unknown values still follow
    `unknown`); naming a type the space does not have is always an error.
    Derived types (see the module docstring) are looked up from their source's value, or taken
    from `features` when named there.
    """
    if unknown not in UNKNOWN_POLICIES:
      raise ValueError(f"unknown policy {unknown!r}; expected one of {UNKNOWN_POLICIES}")
    extra = [k for k in features if k not in self.names]
    if extra:
      raise UnknownFeatureError(
          f"unknown feature types {extra} in {dict(features)}; known types: {list(self.names)}")
    ids = np.full((self.n_types,), INACTIVE, np.int32)
    for i, t in enumerate(self.types):
      if t.derived:
        ids[i] = self._derived_id(t, features, unknown)
      elif t.name in features:
        ids[i] = t.id_of(features[t.name], unknown)
      elif unknown == "error" and not partial:
        raise UnknownFeatureError(
            f"example {dict(features)} has no value for feature type {t.name!r}")
    return ids

  @staticmethod
  def _derived_id(t: FeatureType, features: Mapping[str, str], unknown: UnknownPolicy) -> int:
    looked_up, given = t.derive(features.get(t.source)), features.get(t.name)
    if given is not None and looked_up is not None and given != looked_up:
      raise UnknownFeatureError(
          f"feature {t.name!r} = {given!r} contradicts the table, which derives {looked_up!r} "
          f"from {t.source!r} = {features[t.source]!r}")
    if given is not None:
      return t.id_of(given, unknown)
    return t.id_of(looked_up, "drop") if looked_up is not None else INACTIVE

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
    return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

  def to_dict(self) -> dict:
    """`{"types": [{"name", "values"[, "source", "table"]}, ...]}`."""
    types = []
    for t in self.types:
      entry = {"name": t.name, "values": list(t.values)}
      if t.derived:
        entry.update(source=t.source, table=dict(t.table))
      types.append(entry)
    return {"types": types}

  @classmethod
  def from_json(cls, text: str) -> "FeatureSpace":
    return cls.from_dict(json.loads(text))

  @classmethod
  def from_dict(cls, data: Mapping) -> "FeatureSpace":
    """Inverse of `to_dict`. The ranks that spaces saved before ranks moved to `FlixConfig`
    carry (`types[i].rank`, `shared_rank`) are ignored here; `FlixConfig.from_json` reads
    them."""
    return cls(tuple(FeatureType(t["name"], tuple(t["values"]), t.get("source"),
                                 t.get("table", {})) for t in data["types"]))


def check_dropout_rate(rate: float) -> None:
  """Raises ValueError unless 0 <= rate < 1 (at 1 every feature adapter is always off, so
  nothing but the shared adapter could ever train)."""
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
    raise ValueError(f"feature dropout rate must be a number in [0, 1), got {rate!r} (at 1.0 "
                     "every feature adapter would be switched off in every example)")


def feature_dropout(ids: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
  """Switches each (example, type) feature off with probability `rate`, independently.

  Args:
    ids: int `[batch, n_types]` feature ids.
    rng: a PRNG key; the same key gives the same mask.
    rate: drop probability in [0, 1). The shared adapter is not in `ids` and is never dropped.

  Returns:
    ids with dropped entries set to INACTIVE; kept entries are unchanged, in their own column.
  """
  check_dropout_rate(rate)
  if rate == 0.0:
    return ids
  keep = jax.random.bernoulli(rng, 1.0 - rate, ids.shape)
  return jnp.where(keep, ids, INACTIVE).astype(ids.dtype)


def parse_features(text: str) -> dict[str, str]:
  """"task=ordinal,lang=fr" -> {"task": "ordinal", "lang": "fr"} (a CLI's --features)."""
  out = {}
  for item in text.split(","):
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      raise ValueError(f"--features: expected TYPE=VALUE items separated by commas, got {item!r}")
    key, value = (s.strip() for s in item.split("=", 1))
    if key in out:
      raise ValueError(f"--features: feature type {key!r} given twice")
    out[key] = value
  return out
