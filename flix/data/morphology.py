"""Morphology and pronunciation tasks derived from the SIGMORPHON 2023 and WikiPron releases.

One language feature is shared by three tasks:
  inflect: "lemma | features" -> form          (the shared task's own train / dev / test split)
  analyze: form -> "lemma | features"          (the same triples and split)
  g2p:     word -> IPA segments ("a d ʒ ɯ")   (WikiPron has no split: a seeded, word-disjoint one)

No leakage between derived tasks: a lemma's paradigm (the lemma and all its forms) is on one side
(train or evaluation) for every task of a language. The shared task's split is lemma-disjoint, so
inflect and analyze inherit it. For g2p, a word that is the lemma or a form of a paradigm in the
SIGMORPHON train split goes to g2p train, one of a validation (test) paradigm goes to g2p
validation (test), one in paradigms of both sides is dropped; other words are split by a seeded
hash of the word. Each example records its `paradigms` so tests can check this.

Evaluation examples are unique inputs with every accepted answer as `references` (a form with
several analyses, a word with several pronunciations); train examples are the release's lines
(one per answer). Examples whose source or first target is longer than the byte budgets are
dropped; every drop is counted with its reason (`LanguageData.dropped`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from typing import Mapping, Sequence

TASKS = ("inflect", "analyze", "g2p")
SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
SEPARATOR = " | "  # Between lemma and features in inflect inputs and analyze targets.


@dataclasses.dataclass(frozen=True)
class MorphologyConfig:
  """What decides the derived datasets (JSON-serialisable; hashed into the TFDS config name).

  Attributes:
    max_source_bytes, max_target_bytes: UTF-8 byte budgets of a task's input (without the
      task/language prefix) and of its first target; longer examples are dropped.
    g2p_train, g2p_eval: words in the g2p train split and in each evaluation split (at most;
      words forced to a side by their paradigm always stay).
    g2p_eval_percent: each evaluation split also takes at most this percentage of a file's
      words, so that small dictionaries keep most words for training (SIGMORPHON's 10k / 1k /
      1k is 8%).
    split_seed: seeds the g2p split.
  """

  max_source_bytes: int = 56
  max_target_bytes: int = 56
  g2p_train: int = 10_000
  g2p_eval: int = 1_000
  g2p_eval_percent: int = 10
  split_seed: int = 0

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if not isinstance(value, int) or isinstance(value, bool) or value < (
          0 if f.name == "split_seed" else 1):
        raise ValueError(f"MorphologyConfig.{f.name} must be an int >= "
                         f"{0 if f.name == 'split_seed' else 1}, got {value!r}")

  def digest(self) -> str:
    text = json.dumps(dataclasses.asdict(self), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclasses.dataclass(frozen=True)
class Triple:
  """One SIGMORPHON line: lemma, UniMorph features, inflected form."""

  lemma: str
  features: str
  form: str


@dataclasses.dataclass(frozen=True)
class MorphExample:
  """source -> target; `references`: every accepted target (target first); `paradigms`: the
  lemmas (or, for a word in no paradigm, the word) the example belongs to."""

  source: str
  target: str
  references: tuple[str, ...]
  paradigms: tuple[str, ...]

  def as_dict(self) -> dict:
    return {"source": self.source, "target": self.target, "references": list(self.references),
            "paradigms": list(self.paradigms)}


@dataclasses.dataclass(frozen=True)
class LanguageData:
  """One language's derived tasks.

  Attributes:
    examples: `{task: {split: [MorphExample]}}` (g2p absent without a WikiPron file).
    dropped: `{task: {split: {reason: count}}}`.
  """

  examples: Mapping[str, Mapping[str, Sequence[MorphExample]]]
  dropped: Mapping[str, Mapping[str, Mapping[str, int]]]

  def counts(self) -> dict[str, dict[str, int]]:
    return {t: {s: len(v) for s, v in splits.items()} for t, splits in self.examples.items()}


def _fits(text: str, budget: int) -> bool:
  return len(text.encode("utf-8")) <= budget


def _group(pairs: Sequence[tuple[str, str, tuple[str, ...]]], split: str, config: MorphologyConfig,
           dropped: collections.Counter) -> list[MorphExample]:
  """(source, target, paradigms) lines -> examples: train keeps one per distinct line,
  evaluation one per distinct source with every target as a reference."""
  by_source: dict[str, dict[str, set[str]]] = {}
  for source, target, paradigms in pairs:
    targets = by_source.setdefault(source, {})
    if target in targets and split == "train":
      dropped["duplicate line"] += 1
    targets.setdefault(target, set()).update(paradigms)
  examples = []
  for source, targets in by_source.items():
    rows = list(targets.items())
    groups = [[row] for row in rows] if split == "train" else [rows]
    if split != "train" and len(rows) > 1:
      dropped["merged into one input's references"] += len(rows) - 1
    for group in groups:
      if not (_fits(source, config.max_source_bytes)
              and _fits(group[0][0], config.max_target_bytes)):
        dropped["too long"] += len(group)
        continue
      lemmas = sorted(set().union(*(p for _, p in group)))
      examples.append(MorphExample(source, group[0][0], tuple(t for t, _ in group),
                                   tuple(lemmas)))
  return examples


def _inflection_tasks(triples: Mapping[str, Sequence[Triple]], config: MorphologyConfig):
  examples, dropped = {"inflect": {}, "analyze": {}}, {"inflect": {}, "analyze": {}}
  for split in SPLITS:
    lines = triples.get(split, ())
    for task in ("inflect", "analyze"):
      counter = collections.Counter()
      rows = [(f"{t.lemma}{SEPARATOR}{t.features}", t.form) for t in lines]
      if task == "analyze":
        rows = [(form, lemma_features) for lemma_features, form in rows]
      examples[task][split] = _group([(s, t, (x.lemma,)) for (s, t), x in zip(rows, lines)],
                                     split, config, counter)
      dropped[task][split] = dict(counter)
  return examples, dropped


def _seeded_order(words: Sequence[str], seed: int) -> list[str]:
  key = lambda w: hashlib.sha256(f"{seed}\t{w}".encode("utf-8")).hexdigest()
  return sorted(words, key=key)


def _g2p_task(triples: Mapping[str, Sequence[Triple]],
              pronunciations: Sequence[tuple[str, str]], config: MorphologyConfig):
  """g2p examples and drops per split (see the module docstring for the split rule)."""
  paradigm_side: dict[str, set[str]] = collections.defaultdict(set)  # word -> splits
  lemmas_of: dict[str, set[str]] = collections.defaultdict(set)  # word -> lemmas
  for split, lines in triples.items():
    for t in lines:
      for word in (t.lemma, t.form):
        paradigm_side[word].add(split)
        lemmas_of[word].add(t.lemma)
  prons: dict[str, list[str]] = {}
  duplicates = 0
  for word, ipa in pronunciations:
    seen = prons.setdefault(word, [])
    if ipa in seen:
      duplicates += 1
    else:
      seen.append(ipa)
  side: dict[str, str] = {}
  dropped = {s: collections.Counter() for s in SPLITS}
  if duplicates:
    dropped["train"]["duplicate line"] += duplicates
  free = []
  for word in prons:
    sides = paradigm_side.get(word, set())
    if "train" in sides and sides & set(EVAL_SPLITS):
      dropped["train"]["word in train and evaluation paradigms"] += 1
    elif sides:
      side[word] = "test" if "test" in sides else ("validation" if "validation" in sides
                                                    else "train")
    else:
      free.append(word)
  eval_size = min(config.g2p_eval, len(prons) * config.g2p_eval_percent // 100)
  room = {s: eval_size - sum(v == s for v in side.values()) for s in EVAL_SPLITS}
  room["train"] = config.g2p_train - sum(v == "train" for v in side.values())
  for word in _seeded_order(free, config.split_seed):
    split = next((s for s in ("validation", "test", "train") if room[s] > 0), None)
    if split is None:
      dropped["train"]["beyond the g2p size caps"] += 1
      continue
    side[word] = split
    room[split] -= 1
  rows = {s: [] for s in SPLITS}
  for word, split in side.items():
    paradigms = tuple(sorted(lemmas_of.get(word, {word})))
    rows[split].extend((word, ipa, paradigms) for ipa in prons[word])
  examples = {}
  for split in SPLITS:
    counter = dropped[split]
    examples[split] = _group(rows[split], split, config, counter)
  return examples, {s: dict(c) for s, c in dropped.items()}


def derive_language(triples: Mapping[str, Sequence[Triple]],
                    pronunciations: Sequence[tuple[str, str]] | None,
                    config: MorphologyConfig = MorphologyConfig()) -> LanguageData:
  """The three tasks of one language.

  Args:
    triples: `{"train" | "validation" | "test": [Triple]}`, the shared task's split.
    pronunciations: WikiPron `(word, ipa)` lines in file order, or None (no g2p task).
  """
  missing = [s for s in SPLITS if not triples.get(s)]
  if missing:
    raise ValueError(f"the SIGMORPHON data has no {missing} lines; every language needs "
                     f"train, validation and test")
  examples, dropped = _inflection_tasks(triples, config)
  if pronunciations is not None:
    examples["g2p"], dropped["g2p"] = _g2p_task(triples, pronunciations, config)
  return LanguageData(examples, dropped)
