"""The methods a study compares, each at the same per-example rank as its LoRA baseline.

Every method trains adapters on every projection of the same frozen base, with the same steps,
batch, optimizer and learning rate (the grid's budget); only the adapters differ. LoRA's rank is
the per-example rank of the FLix variants (16), so both cost the same per example.

  lora              one shared adapter, rank 16
  flix              task 8 + language 8, feature dropout 0.3 (the paper's design)
  flix_shared       shared 8 + task 4 + language 4, dropout 0.3 (the pilot's best)
  flix_derived      shared 8 + task 4 + language 2 + family 1 + script 1, dropout 0.3: an unseen
                    language keeps its family and script adapters
Levers (validation only), one change each against flix / flix_shared:
  flix_p{0.0,0.5,0.7}          feature dropout
  flix_t12_l4, flix_t4_l12     task vs language rank (the paper gives languages less)
  flix_shared_p{0.0,0.5}       dropout with a shared adapter
  flix_derived_p0.0            flix_derived without feature dropout
Issue 35's levers and baselines (the learning rate is the budget's, `--finetune_learning_rate`):
  lora_r{N}         LoRA of rank N (any N >= 1): the rank lever. N != 16 is EXEMPT from the
                    per-example rank budget (labelled so in reports); `matched_lora_rank`
                    gives the N whose trained values equal FLix derived's (offline2: 59,
                    offline: 65, morph: 54), the parameter-matched LoRA
  lora_fs           LoRA rank 16 whose input text also names the language's family and script
                    ("cardinal nl Germanic Latin: 42"): FLix derived's information, as text
                    (offline grids)
  flix_task         task adapters only, rank 16, no dropout: one LoRA per task (offline grids)
  flix_lang         language adapters only, rank 16, no dropout (offline grids)
  pair              one rank-16 adapter per trained cell (feature type `pair`); an unseen pair
                    or language gets the base alone: the no-interference reference on trained
                    pairs (offline grids)
  pair_shared       shared 8 + pair 8: an unseen cell gets the shared adapter (offline grids)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from flix.training import loop

LORA_RANK = 16
_LORA_RANK_NAME = re.compile(r"^lora_r([1-9][0-9]*)$")
# Fields added after runs 1-12 were archived, with the defaults those runs had: a method at
# these defaults keeps its archived key (`MethodSpec.key`).
_NEW_FIELDS = {"features": ("task", "lang"), "inputs": "", "rank_exempt": False}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One compared method (JSON-serialisable; part of every run's cache key).

  Attributes:
    name: its name in reports.
    method: "lora" or "flix".
    feature_ranks: flix ranks per feature type, e.g. (("task", 8), ("lang", 8)).
    shared_rank: the always-on shared adapter's rank (lora: the LoRA rank).
    feature_dropout: flix's per-feature drop probability in training.
    derived: language-table fields added as derived feature types ("family", "script").
    features: the space's non-derived feature types, from "task", "lang" and "pair" (each
      trained cell; `flix.data.pairs.PAIR_FEATURE`).
    inputs: what the input text carries besides the task and language: "" or "family_script".
    rank_exempt: not held to LoRA's per-example rank (`check_budget`): a rank lever, labelled
      in reports.
  """

  name: str
  method: str
  feature_ranks: tuple[tuple[str, int], ...] = ()
  shared_rank: int = 0
  feature_dropout: float = 0.0
  derived: tuple[str, ...] = ()
  features: tuple[str, ...] = ("task", "lang")
  inputs: str = ""
  rank_exempt: bool = False

  def __post_init__(self):
    object.__setattr__(self, "feature_ranks", tuple(tuple(r) for r in self.feature_ranks))
    object.__setattr__(self, "derived", tuple(self.derived))
    object.__setattr__(self, "features", tuple(self.features))
    if self.method not in ("lora", "flix"):
      raise ValueError(f"method {self.name!r}: kind {self.method!r} is not 'lora' or 'flix'")
    types = (*self.features, *self.derived)  # The grids' feature space for this method.
    named = [t for t, _ in self.feature_ranks]
    if self.method == "flix" and sorted(named) != sorted(types):
      raise ValueError(f"method {self.name!r}: feature_ranks name {named}, but its feature "
                       f"space has the types {list(types)}: give each of them a rank")

  def key(self) -> dict[str, Any]:
    """The method's part of a run key: its fields, without those added since runs 1-12 where
    they have the value those runs had (so archived keys keep their meaning)."""
    key = dataclasses.asdict(self)
    for name, default in _NEW_FIELDS.items():
      if key[name] == default or (isinstance(default, tuple) and tuple(key[name]) == default):
        del key[name]
    return key

  @property
  def per_example_rank(self) -> int:
    """The rank of one example's update with every feature active."""
    return self.shared_rank + sum(r for _, r in self.feature_ranks)

  @property
  def label(self) -> str:
    """The name in reports; a rank-exempt method says so."""
    return f"{self.name} (rank {self.per_example_rank}, exempt from the per-example rank " \
           "budget)" if self.rank_exempt else self.name

  def adapters(self) -> loop.AdapterSettings:
    if self.method == "lora":
      return loop.AdapterSettings(method="lora", lora_rank=self.shared_rank)
    return loop.AdapterSettings(method="flix", feature_ranks=dict(self.feature_ranks),
                                shared_rank=self.shared_rank,
                                feature_dropout=self.feature_dropout)


def _flix(name, ranks: Mapping[str, int], shared=0, dropout=0.3, derived=()) -> MethodSpec:
  return MethodSpec(name, "flix", tuple(ranks.items()), shared, dropout, tuple(derived),
                    features=tuple(r for r in ranks if r not in derived))


METHODS: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("lora", "lora", shared_rank=LORA_RANK),
    _flix("flix", {"task": 8, "lang": 8}),
    _flix("flix_shared", {"task": 4, "lang": 4}, shared=8),
    _flix("flix_derived", {"task": 4, "lang": 2, "family": 1, "script": 1}, shared=8,
          derived=("family", "script")),
    _flix("flix_p0.0", {"task": 8, "lang": 8}, dropout=0.0),
    _flix("flix_p0.5", {"task": 8, "lang": 8}, dropout=0.5),
    _flix("flix_p0.7", {"task": 8, "lang": 8}, dropout=0.7),
    _flix("flix_t12_l4", {"task": 12, "lang": 4}),
    _flix("flix_t4_l12", {"task": 4, "lang": 12}),
    _flix("flix_shared_p0.0", {"task": 4, "lang": 4}, shared=8, dropout=0.0),
    _flix("flix_shared_p0.5", {"task": 4, "lang": 4}, shared=8, dropout=0.5),
    _flix("flix_derived_p0.0", {"task": 4, "lang": 2, "family": 1, "script": 1}, shared=8,
          dropout=0.0, derived=("family", "script")),
    MethodSpec("lora_fs", "lora", shared_rank=LORA_RANK, inputs="family_script"),
    _flix("flix_task", {"task": LORA_RANK}, dropout=0.0),
    _flix("flix_lang", {"lang": LORA_RANK}, dropout=0.0),
    _flix("pair", {"pair": LORA_RANK}, dropout=0.0),
    _flix("pair_shared", {"pair": LORA_RANK // 2}, shared=LORA_RANK // 2, dropout=0.0),
)}
ABLATIONS = {
    "dropout": ("flix_p0.0", "flix", "flix_p0.5", "flix_p0.7"),
    "ranks": ("flix_t12_l4", "flix", "flix_t4_l12"),
    "shared": ("flix", "flix_shared", "flix_shared_p0.0", "flix_shared_p0.5"),
    # Run 5 found dropout hurts: the three structures compared without it.
    "no_dropout": ("flix_p0.0", "flix_shared_p0.0", "flix_derived_p0.0"),
}
# Each ablation's own baseline (its differences are paired against it, besides LoRA): no
# feature dropout, the paper's equal ranks, no shared adapter.
ABLATION_REFERENCES = {"dropout": "flix_p0.0", "ranks": "flix", "shared": "flix",
                       "no_dropout": "flix_p0.0"}


def method(name: str) -> MethodSpec:
  """The method called `name`: one of METHODS, or `lora_r{N}` (LoRA of rank N)."""
  if name in METHODS:
    return METHODS[name]
  match = _LORA_RANK_NAME.match(name)
  if match:
    rank = int(match.group(1))
    return MethodSpec(name, "lora", shared_rank=rank, rank_exempt=rank != LORA_RANK)
  raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)} and lora_r{{N}} (LoRA of "
                   "rank N)")


def matched_lora_rank(space) -> int:
  """The LoRA rank whose trained values equal flix_derived's over `space` (a FeatureSpace with
  task, lang, family and script): a rank-r adapter costs the same on every projection whether
  it is LoRA's or one feature value's, so the rank is FLix derived's ranks summed over values."""
  spec = METHODS["flix_derived_p0.0"]
  sizes = dict(zip(space.names, space.sizes))
  return spec.shared_rank + sum(rank * sizes[name] for name, rank in spec.feature_ranks)


def check_budget(methods) -> None:
  """Raises ValueError unless every method not `rank_exempt` has LoRA's per-example rank."""
  off = [f"{m.name} ({m.per_example_rank})" for m in methods
         if m.per_example_rank != LORA_RANK and not m.rank_exempt]
  if off:
    raise ValueError(f"methods {off} do not have the per-example rank {LORA_RANK} of the LoRA "
                     "baseline; the comparison would not be at equal cost")
