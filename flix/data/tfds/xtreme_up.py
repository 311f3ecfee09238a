"""TFDS builder: XTREME-UP's text tasks, from the public JSONL release (v1.1) in `manual_dir`.

Release layout, as the official code names it (google-research/xtreme-up: baseline/*_tasks.py,
evaluation/score_system.py): `{task}/{split}/{stem}.jsonl`, split train / validation / test,
where the stem is
  `{lang}`               qa_in_lang, qa_cross_lang, ner, semantic_parsing (with the
                         code-switched `bn_cs`, `hi_cs`, `ta_cs`, and `pt_br`, `de_localized`),
                         autocomplete;
  `en2{lang}`            translation (English -> lang), e.g. `en2sw`;
  `{Src}2{Tgt}.{lang}`   transliteration, one file per script direction (ISO 15924), both ways
                         of each official script pair, e.g. `Latn2Deva.hi` and `Deva2Latn.hi`.

One config per stem (`Pair`: task, language and, for transliteration, the direction as the
variant), named `{task}-{lang}[-{Src}2{Tgt}]`, with the splits whose file exists. An example is
the official linearisation of one line (baseline/jsonl_to_seqio_tsv_lib.py) and its line number,
features `inputs`, `targets`, `line`:
  qa_in_lang, qa_cross_lang  "question: {question} title: {title} context: {context}" -> target
  ner                        text (tabs -> spaces) -> "LABEL: entity $$ LABEL: entity" from the
                             byte spans (a sentence without entities has an empty target)
  semantic_parsing           input -> target
  translation                input -> target
  transliteration            "{lang}-{Src}-{Tgt} {input}" -> target
  autocomplete               "{lang}-{context}$" -> target

Strict: a file name outside the official patterns, languages and directions raises
ReleaseLayoutError naming it and the pattern; a bad line (invalid UTF-8 or JSON, blank, missing
or non-string field, empty target or input, NER span outside the text) raises
ReleaseFormatError naming file and line. Nothing is skipped.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from flix.data import metrics
from flix.data.pairs import Pair
from flix.data.tfds import release

SPLITS = ("train", "validation", "test")

# The official languages per task (evaluation/constants.py, code-switched ones included).
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

# Transliteration's script pairs per language (evaluation/constants.py); each is released and
# scored in both directions, so Punjabi has 6 directions and every other language 2.
TRANSLITERATION_SCRIPTS: dict[str, tuple[tuple[str, str], ...]] = {
    "am": (("Latn", "Ethi"),), "bn": (("Latn", "Beng"),), "gu": (("Latn", "Gujr"),),
    "hi": (("Latn", "Deva"),), "kn": (("Latn", "Knda"),), "ml": (("Latn", "Mlym"),),
    "mr": (("Latn", "Deva"),), "pa": (("Latn", "Guru"), ("Arab", "Guru"), ("Latn", "Arab")),
    "sd": (("Latn", "Arab"),), "si": (("Latn", "Sinh"),), "ta": (("Latn", "Taml"),),
    "te": (("Latn", "Telu"),), "ur": (("Latn", "Arab"),),
}

FILE_PATTERNS = {task: "{lang}.jsonl" for task in TASKS}
FILE_PATTERNS["translation"] = "en2{lang}.jsonl"
FILE_PATTERNS["transliteration"] = "{Src}2{Tgt}.{lang}.jsonl"
LAYOUT = ("<dir>/{task}/{split}/{stem}.jsonl, split in train / validation / test (e.g. "
          "ner/train/sw.jsonl, translation/train/en2sw.jsonl, "
          "transliteration/train/Latn2Deva.hi.jsonl)")
_PLAIN_FILE = re.compile(r"^([a-z]+(?:_[a-z]+)*)\.jsonl$")
_TRANSLATION_FILE = re.compile(r"^en2([a-z]+)\.jsonl$")
_TRANSLITERATION_FILE = re.compile(r"^([A-Za-z]+2[A-Za-z]+)\.([a-z]+)\.jsonl$")


# -- names ------------------------------------------------------------------------------------
def directions(lang: str) -> tuple[str, ...]:
  """The official transliteration directions of `lang`, e.g. ('Latn2Deva', 'Deva2Latn')."""
  pairs = TRANSLITERATION_SCRIPTS[lang]
  return tuple(f"{a}2{b}" for a, b in pairs) + tuple(f"{b}2{a}" for a, b in pairs)


def check_pair(pair: Pair) -> Pair:
  """`pair` if it is an official task, language and (transliteration) direction; ValueError."""
  if pair.task not in LANGUAGES:
    raise ValueError(f"unknown XTREME-UP task {pair.task!r}; expected one of {list(TASKS)}")
  if pair.lang not in LANGUAGES[pair.task]:
    raise ValueError(f"unknown language code {pair.lang!r}; XTREME-UP {pair.task} languages are "
                     f"{list(LANGUAGES[pair.task])}")
  wanted = directions(pair.lang) if pair.task == "transliteration" else ("",)
  if pair.variant not in wanted:
    raise ValueError(f"{pair.variant!r} is not an XTREME-UP {pair.task} direction of "
                     f"{pair.lang!r}; expected one of {list(wanted)}")
  return pair


def file_stem(pair: Pair) -> str:
  """The release file name of `pair` without `.jsonl`: `sw`, `en2sw`, `Latn2Deva.hi`."""
  if pair.task == "translation":
    return f"en2{pair.lang}"
  if pair.task == "transliteration":
    return f"{pair.variant}.{pair.lang}"
  return pair.lang


def parse_file_name(task: str, path: str) -> Pair:
  """The pair of release file `path` of `task`; ReleaseLayoutError naming the official pattern."""
  name = os.path.basename(path)
  if task == "translation":
    match = _TRANSLATION_FILE.match(name)
    pair = match and Pair(task, match.group(1))
  elif task == "transliteration":
    match = _TRANSLITERATION_FILE.match(name)
    pair = match and Pair(task, match.group(2), match.group(1))
  else:
    match = _PLAIN_FILE.match(name)
    pair = match and Pair(task, match.group(1))
  if not pair:
    raise release.ReleaseLayoutError(
        f"{path}: XTREME-UP {task} files are named {FILE_PATTERNS[task]}, got {name!r}")
  try:
    return check_pair(pair)
  except ValueError as e:
    raise release.ReleaseLayoutError(f"{path}: {e}") from None


def discover(data_dir: str, task: str) -> dict[Pair, tuple[str, ...]]:
  """`{pair: splits with a file}` under `{data_dir}/{task}/` (official names checked)."""
  if task not in LANGUAGES:
    raise ValueError(f"unknown XTREME-UP task {task!r}; expected one of {list(TASKS)}")
  root = os.path.join(data_dir, task)
  if not os.path.isdir(root):
    raise release.ReleaseLayoutError(f"XTREME-UP task directory {root} not found; expected "
                                     f"{LAYOUT}")
  found: dict[Pair, list[str]] = {}
  for split in SPLITS:
    directory = os.path.join(root, split)
    if not os.path.isdir(directory):
      continue
    for name in sorted(os.listdir(directory)):
      if name.endswith(".jsonl"):
        found.setdefault(parse_file_name(task, os.path.join(directory, name)), []).append(split)
  if not found:
    raise release.ReleaseLayoutError(f"no {FILE_PATTERNS[task]} files under {root}/<split>/; "
                                     f"expected {LAYOUT}")
  return {pair: tuple(splits) for pair, splits in sorted(found.items())}


def release_files(data_dir: str, pair: Pair) -> dict[str, str]:
  """`{split: path}` of `pair`'s files in the release; ReleaseLayoutError if it has none."""
  paths = {split: os.path.join(data_dir, pair.task, split, f"{file_stem(pair)}.jsonl")
           for split in SPLITS}
  paths = {split: path for split, path in paths.items() if os.path.isfile(path)}
  if not paths:
    raise release.ReleaseLayoutError(
        f"no release file for XTREME-UP {pair.key} under {data_dir}: expected "
        f"{pair.task}/<split>/{file_stem(pair)}.jsonl ({LAYOUT})")
  return paths


# -- the official linearisation ---------------------------------------------------------------
class _Bad(Exception):
  """Why one record cannot become an example."""


def _field(record: Mapping[str, Any], name: str, allow_empty: bool = False) -> str:
  if name not in record:
    raise _Bad(f"missing field {name!r} (fields present: {sorted(record)})")
  value = record[name]
  if not isinstance(value, str):
    raise _Bad(f"field {name!r} must be a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise _Bad(f"field {name!r} is empty")
  return value


def _ner_target(text: str, spans) -> str:
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
    if not isinstance(label, str) or not label.strip():
      raise _Bad(f"span {k} has no label")
    try:
      entity = raw[start:limit].decode("utf-8")
    except UnicodeDecodeError:
      raise _Bad(f"span {k} byte range [{start}, {limit}) cuts a UTF-8 character") from None
    parts.append(f"{label}: {entity}")
  return metrics.NER_DELIMITER.join(parts)


def linearise(pair: Pair, record: Mapping[str, Any]) -> tuple[str, str]:
  """(inputs, targets) of one release record of `pair`, as the official baseline writes them."""
  task = pair.task
  if task in ("qa_in_lang", "qa_cross_lang"):
    inputs = (f"question: {_field(record, 'question')} title: {_field(record, 'title', True)} "
              f"context: {_field(record, 'context')}")
    return inputs, _field(record, "target")
  if task == "ner":
    text = _field(record, "text")
    return text.replace("\t", " "), _ner_target(text, record.get("spans")).replace("\t", " ")
  if task == "transliteration":
    src, tgt = pair.variant.split("2")
    return f"{pair.lang}-{src}-{tgt} {_field(record, 'input')}", _field(record, "target")
  if task == "autocomplete":
    return f"{pair.lang}-{_field(record, 'context')}$", _field(record, "target")
  return _field(record, "input"), _field(record, "target")


def examples(pair: Pair, path: str):
  """(line number, {"inputs", "targets", "line"}) of release file `path` of `pair`."""
  for number, record in release.jsonl_records(path):
    try:
      inputs, targets = linearise(pair, record)
    except _Bad as bad:
      raise release.ReleaseFormatError(f"{path}:{number}: {bad}") from None
    yield number, {"inputs": inputs, "targets": targets, "line": number}


# -- the builder ------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class XtremeUpConfig(tfds.core.BuilderConfig):
  """One release file stem: task, lang and (transliteration) the direction as the variant."""

  task: str = ""
  lang: str = ""
  variant: str = ""

  @property
  def pair(self) -> Pair:
    return Pair(self.task, self.lang, self.variant)


def config(pair: Pair) -> XtremeUpConfig:
  """The config of an official pair, named `{task}-{lang}[-{Src}2{Tgt}]`."""
  check_pair(pair)
  name = "-".join(p for p in (pair.task, pair.lang, pair.variant) if p)
  return XtremeUpConfig(name=name, task=pair.task, lang=pair.lang, variant=pair.variant,
                        description=f"XTREME-UP {pair.task}: {file_stem(pair)}.jsonl")


class XtremeUp(tfds.core.GeneratorBasedBuilder):
  """One XTREME-UP release file stem (every split present), officially linearised."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "The v1.1 JSONL release, parsed strictly."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Download https://storage.googleapis.com/xtreme-up/xtreme-up-v1.1.jsonl.tgz (linked from
  github.com/google-research/xtreme-up), unpack it and pass the directory holding the task
  directories as the manual_dir: {LAYOUT}. Licences: per task, see the XTREME-UP paper.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Text(), "targets": tfds.features.Text(),
            "line": tfds.features.Scalar(np.int32)}),
        homepage="https://github.com/google-research/xtreme-up",
        citation="Ruder et al. 2023, XTREME-UP: A User-Centric Scarce-Data Benchmark for "
                 "Under-Represented Languages.")

  def _split_generators(self, dl_manager):
    pair = self.builder_config.pair
    paths = release_files(os.fspath(dl_manager.manual_dir), pair)
    return {split: self._generate_examples(pair, path) for split, path in paths.items()}

  def _generate_examples(self, pair, path):
    yield from examples(pair, path)


def build(data_dir: str, pair: Pair, tfds_data_dir: str | None = None) -> XtremeUp:
  """The prepared builder of `pair`, built from the release in `data_dir` on first use."""
  return release.prepare(XtremeUp(config=config(pair), data_dir=tfds_data_dir), data_dir)
