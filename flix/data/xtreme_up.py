"""XTREME-UP text tasks as task-language pairs, read from the public JSONL release.

Layout: `{data_dir}/{task}/{split}/{lang}.jsonl` (transliteration: `{Src}2{Tgt}.{lang}.jsonl`,
all script directions of a language form one pair). `data_dir` is an argument (gin-bindable:
`register_xtreme_up_experiment.data_dir`) or the env var XTREME_UP_DIR.

Entry points:
  register_xtreme_up_experiment  (gin: `train.registration = @register_xtreme_up_experiment()`)
      loads the release, builds the FeatureSpace from it (the tasks loaded; the languages
      trained), applies a hold-out, registers every pair plus `{prefix}.train` and
      `{prefix}.eval`, and returns an XtremeUpRegistration with `.space`, `.data.holdout`,
      `.train_mixture`, `.eval_mixture` (what `flix.train` and `flix.eval` use; see
      configs/experiments/xtreme_up_flix.gin).
  register_xtreme_up  registers only the pair Tasks, for a FeatureSpace built by the caller.

Inputs and targets follow the official baseline formatting (google-research/xtreme-up):
  qa_in_lang, qa_cross_lang  "question: {question} title: {title} context: {context}" -> target
  ner                        text (tabs -> spaces) -> "LABEL: entity $$ LABEL: entity" from the
                             byte spans (a sentence without entities has an empty target)
  semantic_parsing           input -> target
  translation                input -> target
  transliteration            "{lang}-{Src}-{Tgt} {input}" -> target
  autocomplete               "{lang}-{context}$" -> target
Metrics (0..100): QA SQuAD EM/F1; NER span F1; semantic parsing sequence accuracy;
translation chrF; transliteration CER; autocomplete top-3 accuracy.

JSONL is parsed and validated in Python before anything reaches tf.data. A bad record (invalid
UTF-8 or JSON, missing or non-string field, empty target, input longer than `max_input_bytes`,
NER span outside the text) raises BadRecordError naming file and line under
`bad_records="error"`, or is skipped, counted and warned about under `bad_records="skip"`. A file
whose language code XTREME-UP does not list for the task is treated the same way (line 0).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import warnings
from typing import Callable, Iterable, Literal, Mapping, Sequence

import gin

from flix.data import metrics, pairs
from flix.data.pairs import HoldOut, Pair, PairTask, RateKind
from flix.features import FeatureSpace

ENV_VAR = "XTREME_UP_DIR"
SPLITS = ("train", "validation", "test")
BadRecordPolicy = Literal["error", "skip"]

LANGUAGES: dict[str, tuple[str, ...]] = {
    "qa_in_lang": ("ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te"),
    "qa_cross_lang": ("ar", "as", "bho", "bn", "brx", "fi", "gbm", "gom", "gu", "hi", "hne", "kn",
                      "ko", "mai", "ml", "mni", "mr", "mwr", "or", "pa", "ps", "ru", "sa", "ta",
                      "te", "ur"),
    "ner": ("am", "bbj", "bm", "ee", "ha", "ig", "lg", "luo", "mos", "ny", "pcm", "rw", "sn", "sw",
            "tn", "tw", "wo", "xh", "yo", "zu"),
    "semantic_parsing": ("am", "be", "bn", "bn_cs", "de", "de_localized", "en", "es", "fi", "fr",
                         "ha", "hi", "hi_cs", "hu", "ja", "pt_br", "ru", "sw", "ta", "ta_cs",
                         "th", "tr", "yo", "zu"),
    "translation": (
        "af", "am", "ar", "as", "az", "be", "bg", "bn", "bs", "ca", "ceb", "ckb", "cs", "cy", "da",
        "de", "el", "es", "et", "fa", "ff", "fi", "fil", "fr", "ga", "gl", "gu", "ha", "he", "hi",
        "hr", "hu", "hy", "id", "ig", "is", "it", "ja", "jv", "ka", "kk", "km", "kn", "ko", "ky",
        "lb", "lg", "ln", "lo", "lt", "lv", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne",
        "nl", "no", "nso", "ny", "om", "or", "pa", "pl", "ps", "pt", "ro", "ru", "sd", "sk", "sl",
        "sn", "so", "sr", "sv", "sw", "ta", "te", "tg", "th", "tr", "uk", "ur", "uz", "vi", "xh",
        "yo", "zh", "zu"),
    "transliteration": ("am", "bn", "gu", "hi", "kn", "ml", "mr", "pa", "sd", "si", "ta", "te",
                        "ur"),
    "autocomplete": ("be", "bg", "da", "el", "en", "et", "eu", "ga", "gd", "gl", "he", "hy", "id",
                     "is", "lt", "lv", "pcm", "ro", "sk", "sl", "ug", "uk", "ur"),
}
TASKS = tuple(LANGUAGES)
_TRANSLIT_FILE = re.compile(r"^([A-Za-z]+)2([A-Za-z]+)\.([A-Za-z_]+)\.jsonl$")


class BadRecordError(ValueError):
  """A JSONL record that cannot become an example; the message names file and line."""


class _Bad(Exception):
  """Internal: why one record is bad."""


@dataclasses.dataclass(frozen=True)
class SourceFile:
  path: str
  task: str
  lang: str
  src_script: str | None = None
  tgt_script: str | None = None


# -- formatting -------------------------------------------------------------------------------
def _field(record: Mapping, name: str, allow_empty: bool = False) -> str:
  if name not in record:
    raise _Bad(f"missing field {name!r} (fields present: {sorted(record)})")
  value = record[name]
  if not isinstance(value, str):
    raise _Bad(f"field {name!r} must be a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise _Bad(f"field {name!r} is empty")
  return value


def _format_qa(record, f: SourceFile):
  return (f"question: {_field(record, 'question')} title: {_field(record, 'title', True)} "
          f"context: {_field(record, 'context')}", _field(record, "target"))


def _format_ner(record, f: SourceFile):
  text = _field(record, "text")
  spans = record.get("spans")
  if not isinstance(spans, list):
    raise _Bad(f"field 'spans' must be a list, got {type(spans).__name__}")
  raw = text.encode("utf-8")
  parts = []
  for k, span in enumerate(spans):
    if not isinstance(span, dict):
      raise _Bad(f"span {k} must be an object, got {span!r}")
    start, limit, label = span.get("start_byte"), span.get("limit_byte"), span.get("label")
    if not (isinstance(start, int) and isinstance(limit, int) and 0 <= start < limit <= len(raw)):
      raise _Bad(f"span {k} has byte range [{start}, {limit}) outside the text's "
                 f"{len(raw)} bytes")
    if not isinstance(label, str) or not label:
      raise _Bad(f"span {k} has no label")
    try:
      entity = raw[start:limit].decode("utf-8")
    except UnicodeDecodeError:
      raise _Bad(f"span {k} byte range [{start}, {limit}) cuts a UTF-8 character") from None
    parts.append(f"{label}: {entity}")
  return text.replace("\t", " "), metrics.NER_DELIMITER.join(parts).replace("\t", " ")


def _format_plain(record, f: SourceFile):
  return _field(record, "input"), _field(record, "target")


def _format_transliteration(record, f: SourceFile):
  return (f"{f.lang}-{f.src_script}-{f.tgt_script} {_field(record, 'input')}",
          _field(record, "target"))


def _format_autocomplete(record, f: SourceFile):
  return f"{f.lang}-{_field(record, 'context')}$", _field(record, "target")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  format: Callable[[Mapping, SourceFile], tuple[str, str]]
  metric_fns: tuple[Callable, ...]


TASK_SPECS: dict[str, TaskSpec] = {
    "qa_in_lang": TaskSpec(_format_qa, (metrics.squad,)),
    "qa_cross_lang": TaskSpec(_format_qa, (metrics.squad,)),
    "ner": TaskSpec(_format_ner, (metrics.span_f1,)),
    "semantic_parsing": TaskSpec(_format_plain, (metrics.sequence_accuracy,)),
    "translation": TaskSpec(_format_plain, (metrics.chrf,)),
    "transliteration": TaskSpec(_format_transliteration, (metrics.cer,)),
    "autocomplete": TaskSpec(_format_autocomplete, (metrics.top3_accuracy,)),
}


# -- files ------------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else $XTREME_UP_DIR; raises FileNotFoundError saying what to download."""
  chosen = data_dir or os.environ.get(ENV_VAR)
  if not chosen or not os.path.isdir(chosen):
    where = (f"the directory {chosen!r} does not exist" if chosen else
             f"no data_dir was given and ${ENV_VAR} is not set")
    raise FileNotFoundError(
        f"XTREME-UP data not found: {where}. Download the XTREME-UP data release (linked from "
        "https://github.com/google-research/xtreme-up), unpack it so that "
        "<dir>/<task>/<split>/<lang>.jsonl exists (e.g. <dir>/ner/train/sw.jsonl), then pass "
        f"data_dir=<dir> or set {ENV_VAR}=<dir>.")
  return chosen


def _parse_file_name(task: str, name: str, path: str) -> SourceFile | None:
  if not name.endswith(".jsonl"):
    return None
  if task == "transliteration":
    m = _TRANSLIT_FILE.match(name)
    if not m:
      raise BadRecordError(f"{path}:0: transliteration files must be named "
                           f"'{{Src}}2{{Tgt}}.{{lang}}.jsonl', got {name!r}")
    return SourceFile(path, task, m.group(3), m.group(1), m.group(2))
  return SourceFile(path, task, name[:-len(".jsonl")])


def list_files(data_dir: str, task: str) -> dict[str, list[SourceFile]]:
  """`{split: [SourceFile, ...]}` for the splits present under `{data_dir}/{task}`."""
  task_dir = os.path.join(data_dir, task)
  if not os.path.isdir(task_dir):
    raise FileNotFoundError(
        f"XTREME-UP task directory {task_dir!r} not found; expected "
        f"{task_dir}/<split>/<lang>.jsonl with split in {SPLITS} (is {data_dir!r} the unpacked "
        "XTREME-UP release from https://github.com/google-research/xtreme-up?)")
  out = {}
  for split in SPLITS:
    split_dir = os.path.join(task_dir, split)
    if os.path.isdir(split_dir):
      files = [_parse_file_name(task, n, os.path.join(split_dir, n))
               for n in sorted(os.listdir(split_dir))]
      out[split] = [f for f in files if f is not None]
  if not out:
    raise FileNotFoundError(f"XTREME-UP task directory {task_dir!r} has none of the split "
                            f"directories {SPLITS}")
  return out


@dataclasses.dataclass
class _Skips:
  count: int = 0
  first: list[str] = dataclasses.field(default_factory=list)

  def add(self, where: str) -> None:
    self.count += 1
    if len(self.first) < 3:
      self.first.append(where)


def read_file(f: SourceFile, bad_records: BadRecordPolicy = "error",
              max_input_bytes: int | None = None) -> tuple[list[dict[str, str]], int]:
  """Validated, formatted examples `[{"inputs", "targets"}]` of one file, and the skip count."""
  if bad_records not in ("error", "skip"):
    raise ValueError(f"bad_records must be 'error' or 'skip', got {bad_records!r}")
  spec = TASK_SPECS[f.task]
  skips, rows = _Skips(), []
  with open(f.path, "rb") as fh:
    for lineno, raw in enumerate(fh, 1):
      try:
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise _Bad(f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)") from None
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise _Bad(f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
          raise _Bad(f"expected a JSON object, got {type(record).__name__}")
        inputs, targets = spec.format(record, f)
        if not targets.strip() and f.task != "ner":
          raise _Bad("empty target")
        n = len(inputs.encode("utf-8"))
        if max_input_bytes is not None and n > max_input_bytes:
          raise _Bad(f"input is {n} bytes, longer than max_input_bytes={max_input_bytes}")
      except _Bad as bad:
        where = f"{f.path}:{lineno}: {bad}"
        if bad_records == "error":
          raise BadRecordError(f"bad XTREME-UP {f.task} record at {where} (pass "
                               "bad_records='skip' to skip and count such records)") from None
        skips.add(where)
        continue
      rows.append({"inputs": inputs, "targets": targets})
  if skips.count:
    msg = (f"skipped {skips.count} bad record(s) in {f.path}; first: " + " | ".join(skips.first))
    warnings.warn(msg)
    logging.warning(msg)
  return rows, skips.count


@dataclasses.dataclass(frozen=True)
class XtremeUpData:
  """Examples per pair and split, skip counts per file, and the hold-out they are used with
  (`load` leaves it empty; the register functions record the one they applied)."""

  examples: Mapping[Pair, Mapping[str, Sequence[Mapping[str, str]]]]
  skipped: Mapping[str, int]
  holdout: HoldOut = HoldOut()

  @property
  def total_skipped(self) -> int:
    return sum(self.skipped.values())


def load(tasks: Iterable[str] = TASKS, langs: Mapping[str, Sequence[str]] | Sequence[str] | None
         = None, data_dir: str | None = None, bad_records: BadRecordPolicy = "error",
         max_input_bytes: int | None = None) -> XtremeUpData:
  """Reads and validates the JSONL files of `tasks` (all languages present unless `langs`)."""
  data_dir = resolve_data_dir(data_dir)
  examples: dict[Pair, dict[str, list]] = {}
  skipped: dict[str, int] = {}
  for task in tasks:
    if task not in TASK_SPECS:
      raise ValueError(f"unknown XTREME-UP task {task!r}; expected one of {TASKS}")
    wanted = langs.get(task) if isinstance(langs, Mapping) else langs
    if wanted is not None:
      unknown = [l for l in wanted if l not in LANGUAGES[task]]
      if unknown:
        raise ValueError(f"languages {unknown} are not XTREME-UP {task} languages "
                         f"{list(LANGUAGES[task])}")
    found = set()
    for split, files in list_files(data_dir, task).items():
      for f in files:
        if f.lang not in LANGUAGES[task]:
          where = (f"{f.path}:0: unknown language code {f.lang!r}; XTREME-UP {task} languages "
                   f"are {list(LANGUAGES[task])}")
          if bad_records == "error":
            raise BadRecordError(f"bad XTREME-UP file {where} (pass bad_records='skip' to skip "
                                 "it)")
          warnings.warn(f"skipped file {where}")
          skipped[f.path] = skipped.get(f.path, 0) + 1
          continue
        if wanted is not None and f.lang not in wanted:
          continue
        rows, n_skipped = read_file(f, bad_records, max_input_bytes)
        if n_skipped:
          skipped[f.path] = n_skipped
        examples.setdefault(Pair(task, f.lang), {}).setdefault(split, []).extend(rows)
        found.add(f.lang)
    missing = sorted(set(wanted or ()) - found)
    if missing:
      raise FileNotFoundError(f"no XTREME-UP {task} files for languages {missing} under "
                              f"{os.path.join(data_dir, task)}/<split>/")
  return XtremeUpData({p: {s: rows for s, rows in e.items() if rows} for p, e in
                       examples.items()}, skipped)


@dataclasses.dataclass(frozen=True)
class XtremeUpRegistration:
  """What a register function put in the seqio registries.

  Attributes:
    data: the loaded examples; `data.holdout` is the hold-out applied.
    tasks: one PairTask per pair, named `{prefix}.{task}.{lang}`.
    prefix: the name prefix.
    space: the FeatureSpace the pairs' feature ids were encoded with.
    train_mixture, eval_mixture: `{prefix}.train` (the trained pairs) and `{prefix}.eval` (every
      pair); None where not registered (`register_xtreme_up`).
    task_feature_lengths: `{"inputs": ..., "targets": ...}` as configured, or None.
  """

  data: XtremeUpData
  tasks: tuple[PairTask, ...]
  prefix: str
  space: FeatureSpace | None = None
  train_mixture: str | None = None
  eval_mixture: str | None = None
  task_feature_lengths: Mapping[str, int] | None = None

  @property
  def holdout(self) -> HoldOut:
    return self.data.holdout

  @property
  def names(self) -> tuple[str, ...]:
    """Every registered seqio name: the mixtures (if any), then the pair Tasks."""
    mixtures = tuple(m for m in (self.train_mixture, self.eval_mixture) if m)
    return (*mixtures, *(t.name for t in self.tasks))

  def tasks_of_kind(self, kind: str) -> tuple[PairTask, ...]:
    if kind not in pairs.SPLIT_KINDS:
      raise ValueError(f"split kind {kind!r} unknown; expected one of {pairs.SPLIT_KINDS}")
    return tuple(t for t in self.tasks if t.kind == kind)

  def unregister(self) -> None:
    pairs.unregister(self.names)


def _register_tasks(data: XtremeUpData, space: FeatureSpace, prefix: str) -> list[PairTask]:
  """One seqio Task per pair of `data`, under `data.holdout`; all or none are registered."""
  registered = []
  try:
    for pair, examples in sorted(data.examples.items()):
      registered.append(pairs.register_pair_task(
          pair.task_name(prefix), pair, examples, space, data.holdout,
          metric_fns=TASK_SPECS[pair.task].metric_fns))
  except Exception:
    pairs.unregister([t.name for t in registered])
    raise
  return registered


@gin.configurable(module="flix.data")
def register_xtreme_up(space: FeatureSpace,
                       tasks: Iterable[str] = TASKS,
                       langs: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
                       data_dir: str | None = None,
                       prefix: str = "xtreme_up",
                       holdout: HoldOut | None = None,
                       bad_records: BadRecordPolicy = "error",
                       max_input_bytes: int | None = None) -> XtremeUpRegistration:
  """Registers one seqio Task `{prefix}.{task}.{lang}` per XTREME-UP pair found.

  Lower level than `register_xtreme_up_experiment` (which builds the space and the hold-out from
  the data and adds the train/eval mixtures): the caller brings the space.

  Args:
    space: the FeatureSpace; its `task` values are XTREME-UP task names (e.g. 'ner').
    tasks, langs: what to load; langs per task (mapping) or for every task (sequence).
    data_dir: the unpacked release; default $XTREME_UP_DIR.
    holdout: pairs/languages kept out of training (their train split is dropped).
    bad_records: 'error' (BadRecordError naming file:line) or 'skip' (count and warn).
    max_input_bytes: inputs longer than this (UTF-8 bytes, after formatting) are bad records.
  Use `pairs.register_pair_mixture` over the returned tasks for cross-task mixtures.
  """
  data = load(tasks, langs, data_dir, bad_records, max_input_bytes)
  data = dataclasses.replace(data, holdout=holdout or HoldOut())
  return XtremeUpRegistration(data, tuple(_register_tasks(data, space, prefix)), prefix, space)


# -- experiments: space, hold-out and mixtures from the data -----------------------------------
def _as_pair(value) -> Pair:
  if isinstance(value, Pair):
    return value
  if isinstance(value, str) and value.count(".") == 1:
    return Pair(*value.split("."))
  if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
    return Pair(*value)
  raise ValueError(f"an unseen pair is written ('task', 'lang') or 'task.lang', got {value!r}")


def _pair_list(ps: Iterable[Pair]) -> list[str]:
  return [f"{p.task}.{p.lang}" for p in sorted(ps)]


def experiment_holdout(data: XtremeUpData, unseen_pairs: Iterable = (),
                       unseen_langs: Iterable[str] = ()) -> HoldOut:
  """The hold-out of an experiment on `data`.

  The explicit `unseen_pairs` (('task', 'lang') or 'task.lang') and `unseen_langs`, plus what
  the data leaves untrained: a language without a train split in any pair is an unseen language
  (its adapter would never train), and a pair without a train split whose language trains
  elsewhere is an unseen pair. Raises ValueError for a held-out pair or language the data lacks,
  and when the hold-out leaves a task or a seen language without any trained pair.
  """
  if isinstance(unseen_pairs, (str, Pair)):
    unseen_pairs = (unseen_pairs,)
  if isinstance(unseen_langs, str):
    unseen_langs = (unseen_langs,)
  present = set(data.examples)
  langs = {p.lang for p in present}
  explicit_pairs = {_as_pair(p) for p in unseen_pairs or ()}
  explicit_langs = set(unseen_langs or ())
  if explicit_pairs - present:
    raise ValueError(f"unseen pairs {_pair_list(explicit_pairs - present)} have no XTREME-UP "
                     f"files among the loaded pairs {_pair_list(present)}")
  if explicit_langs - langs:
    raise ValueError(f"unseen languages {sorted(explicit_langs - langs)} have no XTREME-UP files "
                     f"among the loaded languages {sorted(langs)}")
  with_train = {p.lang for p, splits in data.examples.items() if splits.get(pairs.TRAIN)}
  implied_langs = langs - with_train - explicit_langs
  all_langs = explicit_langs | implied_langs
  implied_pairs = {p for p, splits in data.examples.items()
                   if p.lang not in all_langs and p not in explicit_pairs
                   and not splits.get(pairs.TRAIN)}
  holdout = HoldOut({p for p in explicit_pairs if p.lang not in implied_langs} | implied_pairs,
                    all_langs, scheme="xtreme_up")
  holdout.check_covers(present)
  if implied_langs or implied_pairs:
    logging.info("XTREME-UP: no train split, so held out: languages %s, pairs %s",
                 sorted(implied_langs), _pair_list(implied_pairs))
  return holdout


def experiment_space(data: XtremeUpData, ranks: Mapping[str, int] | int = 4,
                     shared_rank: int = 0) -> FeatureSpace:
  """`task` = the tasks of `data`, `lang` = its trained languages (never an unseen language of
  `data.holdout`: their pairs encode the language INACTIVE), sorted, so ids do not depend on
  the order tasks were listed in."""
  trained = [p for p, splits in data.examples.items()
             if data.holdout.is_trained(p) and splits.get(pairs.TRAIN)]
  return FeatureSpace.build({"task": sorted({p.task for p in trained}),
                             "lang": sorted({p.lang for p in trained})}, ranks, shared_rank)


# prefix -> (arguments, registration): registering a prefix again with the same arguments
# returns the existing registration; with other arguments it replaces it.
_REGISTERED: dict[str, tuple[tuple, XtremeUpRegistration]] = {}


@gin.configurable(module="flix.data")
def register_xtreme_up_experiment(
    data_dir: str | None = None,
    tasks: Sequence[str] = TASKS,
    langs: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    prefix: str = "xtreme_up",
    unseen_pairs: Iterable = (),
    unseen_langs: Iterable[str] = (),
    ranks: Mapping[str, int] | int = 4,
    shared_rank: int = 0,
    rate: RateKind = "equal",
    temperature: float = 1.0,
    maximum: int | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    bad_records: BadRecordPolicy = "error",
    max_input_bytes: int | None = None) -> XtremeUpRegistration:
  """Loads XTREME-UP and registers an experiment on it: what `flix.train` / `flix.eval` need.

  Registers `{prefix}.{task}.{lang}` per pair, `{prefix}.train` (the trained pairs, at `rate`)
  and `{prefix}.eval` (every pair, equal rates) and returns the XtremeUpRegistration (`.space`,
  `.data.holdout`, `.train_mixture`, `.eval_mixture`, ...).

  Args:
    data_dir: the unpacked release (`{task}/{split}/{lang}.jsonl`); default $XTREME_UP_DIR.
    tasks, langs: what to load (see `load`); default every text task and language present.
    prefix: name prefix; registering it again with the same arguments returns the existing
      registration, with other arguments replaces it (files are not re-read for a repeat).
    unseen_pairs: pairs trained nowhere, evaluated zero-shot: ('task', 'lang') or 'task.lang'.
    unseen_langs: languages with no fine-tuning at all: not in the space, so their pairs are
      encoded with the language INACTIVE. Languages without any train split join them, and
      pairs without a train split join `unseen_pairs` (see `experiment_holdout`).
    ranks, shared_rank: the space's adapter ranks, per type (`{"task": 8, "lang": 8}`) or one.
    rate, temperature, maximum: the training mixture's rate (`pairs.mixing_rate`): "equal",
      "examples" (proportional to train examples, capped at `maximum`) or "temperature".
    task_feature_lengths: recorded on the registration (e.g. for `flix.evaluation.evaluate`).
    bad_records, max_input_bytes: see `load`.
  """
  data_dir = os.path.abspath(resolve_data_dir(data_dir))
  tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
  if isinstance(unseen_pairs, (str, Pair)):
    unseen_pairs = (unseen_pairs,)
  unseen_pairs = frozenset(_as_pair(p) for p in unseen_pairs or ())
  unseen_langs = frozenset((unseen_langs,) if isinstance(unseen_langs, str)
                           else unseen_langs or ())
  pairs.mixing_rate(rate, temperature, maximum)  # Validates before anything is read.
  arguments = (data_dir, tasks, pairs.frozen(langs), unseen_pairs, unseen_langs,
               pairs.frozen(ranks), shared_rank, rate, temperature, maximum,
               pairs.frozen(task_feature_lengths),
               bad_records, max_input_bytes)
  previous = pairs.cached_registration(_REGISTERED, prefix, arguments)
  if previous is not None:
    return previous

  data = load(tasks, langs, data_dir, bad_records, max_input_bytes)
  if not data.examples:
    raise FileNotFoundError(f"no XTREME-UP files for tasks {list(tasks)} under {data_dir} "
                            "(expected <task>/<split>/<lang>.jsonl)")
  data = dataclasses.replace(data, holdout=experiment_holdout(data, unseen_pairs, unseen_langs))
  space = experiment_space(data, ranks, shared_rank)
  train_mixture, eval_mixture = f"{prefix}.train", f"{prefix}.eval"
  registered = []
  try:
    registered = _register_tasks(data, space, prefix)
    pairs.register_pair_mixture(train_mixture, registered, rate, temperature, maximum)
    pairs.register_pair_mixture(eval_mixture, registered, "equal", include_untrained=True)
  except Exception:
    pairs.unregister([train_mixture, eval_mixture, *(t.name for t in registered)])
    raise
  registration = XtremeUpRegistration(
      data, tuple(registered), prefix, space, train_mixture, eval_mixture,
      dict(task_feature_lengths) if task_feature_lengths is not None else None)
  _REGISTERED[prefix] = (arguments, registration)
  kinds = {k: len(registration.tasks_of_kind(k)) for k in pairs.SPLIT_KINDS}
  logging.info("XTREME-UP %r: %d pairs (%s) from %s; space: tasks %s, languages %s",
               prefix, len(registered), kinds, data_dir, list(space.type("task").values),
               list(space.type("lang").values))
  return registration
