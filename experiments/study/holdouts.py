"""Distinct held-out cells for validation and for test (issue 35): the `offline2` and `morph2`
grids' hold-out design.

The first grids (`offline`, `morph`) evaluate the same held-out cells on validation and on test
(only the examples differ), so every choice made on validation has seen the test cells. Here a
seed draws two disjoint sets, each with its own unseen pairs and its own unseen languages:
validation's cells are never evaluated on test and test's never on validation. Trained (seen)
cells are evaluated on both splits (their validation and test examples are disjoint; they are
trained anyway).

What may be an unseen pair (`SplitDesign`):
  - its task is one of `pair_tasks`, and at most one cell per language is an unseen pair, so
    every seen language keeps all its other tasks trained and every task stays trained in all
    but `2 * count + unseen languages` languages ("task and language each well learned
    elsewhere");
  - where the grid's examples are in memory (the offline grid), the cell's language-specific
    text is in the language's training text: `coverage` (the share of the cell's alphabetic
    character 4-grams found in the train targets of the language's other cells) is at least
    `min_coverage`. A cell whose targets have no letters (decimal: "835.282,97") has nothing
    language-specific in its words and counts as covered.
Unseen languages are drawn among languages whose family keeps a trained member, so a derived
family adapter exists for them. Nothing here reads a model's results.
"""

from __future__ import annotations

import dataclasses
from typing import Collection, Mapping, Sequence

import numpy as np

from flix.data import languages
from flix.data.pairs import HoldOut, Pair

SPLITS = ("validation", "test")
NGRAM = 4


@dataclasses.dataclass(frozen=True)
class SplitDesign:
  """How a seed's held-out cells are drawn (JSON-serialisable; part of the grid's key).

  Attributes:
    pair_tasks: tasks whose cells may be unseen pairs, one entry per unseen pair in EACH split
      (a task listed twice gives two unseen pairs per split).
    unseen_langs: unseen languages per split.
    min_coverage: the least `coverage` of an unseen pair (0: no requirement).
    heldout_examples: validation / test examples decoded per held-out cell (unseen pairs and
      unseen languages' cells; None: all the split has); seen cells use the budget's
      `eval_examples`.
  """

  pair_tasks: tuple[str, ...]
  unseen_langs: int = 1
  min_coverage: float = 0.0
  heldout_examples: int | None = 200

  def __post_init__(self):
    object.__setattr__(self, "pair_tasks", tuple(self.pair_tasks))
    if not isinstance(self.unseen_langs, int) or self.unseen_langs < 0:
      raise ValueError(f"unseen_langs must be an int >= 0, got {self.unseen_langs!r}")
    if not 0.0 <= self.min_coverage <= 1.0:
      raise ValueError(f"min_coverage must be in [0, 1], got {self.min_coverage!r}")


@dataclasses.dataclass(frozen=True)
class SplitHoldOut:
  """A seed's held-out cells, split: `holdout` (what training never sees: both splits' cells)
  and, per split, its own unseen pairs and unseen languages."""

  holdout: HoldOut
  splits: Mapping[str, Mapping[str, tuple]]  # {split: {"unseen_pairs": (Pair,), "unseen_langs"}}

  def evaluated(self, split: str, pair: Pair) -> bool:
    """Whether `pair` is evaluated on `split`: a seen cell, or one of the split's own."""
    kind = self.holdout.kind(pair)
    if kind == "seen_pair":
      return True
    mine = self.splits[split]
    if kind == "unseen_language":
      return pair.lang in mine["unseen_langs"]
    return pair.cell in mine["unseen_pairs"]

  def to_dict(self) -> dict:
    """The archive's "holdout": HoldOut.to_dict() plus each split's own cells."""
    return {**self.holdout.to_dict(), "splits": {
        split: {"unseen_pairs": [[p.task, p.lang] for p in sorted(cells["unseen_pairs"])],
                "unseen_langs": sorted(cells["unseen_langs"])}
        for split, cells in self.splits.items()}}


def _grams(text: str) -> set[str]:
  text = text.lower()
  return {text[i:i + NGRAM] for i in range(len(text) - NGRAM + 1)
          if text[i:i + NGRAM].isalpha()}


Examples = Mapping[Pair, Mapping[str, Sequence[Mapping[str, str]]]]


def coverage(examples: Examples, pair: Pair) -> float:
  """The share of `pair`'s alphabetic character 4-grams (lowercased, over its validation and
  test targets, counted per example) that occur in the train targets of the other cells of its
  language; 1.0 for targets without letters (e.g. decimal)."""
  return coverages(examples, [pair])[pair]


def coverages(examples: Examples, cells: Sequence[Pair] | None = None) -> dict[Pair, float]:
  """`coverage` of each of `cells` (default: every cell of `examples`)."""
  train: dict[Pair, set[str]] = {}
  for pair, splits in examples.items():
    train[pair] = set().union(*(_grams(ex["targets"]) for ex in splits.get("train", ())))
  out = {}
  for pair in examples if cells is None else cells:
    known = set().union(*(g for other, g in train.items()
                          if other.lang == pair.lang and other.task != pair.task))
    grams = [_grams(ex["targets"]) for split in SPLITS for ex in examples[pair].get(split, ())]
    total = sum(len(g) for g in grams)
    out[pair] = 1.0 if total == 0 else sum(len(g & known) for g in grams) / total
  return out


def _siblings_trained(lang: str, unseen: Collection[str], langs: Sequence[str]) -> bool:
  table = languages.table()
  if lang not in table:
    return False
  family = table[lang]["family"]
  return any(other != lang and other not in unseen and table.get(other, {}).get("family") ==
             family for other in langs)


def _draw_langs(langs: Sequence[str], n: int, rng: np.random.Generator) -> list[str] | None:
  chosen: list[str] = []
  for i in rng.permutation(len(langs)):
    if len(chosen) == n:
      break
    if _siblings_trained(langs[i], [*chosen, langs[i]], langs):
      chosen.append(langs[i])
  return chosen if len(chosen) == n else None


def _match(slots: Sequence[tuple[str, str]], candidates: Mapping[str, Sequence[str]],
           rng: np.random.Generator) -> list[str] | None:
  """One distinct language per slot (task, split) from `candidates[task]`, by a randomised
  depth-first search; None if there is none."""
  order = {task: [langs[i] for i in rng.permutation(len(langs))]
           for task, langs in sorted(candidates.items())}  # Sorted: the same in every process.
  chosen: list[str] = []

  def fill(i: int) -> bool:
    if i == len(slots):
      return True
    for lang in order[slots[i][0]]:
      if lang not in chosen:
        chosen.append(lang)
        if fill(i + 1):
          return True
        chosen.pop()
    return False

  return chosen if fill(0) else None


def draw(design: SplitDesign, langs: Sequence[str], present: Collection[Pair], seed: int,
         coverages: Mapping[Pair, float] | None = None, attempts: int = 200) -> SplitHoldOut:
  """The seed's split hold-out over a grid's present cells (see the module docstring).

  coverages: `coverage` of the present cells (None: every cell counts as covered).
  Raises ValueError if no draw satisfies the design (after `attempts` draws of the languages).
  """
  present = set(present)
  unknown = sorted(set(design.pair_tasks) - {p.task for p in present})
  if unknown:
    raise ValueError(f"pair_tasks {unknown} have no cell in the grid")
  rng = np.random.default_rng([seed, 104723])
  for _ in range(attempts):
    unseen = _draw_langs(langs, 2 * design.unseen_langs, rng)
    if unseen is None:
      break  # No language keeps a trained sibling: no draw can succeed.
    seen = [l for l in langs if l not in unseen]
    candidates = {task: [l for l in seen if Pair(task, l) in present and (
        coverages is None or coverages.get(Pair(task, l), 0.0) >= design.min_coverage)]
                  for task in sorted(set(design.pair_tasks))}
    slots = [(task, split) for task in design.pair_tasks for split in SPLITS]
    slots = [slots[i] for i in rng.permutation(len(slots))]
    matched = _match(slots, candidates, rng)
    if matched is None:
      continue
    splits = {split: {"unseen_pairs": tuple(sorted(Pair(task, lang) for (task, s), lang in
                                                   zip(slots, matched) if s == split)),
                      "unseen_langs": tuple(sorted(unseen[i::2]))}
              for i, split in enumerate(SPLITS)}
    holdout = HoldOut(frozenset(Pair(t, l) for (t, _), l in zip(slots, matched)),
                      frozenset(unseen), f"split(seed={seed})")
    holdout.check_covers(present)
    return SplitHoldOut(holdout, splits)
  raise ValueError(f"no hold-out satisfies {design} over {len(present)} cells of languages "
                   f"{list(langs)} (seed {seed}, {attempts} draws)")
