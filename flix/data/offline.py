"""An embedded multilingual benchmark generated offline from num2words and babel (CLDR).

Each cell is a (task, language) pair. The input is the source value rendered language-neutrally
("1234", "2021-03-04", "DE", "987.65 EUR"), the target is its localized text. Nothing is
downloaded and nothing is written to disk.

Splits: for every task, a seeded draw of source values is cut into disjoint test / validation /
train pools shared by all languages, so a value in one language's test split never appears in
any language's train split for that task. Each cell takes the first values of each pool that
the library renders and that fit the byte lengths; values that fail are skipped and counted.
A cell whose library fails (more than half of the tried values raise or render empty, or a
split ends up empty) is absent; `OfflineData.absent` lists absent cells with the reason.

Hold-out schemes (`OfflineConfig.holdout`, implemented in `flix.data.pairs`):
  "none": every cell of a seen language is trained.
  "diagonal": task i (in config order) is held out in the seen language at position
    (i * diagonal_stride) mod L of the seen languages (moving on to the next language when that
    cell is absent or the language would lose its last trained cell).
  "random": `holdout_pairs` cells (default one per task) drawn with `holdout_seed`, each task
    and seen language still trained in >= 2 cells.
  "explicit": exactly `unseen_pairs`.
  Held-out cells appear only in validation/test (unseen pairs). In every scheme `unseen_langs`
  are languages with no fine-tuning data at all (their cells are evaluation-only and the
  training FeatureSpace has no value for them).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import functools
import json
import math
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np

from flix.data import languages, pairs
from flix.data.pairs import HoldOut, Pair
from flix.features import FeatureSpace

SPLITS = ("train", "validation", "test")
DEFAULT_TASKS = ("cardinal", "ordinal", "currency", "long_date", "month_year", "country",
                 "decimal")
DEFAULT_LANGS = ("en", "fr", "de", "es", "it", "pt", "nl", "pl", "fi", "tr", "ro", "hu")
HOLDOUT_SCHEMES = pairs.HOLDOUT_SCHEMES
PREFIXES = ("none", "task", "task_lang", "task_lang_family_script")
_EARLY_ABSENT = 20  # A cell whose first this-many values all fail is absent.
_POOL_SLACK = 1.5   # Pools hold this many times the requested examples, for skipped values.


# -- source values and renderers --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OfflineTask:
  """One generator: `domain_size` source values, indexed; input and localized target text."""

  name: str
  domain_size: int
  source: Callable[[int], object]          # index -> source value
  render_input: Callable[[object], str]    # value -> language-neutral input text
  render_target: Callable[[object, str], str]  # (value, lang) -> localized target text
  library: str


# Private num2words converters: some converters keep state that a failing call leaves changed
# (Romanian to_currency raises with its numeral for 1 still switched to "una"), so a converter
# that raised is replaced, and `generate` starts from fresh ones; the shared instances inside
# num2words are never used.
_N2W_CONVERTERS: dict[str, object] = {}


def _n2w_converter(lang: str):
  if lang not in _N2W_CONVERTERS:
    import num2words  # pylint: disable=import-outside-toplevel
    shared = num2words.CONVERTER_CLASSES.get(lang)
    if shared is None:
      raise NotImplementedError(f"num2words has no language {lang!r}")
    _N2W_CONVERTERS[lang] = type(shared)()
  return _N2W_CONVERTERS[lang]


def _n2w(to: str, **kwargs) -> Callable[[object, str], str]:
  def render(value, lang):
    converter = _n2w_converter(lang)
    try:
      return getattr(converter, f"to_{to}")(value, **kwargs)
    except Exception:
      _N2W_CONVERTERS.pop(lang, None)
      raise
  return render


def _cents(i: int) -> decimal.Decimal:
  return decimal.Decimal(f"{i // 100}.{i % 100:02d}")


def _decimal_value(i: int) -> decimal.Decimal:
  whole, frac = divmod(i, 100)
  return decimal.Decimal(f"{whole}.{frac:02d}") if frac else decimal.Decimal(whole)


def _date(i: int) -> datetime.date:
  return datetime.date(1900, 1, 1) + datetime.timedelta(days=i)


def _month(i: int) -> datetime.date:
  return datetime.date(1900 + i // 12, i % 12 + 1, 1)


def _babel_date(fmt: str, skeleton: bool = False) -> Callable[[object, str], str]:
  def render(value, lang):
    from babel import dates  # pylint: disable=import-outside-toplevel
    if skeleton:
      return dates.format_skeleton(fmt, value, locale=lang)
    return dates.format_date(value, format=fmt, locale=lang)
  return render


def _country_name(code, lang: str) -> str:
  from babel import Locale  # pylint: disable=import-outside-toplevel
  name = Locale.parse(lang).territories.get(code)
  if name is None:
    raise KeyError(f"CLDR has no name for territory {code!r} in locale {lang!r}")
  return name


def _format_decimal(value, lang: str) -> str:
  from babel import numbers  # pylint: disable=import-outside-toplevel
  return numbers.format_decimal(value, locale=lang)


@functools.cache
def _country_codes() -> tuple[str, ...]:
  """ISO 3166 alpha-2 codes CLDR names in English, without groupings and pseudo-regions."""
  from babel import Locale  # pylint: disable=import-outside-toplevel
  not_countries = {"EU", "EZ", "UN", "ZZ", "QO", "XA", "XB"}
  return tuple(sorted(c for c in Locale("en").territories
                      if len(c) == 2 and c.isalpha() and c.isupper() and c not in not_countries))


def _tasks() -> dict[str, OfflineTask]:
  codes = _country_codes()
  return {t.name: t for t in (
      OfflineTask("cardinal", 10_000, int, str, _n2w("cardinal"), "num2words"),
      OfflineTask("ordinal", 9_999, lambda i: i + 1, str, _n2w("ordinal"), "num2words"),
      OfflineTask("currency", 100_000, _cents, lambda v: f"{v} EUR",
                  _n2w("currency", currency="EUR"), "num2words"),
      OfflineTask("long_date", 73_049, _date, lambda d: d.isoformat(), _babel_date("long"),
                  "babel"),
      OfflineTask("month_year", 2_400, _month, lambda d: d.strftime("%Y-%m"),
                  _babel_date("yMMMM", skeleton=True), "babel"),
      OfflineTask("country", len(codes), lambda i: codes[i], str, _country_name, "babel"),
      OfflineTask("decimal", 100_000_000, _decimal_value, str, _format_decimal, "babel"),
  )}


def available_tasks() -> tuple[str, ...]:
  return tuple(_tasks())


# -- configuration ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OfflineConfig:
  """Sizes, lengths, languages and hold-out of the offline benchmark (JSON-serialisable).

  Attributes:
    tasks, langs: the grid; tasks from `available_tasks()`, langs as num2words/CLDR codes.
    n_train, n_validation, n_test: examples per cell and split (fewer where the task's domain
      is small, e.g. country; never more).
    input_length, target_length: byte budgets including EOS; longer examples are skipped.
    seed: the only source of randomness.
    holdout: a scheme from HOLDOUT_SCHEMES (see module docstring).
    diagonal_stride: language step per task for the diagonal scheme.
    holdout_seed, holdout_pairs: the random scheme's seed and number of unseen pairs (None:
      one per task).
    unseen_pairs: the explicit scheme's (task, lang) pairs.
    unseen_langs: languages never fine-tuned on (evaluation only).
    prefix: "none" (input is the value), "task" ("ordinal: 3"), "task_lang" ("ordinal fr: 3")
      for baselines without feature adapters, "task_lang_family_script" ("ordinal fr Romance
      Latin: 3", the language table's family and script: what derived feature adapters know,
      as text; "unknown" for a language the table lacks). A longer prefix may make values
      exceed `input_length` (skipped): compare prefixes at an input length they all fit.
  """

  tasks: tuple[str, ...] = DEFAULT_TASKS
  langs: tuple[str, ...] = DEFAULT_LANGS
  n_train: int = 300
  n_validation: int = 32
  n_test: int = 32
  input_length: int = 32
  target_length: int = 64
  seed: int = 0
  holdout: str = "diagonal"
  diagonal_stride: int = 1
  unseen_langs: tuple[str, ...] = ("pt",)
  prefix: str = "none"
  holdout_seed: int = 0
  holdout_pairs: int | None = None
  unseen_pairs: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    for name in ("tasks", "langs", "unseen_langs"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    object.__setattr__(self, "unseen_pairs", tuple(tuple(p) for p in self.unseen_pairs))
    unknown = [t for t in self.tasks if t not in available_tasks()]
    if unknown or not self.tasks:
      raise ValueError(f"unknown offline tasks {unknown or self.tasks}; expected a non-empty "
                       f"subset of {available_tasks()}")
    for name in ("tasks", "langs"):
      values = getattr(self, name)
      if not values or len(set(values)) != len(values):
        raise ValueError(f"{name} must be non-empty and without repeats, got {values}")
    stray = [l for l in self.unseen_langs if l not in self.langs]
    if stray:
      raise ValueError(f"unseen_langs {stray} are not among langs {self.langs}")
    if len(self.unseen_langs) >= len(self.langs):
      raise ValueError(f"unseen_langs {self.unseen_langs} leave no language to train on")
    for name in ("n_train", "n_validation", "n_test"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
    for name in ("input_length", "target_length"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
        raise ValueError(f"{name} must be an int >= 2 (bytes incl. EOS), got "
                         f"{getattr(self, name)!r}")
    if self.holdout not in HOLDOUT_SCHEMES:
      raise ValueError(f"holdout scheme {self.holdout!r} unknown; expected one of "
                       f"{HOLDOUT_SCHEMES}")
    if not isinstance(self.diagonal_stride, int) or self.diagonal_stride < 1:
      raise ValueError(f"diagonal_stride must be an int >= 1, got {self.diagonal_stride!r}")
    if self.prefix not in PREFIXES:
      raise ValueError(f"prefix {self.prefix!r} unknown; expected one of {PREFIXES}")

  @property
  def seen_langs(self) -> tuple[str, ...]:
    return tuple(l for l in self.langs if l not in self.unseen_langs)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_json(cls, text: str) -> "OfflineConfig":
    data = json.loads(text)
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - fields)
    if extra:
      raise ValueError(f"unknown OfflineConfig fields {extra}; known: {sorted(fields)}")
    return cls(**data)


# -- generation -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OfflineData:
  """The generated benchmark.

  Attributes:
    config: what generated it.
    examples: `{pair: {split: [{"inputs": str, "targets": str}, ...]}}` for present cells.
    absent: `{pair: reason}` for cells the libraries cannot produce.
    skipped: `{pair: {"error": n, "empty": n, "too_long": n}}` values skipped in present cells.
    holdout: unseen pairs and languages.
  """

  config: OfflineConfig
  examples: Mapping[Pair, Mapping[str, Sequence[Mapping[str, str]]]]
  absent: Mapping[Pair, str]
  skipped: Mapping[Pair, Mapping[str, int]]
  holdout: HoldOut

  @property
  def pairs(self) -> tuple[Pair, ...]:
    """Present cells, in config order (task-major)."""
    return tuple(self.examples)

  def feature_space(self, derived: Sequence[str] = ()) -> FeatureSpace:
    """The training FeatureSpace: every task, and only the seen languages; `derived` adds
    language-table fields ("family", "script") as feature types derived from `lang`."""
    return FeatureSpace.build({"task": self.config.tasks, "lang": self.config.seen_langs},
                              derived=languages.derived_features(self.config.langs, derived)
                              if derived else None)

  def corpus(self, split: str = "train", fields: Sequence[str] = ("targets",)) -> list[str]:
    """Unlabelled texts: `fields` ("inputs", "targets") of `split` in every present cell, held-out
    ones included, each text on its own (input-target pairing is not kept)."""
    unknown = [f for f in fields if f not in ("inputs", "targets")]
    if unknown or not fields:
      raise ValueError(f"corpus fields must be a non-empty subset of ('inputs', 'targets'), "
                       f"got {tuple(fields)}")
    return [ex[f] for f in fields for cell in self.examples.values() for ex in cell[split]]


def _stable_seed(*parts) -> int:
  return zlib.crc32(json.dumps([str(p) for p in parts]).encode())


def _pools(task: OfflineTask, config: OfflineConfig) -> dict[str, list[int]]:
  """Disjoint value-index pools per split, shared by all languages of the task."""
  want = {"test": config.n_test, "validation": config.n_validation, "train": config.n_train}
  sized = {s: math.ceil(n * _POOL_SLACK) for s, n in want.items()}
  rng = np.random.default_rng([config.seed, _stable_seed(task.name)])
  total = sum(sized.values())
  if task.domain_size >= total:
    drawn = rng.choice(task.domain_size, size=total, replace=False)
  else:  # Small domain: split all of it in proportion to the requested sizes.
    drawn = rng.permutation(task.domain_size)
    scale = task.domain_size / total
    sized = {s: max(1, int(n * scale)) for s, n in sized.items()}
    sized["train"] = task.domain_size - sized["test"] - sized["validation"]
  out, start = {}, 0
  for split in ("test", "validation", "train"):
    out[split] = [int(i) for i in drawn[start:start + sized[split]]]
    start += sized[split]
  return out


def _input_text(config: OfflineConfig, task: str, lang: str, source: str) -> str:
  if config.prefix == "task":
    return f"{task}: {source}"
  if config.prefix == "task_lang":
    return f"{task} {lang}: {source}"
  if config.prefix == "task_lang_family_script":
    entry = languages.table().get(lang, {})
    return (f"{task} {lang} {entry.get('family', 'unknown')} {entry.get('script', 'unknown')}: "
            f"{source}")
  return source


def _generate_cell(task: OfflineTask, lang: str, pools: Mapping[str, Sequence[int]],
                   config: OfflineConfig):
  """Returns (examples by split, skipped counts, absent reason or None)."""
  want = {"train": config.n_train, "validation": config.n_validation, "test": config.n_test}
  skipped = {"error": 0, "empty": 0, "too_long": 0}
  first_error, tried, ok_total = None, 0, 0
  cell = {}
  for split in SPLITS:
    rows = []
    for index in pools[split]:
      if len(rows) == want[split]:
        break
      value = task.source(index)
      tried += 1
      try:
        target = task.render_target(value, lang)
      except Exception as e:  # pylint: disable=broad-except
        skipped["error"] += 1
        first_error = first_error or f"{type(e).__name__}: {e}"
        if ok_total == 0 and tried >= _EARLY_ABSENT:
          return None, skipped, (f"{task.library} failed on all of the first {tried} values "
                                 f"(first error: {first_error})")
        continue
      target = target.strip() if isinstance(target, str) else ""
      if not target:
        skipped["empty"] += 1
        if ok_total == 0 and tried >= _EARLY_ABSENT:
          return None, skipped, f"{task.library} rendered empty text for the first {tried} values"
        continue
      inputs = _input_text(config, task.name, lang, task.render_input(value))
      if (len(inputs.encode()) + 1 > config.input_length
          or len(target.encode()) + 1 > config.target_length):
        skipped["too_long"] += 1
        continue
      rows.append({"inputs": inputs, "targets": target})
      ok_total += 1
    if not rows:
      return None, skipped, (f"no {split} example: of {tried} values tried, {skipped['error']} "
                             f"raised (first: {first_error}), {skipped['empty']} were empty, "
                             f"{skipped['too_long']} exceeded the byte lengths "
                             f"{config.input_length}/{config.target_length}")
    cell[split] = rows
  failed = skipped["error"] + skipped["empty"]
  if 2 * failed > tried:
    return None, skipped, (f"{task.library} failed on {failed} of {tried} values "
                           f"({skipped['error']} raised, first: {first_error}; "
                           f"{skipped['empty']} empty)")
  return cell, skipped, None


def make_holdout(config: OfflineConfig, present: Sequence[Pair]) -> HoldOut:
  """The hold-out of `config.holdout` over the present cells (see module docstring)."""
  return pairs.make_holdout(config.holdout, config.tasks, config.langs, present,
                            unseen_langs=config.unseen_langs, stride=config.diagonal_stride,
                            seed=config.holdout_seed, n_pairs=config.holdout_pairs,
                            unseen_pairs=[Pair(*p) for p in config.unseen_pairs])


@functools.lru_cache(maxsize=4)
def generate(config: OfflineConfig = OfflineConfig()) -> OfflineData:
  """Generates the benchmark (deterministic in `config`; memoized in memory)."""
  tasks = _tasks()
  _N2W_CONVERTERS.clear()
  examples, absent, skipped = {}, {}, {}
  for task_name in config.tasks:
    task = tasks[task_name]
    pools = _pools(task, config)
    for lang in config.langs:
      pair = Pair(task_name, lang)
      cell, skips, reason = _generate_cell(task, lang, pools, config)
      if reason is not None:
        absent[pair] = reason
      else:
        examples[pair] = cell
        skipped[pair] = skips
  if not examples:
    raise ValueError(f"no cell of {config} could be generated; absent: {absent}")
  holdout = make_holdout(config, list(examples))
  return OfflineData(config, examples, absent, skipped, holdout)


def absent_cells(config: OfflineConfig = OfflineConfig()) -> dict[Pair, str]:
  """Cells the libraries cannot produce under `config`, with the reason."""
  return dict(generate(config).absent)
