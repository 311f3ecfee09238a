"""Task-language pairs as seqio Tasks that carry their features, and Mixtures over pairs.

One seqio Task per (task, language) pair. The pair's features, e.g. `{"task": "ordinal",
"lang": "fr"}`, are encoded here, once, with `FeatureSpace.encode`, and travel as the output
feature `feature_ids` (int32 `[n_types]`) of every example. A `HoldOut` says which pairs are
unseen in fine-tuning (zero-shot pairs) and which languages are unseen altogether; the
registered Task of a held-out pair has no `train` split, and training mixtures leave it out.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import re
from typing import Any, Callable, Collection, Iterable, Literal, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from flix.data.vocab import BYTE_VOCAB, FEATURE_IDS, pair_output_features
from flix.errors import UnknownFeatureError
from flix.features import INACTIVE, FeatureSpace

TRAIN = "train"
SplitKind = Literal["seen_pair", "unseen_pair", "unseen_language"]
SPLIT_KINDS: tuple[str, ...] = ("seen_pair", "unseen_pair", "unseen_language")
RateKind = Literal["equal", "examples", "temperature"]
RATE_KINDS = ("equal", "examples", "temperature")
_NAME_PART = re.compile(r"^[A-Za-z0-9_]+$")
PAIR_FEATURE = "pair"  # The feature type whose values are cells, `{task}.{lang}` (encode_pair).


@dataclasses.dataclass(frozen=True, order=True)
class Pair:
  """A (task, language) cell of a benchmark, or one variant of a cell.

  A variant (e.g. the script direction `Latn2Deva` of a transliteration cell) is its own seqio
  Task, scored on its own, with the cell's features: variants of a cell share the task and
  language adapters and are held out together (`HoldOut` works on cells).
  """

  task: str
  lang: str
  variant: str = ""

  def __post_init__(self):
    for field, value in (("task", self.task), ("lang", self.lang)):
      if not isinstance(value, str) or not _NAME_PART.match(value):
        raise ValueError(f"pair {field} must be a non-empty string of letters, digits and '_' "
                         f"(it becomes part of a seqio task name), got {value!r}")
    if not isinstance(self.variant, str) or (self.variant and
                                              not _NAME_PART.match(self.variant)):
      raise ValueError(f"pair variant must be '' or a string of letters, digits and '_', got "
                       f"{self.variant!r}")

  @property
  def features(self) -> dict[str, str]:
    """The dataset features of this pair's examples (a variant is not a feature)."""
    return {"task": self.task, "lang": self.lang}

  @property
  def cell(self) -> "Pair":
    """The (task, language) cell, without the variant."""
    return Pair(self.task, self.lang) if self.variant else self

  @property
  def key(self) -> str:
    """`{task}.{lang}`, or `{task}.{lang}:{variant}` for a variant."""
    return f"{self.task}.{self.lang}" + (f":{self.variant}" if self.variant else "")

  def task_name(self, prefix: str) -> str:
    """seqio task name `{prefix}.{task}.{lang}` (a variant adds `:{variant}`)."""
    return f"{prefix}.{self.key}"


@dataclasses.dataclass(frozen=True)
class HoldOut:
  """What fine-tuning never sees.

  Attributes:
    unseen_pairs: pairs whose task and language are both trained elsewhere, evaluated zero-shot.
    unseen_langs: languages with no fine-tuning data at all; the training FeatureSpace has no
      adapter for them, so their pairs are encoded with the language feature INACTIVE.
    scheme: name of the rule that produced this hold-out (documentation only).
  """

  unseen_pairs: frozenset[Pair] = frozenset()
  unseen_langs: frozenset[str] = frozenset()
  scheme: str = "custom"

  def __post_init__(self):
    object.__setattr__(self, "unseen_pairs", frozenset(self.unseen_pairs))
    variants = sorted(p.key for p in self.unseen_pairs if p.variant)
    if variants:
      raise ValueError(f"unseen pairs {variants} name variants; hold out whole cells "
                       "(task, lang): a cell's variants share its adapters")
    object.__setattr__(self, "unseen_langs", frozenset(self.unseen_langs))
    clash = sorted(p for p in self.unseen_pairs if p.lang in self.unseen_langs)
    if clash:
      raise ValueError(f"pairs {clash} are listed as unseen pairs but their language is an "
                       f"unseen language; list them only through unseen_langs")

  def kind(self, pair: Pair) -> SplitKind:
    """'unseen_language', 'unseen_pair' or 'seen_pair'."""
    if pair.lang in self.unseen_langs:
      return "unseen_language"
    if pair.cell in self.unseen_pairs:
      return "unseen_pair"
    return "seen_pair"

  def is_trained(self, pair: Pair) -> bool:
    return self.kind(pair) == "seen_pair"

  def check_covers(self, pairs: Iterable[Pair]) -> None:
    """Raises ValueError unless every task and every seen language is trained in some pair."""
    pairs = list(pairs)
    trained = [p for p in pairs if self.is_trained(p)]
    untrained_tasks = sorted({p.task for p in pairs} - {p.task for p in trained})
    langs = {p.lang for p in pairs} - self.unseen_langs
    untrained_langs = sorted(langs - {p.lang for p in trained})
    if untrained_tasks or untrained_langs:
      raise ValueError(
          f"hold-out {self.scheme!r} leaves tasks {untrained_tasks} and languages "
          f"{untrained_langs} without any training pair; every task and every seen language "
          "must be trained somewhere for zero-shot composition")

  def to_dict(self) -> dict:
    return {"scheme": self.scheme,
            "unseen_pairs": [[p.task, p.lang] for p in sorted(self.unseen_pairs)],
            "unseen_langs": sorted(self.unseen_langs)}


# -- hold-out schemes over a grid's present cells ------------------------------------------------
HOLDOUT_SCHEMES = ("none", "diagonal", "random", "explicit")
MIN_TRAINED_CELLS = 2  # The random scheme keeps every task and seen language trained this often.


def diagonal_holdout(tasks: Sequence[str], langs: Sequence[str], present: Collection[Pair],
                     unseen_langs: Collection[str] = (), stride: int = 1) -> HoldOut:
  """Task i (in `tasks` order) held out in the seen language at position (i * stride) mod L of
  the seen languages, moving on to the next language when that cell is absent or the language
  would lose its last trained cell; a task trained in fewer than 2 languages is not held out."""
  seen = [l for l in langs if l not in unseen_langs]
  present = set(present)
  trained_per_lang = {l: sum(Pair(t, l) in present for t in tasks) for l in seen}
  unseen_pairs: set[Pair] = set()
  for i, task in enumerate(tasks):
    if sum(Pair(task, l) in present for l in seen) < 2:
      continue  # Holding out its only cell would leave the task untrained.
    for step in range(len(seen)):
      pair = Pair(task, seen[(i * stride + step) % len(seen)])
      if pair in present and trained_per_lang[pair.lang] > 1:
        unseen_pairs.add(pair)
        trained_per_lang[pair.lang] -= 1
        break
  holdout = HoldOut(frozenset(unseen_pairs), frozenset(unseen_langs), "diagonal")
  holdout.check_covers(present)
  return holdout


def random_holdout(present: Collection[Pair], n_pairs: int, seed: int,
                   unseen_langs: Collection[str] = (),
                   min_trained: int = MIN_TRAINED_CELLS) -> HoldOut:
  """`n_pairs` unseen pairs drawn with `seed` among the present cells of seen languages, each
  accepted only if its task and its language stay trained in >= `min_trained` cells; fewer
  than `n_pairs` when no further cell can be held out (said in the error if none can)."""
  if not isinstance(n_pairs, int) or n_pairs < 0:
    raise ValueError(f"n_pairs must be an int >= 0, got {n_pairs!r}")
  cells = sorted(p for p in present if p.lang not in unseen_langs)
  trained_task = collections.Counter(p.task for p in cells)
  trained_lang = collections.Counter(p.lang for p in cells)
  chosen: set[Pair] = set()
  for i in np.random.default_rng([seed, 7919]).permutation(len(cells)):
    if len(chosen) == n_pairs:
      break
    pair = cells[i]
    if trained_task[pair.task] > min_trained and trained_lang[pair.lang] > min_trained:
      chosen.add(pair)
      trained_task[pair.task] -= 1
      trained_lang[pair.lang] -= 1
  if n_pairs and not chosen:
    raise ValueError(f"no pair can be held out while every task and language keeps "
                     f">= {min_trained} trained cells (cells: {len(cells)})")
  holdout = HoldOut(frozenset(chosen), frozenset(unseen_langs), f"random(seed={seed})")
  holdout.check_covers(present)
  return holdout


def make_holdout(scheme: str, tasks: Sequence[str], langs: Sequence[str],
                 present: Collection[Pair], *, unseen_langs: Collection[str] = (),
                 unseen_pairs: Collection[Pair] = (), n_pairs: int | None = None,
                 seed: int = 0, stride: int = 1) -> HoldOut:
  """The hold-out of `scheme` (HOLDOUT_SCHEMES) over a grid's present cells.

  none: only `unseen_langs`; diagonal: `diagonal_holdout`; random: `random_holdout` with
  `n_pairs` (default: one per task); explicit: `unseen_pairs`, checked to be present cells of
  seen languages. Every scheme raises ValueError if a task or seen language ends up untrained.
  """
  if scheme not in HOLDOUT_SCHEMES:
    raise ValueError(f"hold-out scheme {scheme!r} unknown; expected one of {HOLDOUT_SCHEMES}")
  unknown = sorted(set(unseen_langs) - set(langs))
  if unknown:
    raise ValueError(f"unseen languages {unknown} are not languages of the grid {list(langs)}")
  if scheme != "explicit" and unseen_pairs:
    raise ValueError(f"unseen pairs are given, but the hold-out scheme is {scheme!r}; use "
                     "'explicit' to hold out exactly the listed pairs")
  if scheme == "diagonal":
    return diagonal_holdout(tasks, langs, present, unseen_langs, stride)
  if scheme == "random":
    return random_holdout(present, len(tasks) if n_pairs is None else n_pairs, seed,
                          unseen_langs)
  pairs = frozenset(unseen_pairs if scheme == "explicit" else ())
  absent = sorted(f"{p.task}.{p.lang}" for p in pairs if p not in set(present))
  if absent:
    raise ValueError(f"unseen pairs {absent} are not cells of the grid")
  holdout = HoldOut(pairs, frozenset(unseen_langs), scheme)
  holdout.check_covers(present)
  return holdout


def as_pair(value) -> Pair:
  """A pair written as a `Pair`, ('task', 'lang') or 'task.lang'."""
  if isinstance(value, Pair):
    return value
  if isinstance(value, str) and value.count(".") == 1:
    return Pair(*value.split("."))
  if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
    return Pair(*value)
  raise ValueError(f"an unseen pair is written ('task', 'lang') or 'task.lang', got {value!r}")


@gin.configurable(module="flix.data")
@dataclasses.dataclass(frozen=True)
class HoldOutSpec:
  """A grid's hold-out as configured: `make_holdout`'s arguments as one value, which gin binds
  (`register_morphology_experiment.holdout = @HoldOutSpec()`, `HoldOutSpec.scheme = 'random'`).

  Attributes:
    scheme: one of HOLDOUT_SCHEMES.
    unseen_pairs: the 'explicit' scheme's cells: `Pair`s, ('task', 'lang') or 'task.lang'.
    unseen_langs: languages with no fine-tuning at all (in every scheme).
    seed, n_pairs: the 'random' scheme's seed and number of cells (None: one per task).
    stride: the 'diagonal' scheme's language step per task.
  """

  scheme: str = "explicit"
  unseen_pairs: frozenset[Pair] = frozenset()
  unseen_langs: tuple[str, ...] = ()
  seed: int = 0
  n_pairs: int | None = None
  stride: int = 1

  def __post_init__(self):
    if self.scheme not in HOLDOUT_SCHEMES:
      raise ValueError(f"hold-out scheme {self.scheme!r} unknown; expected one of "
                       f"{HOLDOUT_SCHEMES}")
    cells = self.unseen_pairs
    cells = (cells,) if isinstance(cells, (str, Pair)) else cells or ()
    object.__setattr__(self, "unseen_pairs", frozenset(as_pair(p) for p in cells))
    langs = self.unseen_langs
    object.__setattr__(self, "unseen_langs",
                       (langs,) if isinstance(langs, str) else tuple(langs or ()))

  def make(self, tasks: Sequence[str], langs: Sequence[str],
           present: Collection[Pair]) -> HoldOut:
    """The hold-out over a grid's present cells (`make_holdout`)."""
    return make_holdout(self.scheme, tasks, langs, present, unseen_langs=self.unseen_langs,
                        unseen_pairs=self.unseen_pairs, n_pairs=self.n_pairs, seed=self.seed,
                        stride=self.stride)


def encode_pair(space: FeatureSpace, pair: Pair, holdout: HoldOut | None = None) -> np.ndarray:
  """The pair's feature ids, int32 `[space.n_types]`.

  Only the space's types are used (a task-only space ignores `lang`). Besides `task` and
  `lang`, a pair has the feature `pair` (PAIR_FEATURE), its cell's `{task}.{lang}`: a space
  with that type gives every trained cell its own adapter. A language in
  `holdout.unseen_langs` that the space does not know becomes INACTIVE (unknown='drop'), and
  so does the `pair` value of a cell `holdout` does not train (it has no adapter: the base, or
  the shared adapter, serves it); any other unknown value is an error. Derived types (e.g. the
  language's family) are derived by `FeatureSpace.encode`, and may be INACTIVE (see
  `flix.features`).
  """
  available = {**pair.features, PAIR_FEATURE: pair.cell.key}
  features = {k: v for k, v in available.items() if k in space.names}
  ids = space.encode(features, unknown="drop")
  for col, t in enumerate(space.types):
    if ids[col] != INACTIVE or t.derived:
      continue
    if t.name == "lang" and holdout is not None and pair.lang in holdout.unseen_langs:
      continue
    if t.name == PAIR_FEATURE and holdout is not None and not holdout.is_trained(pair):
      continue
    if t.name not in features:
      raise UnknownFeatureError(
          f"feature type {t.name!r} of the space has no value in pair {pair} (pairs carry "
          f"'task', 'lang' and {PAIR_FEATURE!r}); known types: {list(space.names)}")
    space.encode(features, unknown="error")  # Raises with the space's own message.
  return ids


@dataclasses.dataclass(frozen=True)
class PairTask:
  """A registered seqio Task for one pair."""

  name: str
  pair: Pair
  kind: SplitKind
  num_examples: Mapping[str, int]
  feature_ids: tuple[int, ...]

  @property
  def trained(self) -> bool:
    """True for a seen pair that has a train split (only those enter training mixtures)."""
    return self.kind == "seen_pair" and self.num_examples.get(TRAIN, 0) > 0

  @property
  def task(self) -> seqio.Task:
    return seqio.get_mixture_or_task(self.name)


def _add_feature_ids(ids: np.ndarray) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  const = tf.constant(ids, tf.int32)

  def add_feature_ids(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda ex: {**ex, FEATURE_IDS: const},
                       num_parallel_calls=tf.data.AUTOTUNE)
  return add_feature_ids


def examples_source(examples: Mapping[str, Sequence[Mapping[str, str]]],
                    keys: Sequence[str] = ("inputs", "targets")) -> seqio.DataSource:
  """A FunctionDataSource over in-memory `{split: [{"inputs": str, "targets": str}, ...]}`.

  `num_input_examples` is set, so `seqio.mixing_rate_num_examples` works without a cache.
  """
  columns = {}
  for split, rows in examples.items():
    cols = {k: [] for k in keys}
    for i, row in enumerate(rows):
      for key in cols:
        value = row.get(key)
        if not isinstance(value, str):
          raise ValueError(f"split {split!r} example {i} needs a string {key!r}, got {value!r}")
        cols[key].append(value)
    columns[split] = cols

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # One in-memory "file"; seqio shuffles examples.
    if split not in columns:
      raise ValueError(f"split {split!r} not available; this source has {sorted(columns)}")
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.constant(v, dtype=tf.string, shape=[len(v)]) for k, v in columns[split].items()})

  return seqio.FunctionDataSource(
      dataset_fn, splits=list(columns),
      num_input_examples={s: len(examples[s]) for s in columns})


@dataclasses.dataclass(frozen=True)
class PairSource:
  """A pair's data: its split sizes, and a seqio DataSource over any subset of its splits.

  Attributes:
    num_examples: `{split: examples}`.
    make: splits -> a seqio.DataSource offering exactly those splits.
    preprocessors: seqio preprocessors run before tokenization, mapping the source's examples
      to `{"inputs": str, "targets": str, ...}` (extra fields reach the postprocess_fn).
  """

  num_examples: Mapping[str, int]
  make: Callable[[Sequence[str]], seqio.DataSource]
  preprocessors: tuple[Callable, ...] = ()

  @classmethod
  def from_examples(cls, examples: Mapping[str, Sequence[Mapping[str, str]]]) -> "PairSource":
    """In-memory `{split: [{"inputs": str, "targets": str}, ...]}` (`examples_source`)."""
    return cls({s: len(v) for s, v in examples.items()},
               lambda splits: examples_source({s: examples[s] for s in splits}))

  @classmethod
  def from_tfds(cls, data_dir: str, splits: Mapping[str, str], num_examples: Mapping[str, int],
                preprocessors: Sequence[Callable] = ()) -> "PairSource":
    """A prepared TFDS dataset directory (`.../name/config/version`) read through
    `seqio.TfdsDataSource`; `splits` maps our split names to its split names."""
    return cls(dict(num_examples),
               lambda chosen: seqio.TfdsDataSource(
                   tfds_data_dir=data_dir, splits={s: splits[s] for s in chosen},
                   read_only=True),
               tuple(preprocessors))


def register_pair_task(
    name: str,
    pair: Pair,
    examples: Mapping[str, Sequence[Mapping[str, str]]] | PairSource,
    space: FeatureSpace,
    holdout: HoldOut | None = None,
    metric_fns: Sequence[Callable] = (),
    postprocess_fn: Callable | None = None,
    vocabulary: seqio.Vocabulary = BYTE_VOCAB,
    shuffle_buffer_size: int | None = None,
) -> PairTask:
  """Registers one seqio Task for `pair`.

  Args:
    name: seqio task name (must not be registered yet).
    pair: the pair; its features are encoded with `space` (see `encode_pair`).
    examples: a PairSource, or in-memory `{split: [{"inputs": str, "targets": str}, ...]}`.
      For a pair that `holdout` does not train, the `train` split is left out, so no training
      dataset can contain it.
    space: the FeatureSpace of the model that will train/evaluate on this task.
    holdout: which pairs/languages are unseen; None trains every pair.
    metric_fns, postprocess_fn: as in seqio.TaskRegistry.add.
    vocabulary: the VOCABULARY `inputs` and `targets` are tokenized with (`flix.data.vocab`).
    shuffle_buffer_size: default: the largest split, i.e. a full shuffle. (seqio shuffles after
      repeating, so a buffer much larger than the split makes the first batches of a mixture
      process buffer-many examples of every task.)

  Returns:
    A PairTask describing the registration.
  """
  source = examples if isinstance(examples, PairSource) else PairSource.from_examples(examples)
  holdout = holdout or HoldOut()
  kind = holdout.kind(pair)
  splits = [s for s, n in source.num_examples.items() if n and (kind == "seen_pair" or
                                                                s != TRAIN)]
  if not splits:
    raise ValueError(f"pair {pair} ({kind}) has no usable split; got none besides {TRAIN!r}")
  ids = encode_pair(space, pair, holdout)
  if shuffle_buffer_size is None:
    shuffle_buffer_size = max(1, max(source.num_examples[s] for s in splits))
  seqio.TaskRegistry.add(
      name,
      source=source.make(splits),
      output_features=pair_output_features(space.n_types, vocabulary),
      preprocessors=[*source.preprocessors, seqio.preprocessors.tokenize,
                     seqio.CacheDatasetPlaceholder(), _add_feature_ids(ids),
                     seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns),
      shuffle_buffer_size=shuffle_buffer_size)
  return PairTask(name, pair, kind, {s: source.num_examples[s] for s in splits},
                  tuple(int(i) for i in ids))


def mixing_rate(kind: RateKind = "equal", temperature: float = 1.0,
                maximum: int | None = None) -> float | Callable[[seqio.Task], float]:
  """A seqio mixing rate.

  `equal`: 1 per task; `examples`: proportional to the task's train examples (capped at
  `maximum`); `temperature`: (examples, capped at `maximum`) ** (1 / temperature).
  """
  if kind not in RATE_KINDS:
    raise ValueError(f"mixing rate kind {kind!r} unknown; expected one of {RATE_KINDS}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  if kind == "equal":
    return 1.0
  if kind == "examples":
    temperature = 1.0
  return functools.partial(seqio.mixing_rate_num_examples, maximum=maximum,
                           temperature=temperature)


def register_pair_mixture(
    name: str,
    tasks: Sequence[PairTask],
    rate: RateKind = "equal",
    temperature: float = 1.0,
    maximum: int | None = None,
    include_untrained: bool = False,
) -> list[PairTask]:
  """Registers a seqio Mixture over pair tasks; returns the tasks it contains.

  Training mixtures (the default) contain only trained (seen) pairs; set `include_untrained`
  for evaluation mixtures (use rate='equal' then: untrained pairs have no train split).
  """
  chosen = [t for t in tasks if include_untrained or t.trained]
  if not chosen:
    raise ValueError(f"mixture {name!r} would be empty: none of the {len(tasks)} given tasks "
                     "is a trained pair (pass include_untrained=True for evaluation mixtures)")
  if rate != "equal" and any(not t.trained for t in chosen):
    raise ValueError(f"mixture {name!r}: rate {rate!r} needs train-split sizes, but untrained "
                     f"pairs {[t.name for t in chosen if not t.trained]} have none; use 'equal'")
  r = mixing_rate(rate, temperature, maximum)
  seqio.MixtureRegistry.add(name, [(t.name, r) for t in chosen])
  return chosen


def expected_rates(tasks: Sequence[PairTask], rate: RateKind = "equal", temperature: float = 1.0,
                   maximum: int | None = None) -> dict[str, float]:
  """The normalized sampling probability of each task's examples under a rate, by task name."""
  raw = {}
  for t in tasks:
    n = float(t.num_examples.get(TRAIN, 0))
    if maximum is not None:
      n = min(n, maximum)
    raw[t.name] = 1.0 if rate == "equal" else n ** (1.0 / (1.0 if rate == "examples" else
                                                            temperature))
  total = sum(raw.values())
  return {k: v / total for k, v in raw.items()}


@dataclasses.dataclass(frozen=True)
class PretrainTask:
  """An unlabelled pretraining task registered next to a benchmark (`flix.data.span_corruption`).

  Attributes:
    name: its seqio task name (e.g. `{prefix}.pretrain`).
    objective: the corruption's targets (`span_corruption.OBJECTIVES`).
    feature_lengths: `{"inputs": ..., "targets": ...}` that fit its examples.
  """

  name: str
  objective: str
  feature_lengths: Mapping[str, int]


@dataclasses.dataclass(frozen=True)
class PairRegistration:
  """What a benchmark registration put in seqio: one task per pair and the two mixtures.

  Attributes:
    prefix: name prefix (`{prefix}.{task}.{lang}`, `{prefix}.train`, `{prefix}.eval`).
    space: the training FeatureSpace (the model's adapters; unseen languages not in it).
    holdout: unseen pairs and languages.
    tasks: the registered pair tasks.
    train_mixture: the trained (seen) pairs at the configured rate.
    eval_mixture: every pair, equal rates (validation / test).
    task_feature_lengths: `{"inputs": ..., "targets": ...}` that fit every example.
    info: per-cell facts for reports, `{"{task}.{lang}": {...}}` (counts, drops).
    extra_names: further registered names that `unregister` removes.
    pretrain: the benchmark's pretraining task, or None (`with_pretrain`).
    data: the examples behind the tasks where a benchmark generates them in memory (the
      offline benchmark's `OfflineData`); None for data read from files.
    decode_kwargs: `{seqio task name: flix.decoding options}` for tasks a benchmark decodes
      its own way (e.g. 3 beams for top-3 accuracy); the evaluator decodes the others with its
      default (greedy).
    official: the benchmark's own aggregate of per-pair metrics, `{task name: {metric: value}}
      -> {group: {...}}`, reported as `Report.official`; None if it has none.
    vocabulary: the VOCABULARY every task tokenizes with.
  """

  prefix: str
  space: FeatureSpace
  holdout: HoldOut
  tasks: tuple[PairTask, ...]
  train_mixture: str
  eval_mixture: str
  task_feature_lengths: Mapping[str, int]
  info: Mapping[str, Mapping] = dataclasses.field(default_factory=dict)
  extra_names: tuple[str, ...] = ()
  pretrain: PretrainTask | None = None
  data: Any = dataclasses.field(default=None, compare=False)
  decode_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  official: Callable[[Mapping[str, Mapping[str, float]]], dict] | None = None
  # seqio vocabularies define __eq__ but no __hash__: compared, not hashed.
  vocabulary: seqio.Vocabulary = dataclasses.field(default_factory=lambda: BYTE_VOCAB,
                                                   hash=False)

  @property
  def names(self) -> tuple[str, ...]:
    pretrain = (self.pretrain.name,) if self.pretrain is not None else ()
    return (self.train_mixture, self.eval_mixture, *self.extra_names, *pretrain,
            *(t.name for t in self.tasks))

  def tasks_of_kind(self, kind: str) -> tuple[PairTask, ...]:
    if kind not in SPLIT_KINDS:
      raise ValueError(f"split kind {kind!r} unknown; expected one of {SPLIT_KINDS}")
    return tuple(t for t in self.tasks if t.kind == kind)

  def unregister(self) -> None:
    unregister(self.names)


def register_pairs(prefix: str, sources: Mapping[Pair, PairSource], space: FeatureSpace,
                   holdout: HoldOut, task_feature_lengths: Mapping[str, int], *,
                   metric_fns: Callable[[Pair], Sequence[Callable]] = lambda pair: (),
                   postprocess_fn: Callable | None = None, rate: RateKind = "equal",
                   temperature: float = 1.0, maximum: int | None = None,
                   info: Mapping[str, Mapping] | None = None,
                   decode_kwargs: Callable[[Pair], Mapping[str, Any] | None] = lambda pair: None,
                   official: Callable | None = None,
                   vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> PairRegistration:
  """Registers `{prefix}.{task}.{lang}` for every pair of `sources` and the `{prefix}.train` /
  `{prefix}.eval` mixtures; on any error, removes what it registered and re-raises.

  `decode_kwargs(pair)`: the pair's own decoding options, or None for the evaluator's default;
  `official`: see PairRegistration; `vocabulary`: the VOCABULARY the tasks tokenize with.
  """
  tasks: list[PairTask] = []
  train, evaluation = f"{prefix}.train", f"{prefix}.eval"
  try:
    for pair, source in sources.items():
      tasks.append(register_pair_task(pair.task_name(prefix), pair, source, space, holdout,
                                      metric_fns=metric_fns(pair),
                                      postprocess_fn=postprocess_fn, vocabulary=vocabulary))
    register_pair_mixture(train, tasks, rate, temperature, maximum)
    register_pair_mixture(evaluation, tasks, "equal", include_untrained=True)
  except Exception:
    unregister([train, evaluation, *(t.name for t in tasks)])
    raise
  own = {t.name: dict(kwargs) for t in tasks if (kwargs := decode_kwargs(t.pair)) is not None}
  return PairRegistration(prefix, space, holdout, tuple(tasks), train, evaluation,
                          dict(task_feature_lengths), dict(info or {}), decode_kwargs=own,
                          official=official, vocabulary=vocabulary)


def with_pretrain(registration: PairRegistration, pretrain: PretrainTask,
                  register: Callable[[], Any]) -> PairRegistration:
  """`registration` with its pretraining task, once `register()` has registered
  `pretrain.name`; on any error removes what `registration` registered and re-raises."""
  try:
    register()
  except Exception:
    registration.unregister()
    raise
  return dataclasses.replace(registration, pretrain=pretrain)


def import_task_modules(modules: str | Sequence[str] | None) -> None:
  """Imports T5X's MIXTURE_OR_TASK_MODULE: a module name or a list of them (None: nothing), so
  that a user's module registers its seqio tasks/mixtures before the mixture is looked up. A
  module that fails to import is a ValueError naming it."""
  names = [] if modules is None else [modules] if isinstance(modules, str) else list(modules)
  for name in names:
    if not isinstance(name, str) or not name:
      raise ValueError(f"MIXTURE_OR_TASK_MODULE must be a module name or a list of them, got "
                       f"{modules!r}")
    try:
      importlib.import_module(name)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"MIXTURE_OR_TASK_MODULE {name!r} could not be imported: "
                       f"{type(e).__name__}: {e}") from e


def check_registered(name: str) -> None:
  """Raises ValueError naming `name` and what is registered unless it is a seqio task/mixture."""
  try:
    seqio.get_mixture_or_task(name)
  except ValueError:
    known = sorted(seqio.MixtureRegistry.names() | seqio.TaskRegistry.names())
    shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
    raise ValueError(f"unknown mixture or task {name!r}; registered: {shown or 'none'}") from None


def unregister(names: Collection[str]) -> None:
  """Removes seqio Tasks/Mixtures by name (missing names are ignored)."""
  for n in names:
    if n in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(n)
    if n in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(n)


def frozen(value):
  """A comparable, order-insensitive-for-mappings form of a (gin) argument."""
  if isinstance(value, Mapping):
    return tuple(sorted((k, frozen(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(frozen(v) for v in value)
  return value


def cached_registration(cache: dict, prefix: str, arguments: tuple):
  """`cache[prefix]`'s registration if it was made with the same `arguments` and its names are
  still registered in seqio; otherwise None, and a stale or different one is unregistered.

  `cache` maps prefix -> (arguments, registration); a registration has `.names` and
  `.unregister()`. Callers store a new one with `cache[prefix] = (arguments, registration)`.
  """
  if prefix not in cache:
    return None
  previous_arguments, previous = cache.pop(prefix)
  if previous_arguments == arguments and all(
      name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names()
      for name in previous.names):
    cache[prefix] = (arguments, previous)
    return previous
  previous.unregister()
  return None
