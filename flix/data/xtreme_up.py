"""XTREME-UP's text tasks in seqio, read from TFDS datasets built from the JSONL release.

`register_xtreme_up_experiment` (gin: `train.registration = @register_xtreme_up_experiment()`,
flix/configs/data/xtreme_up.gin) finds the release files under `data_dir`
(or $XTREME_UP_DIR; layout and official file names: `flix.data.tfds.xtreme_up`), builds one
TFDS dataset per release file stem (once, cached in the TFDS data dir) and registers, over
`seqio.TfdsDataSource` with `flix.data.pairs.register_pairs`:

  `{prefix}.{task}.{lang}`  one Task per pair, officially linearised inputs and targets;
                            transliteration has one Task per script direction,
                            `{prefix}.transliteration.{lang}:{Src}2{Tgt}`, carrying the pair's
                            features (task, lang) and scored on its own;
  `{prefix}.train`          the trained pairs, at the configured rate;
  `{prefix}.eval`           every pair (validation / test), equal rates.

The space and the hold-out come from the data (`experiment_holdout`, `experiment_space`).
Code-switched semantic parsing (`bn_cs`, `hi_cs`, `ta_cs`) is left out unless asked for, as in
the official baseline.

Evaluation follows the official code (google-research/xtreme-up, baseline/ and evaluation/):
metrics per task (METRICS: QA SQuAD EM/F1, NER span F1, semantic parsing sequence accuracy,
translation chrF, transliteration CER, autocomplete accuracy@3); autocomplete is decoded by beam
search returning its 3 beams (baseline/top3.gin) and scored over exactly those 3, every other
task greedily (`PairRegistration.decode_kwargs`); `official_scores` is evaluation/
score_system.py's aggregate, reported next to ours as `Report.official`.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from flix.data import aggregation, metrics, pairs
from flix.data.pairs import HoldOut, Pair, PairRegistration, PairSource, RateKind
from flix.data.tfds import release
from flix.data.tfds import xtreme_up as tfds_xtreme_up
from flix.data.tfds.xtreme_up import LANGUAGES, SPLITS, TASKS  # noqa: F401 (re-exported)
from flix.data.vocab import BYTE_VOCAB, check_vocabulary
from flix.features import FeatureSpace

ENV_VAR = "XTREME_UP_DIR"
XtremeUpRegistration = PairRegistration  # What register_xtreme_up_experiment returns.
DEFAULT_FEATURE_LENGTHS = {"inputs": 1024, "targets": 128}  # The baseline's (ByT5 bytes).

METRICS: dict[str, tuple[Callable, ...]] = {
    "qa_in_lang": (metrics.squad,), "qa_cross_lang": (metrics.squad,),
    "ner": (metrics.span_f1,), "semantic_parsing": (metrics.sequence_accuracy,),
    "translation": (metrics.chrf,), "transliteration": (metrics.cer,),
    "autocomplete": (metrics.top3_accuracy,)}
# Decoding that differs from the evaluator's greedy default (baseline/top3.gin: T5X beam search,
# num_decodes=3, return_all_decodes; T5X's brevity penalty alpha 0.6 is flix.decoding's too).
DECODE_KWARGS: dict[str, dict[str, Any]] = {
    "autocomplete": {"method": "beam", "num_beams": metrics.TOP_K, "num_samples": metrics.TOP_K}}

# evaluation/score_system.py: the metric each task's official score uses, the high-resource
# languages (evaluation/constants.py; every other XTREME-UP language is under-represented).
OFFICIAL_METRIC = {"qa_in_lang": "f1", "qa_cross_lang": "f1", "ner": "span_f1",
                   "semantic_parsing": "sequence_accuracy", "translation": "chrf",
                   "transliteration": "cer", "autocomplete": "top3_accuracy"}
LOWER_IS_BETTER = frozenset({"cer"})
HIGH_RESOURCE = frozenset({
    "ar", "ca", "cmn", "cs", "de", "en", "es", "fa", "fi", "fr", "hi", "hr", "hu", "it", "ja",
    "ko", "nl", "pl", "pt", "ru", "sr", "sv", "tr", "vi", "zh"})


# -- the official aggregate -------------------------------------------------------------------
def is_code_switched(lang: str) -> bool:
  return lang.endswith("_cs")


def is_official(pair: Pair) -> bool:
  """Whether XTREME-UP's score counts `pair`: an under-represented language (the code without
  its locale, `pt_br` -> `pt`, is not high-resource), not code-switched, and for
  transliteration one official direction."""
  if pair.task not in LANGUAGES or pair.lang not in LANGUAGES[pair.task]:
    return False
  if is_code_switched(pair.lang) or pair.lang.split("_")[0] in HIGH_RESOURCE:
    return False
  if pair.task == "transliteration":
    return pair.variant in tfds_xtreme_up.directions(pair.lang)
  return not pair.variant


def official_pairs(task: str) -> tuple[Pair, ...]:
  """Every pair the official score of `task` averages (e.g. 28 transliteration directions)."""
  if task == "transliteration":
    found = [Pair(task, l, d) for l in LANGUAGES[task] for d in tfds_xtreme_up.directions(l)]
  else:
    found = [Pair(task, l) for l in LANGUAGES[task]]
  return tuple(p for p in found if is_official(p))


def official_scores(per_pair: Mapping[Pair | str, Mapping[str, Any]]
                    ) -> dict[str, dict[str, float]]:
  """XTREME-UP's aggregate (evaluation/score_system.py) of per-pair metrics.

  Args:
    per_pair: `{pair or task name: {metric: value}}`; pairs `is_official` rejects are ignored.

  Returns:
    `{task: {OFFICIAL_METRIC[task]: mean over its official pairs present, "n_pairs": n,
    "n_official": pairs in the full benchmark}, ..., "overall": {"score": mean of the task
    scores with CER as 100 - CER, "n_tasks": k}}` (only the text tasks evaluated: the official
    overall also averages ASR and retrieval). Empty if no official pair is present.
  """
  values: dict[str, list[float]] = collections.defaultdict(list)
  for key, pair_metrics in per_pair.items():
    pair = aggregation.as_pair(key)
    if not is_official(pair):
      continue
    metric = OFFICIAL_METRIC[pair.task]
    if metric not in pair_metrics:
      raise ValueError(f"{key}: no {metric!r} metric for the official {pair.task} score, got "
                       f"{sorted(pair_metrics)}")
    values[pair.task].append(float(pair_metrics[metric]))
  out: dict[str, dict[str, float]] = {}
  for task in TASKS:
    if values[task]:
      out[task] = {OFFICIAL_METRIC[task]: float(np.mean(values[task])),
                   "n_pairs": len(values[task]), "n_official": len(official_pairs(task))}
  if out:
    scores = [100.0 - v[OFFICIAL_METRIC[t]] if OFFICIAL_METRIC[t] in LOWER_IS_BETTER
              else v[OFFICIAL_METRIC[t]] for t, v in out.items()]
    out["overall"] = {"score": float(np.mean(scores)), "n_tasks": len(scores)}
  return out


# -- the release ------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else $XTREME_UP_DIR; ReleaseLayoutError saying what to download."""
  chosen = data_dir or os.environ.get(ENV_VAR)
  if not chosen or not os.path.isdir(chosen):
    where = (f"the directory {chosen!r} does not exist" if chosen else
             f"no data_dir was given and ${ENV_VAR} is not set")
    raise release.ReleaseLayoutError(
        f"XTREME-UP data not found: {where}. Download the XTREME-UP data release (linked from "
        "https://github.com/google-research/xtreme-up), unpack it so that "
        f"{tfds_xtreme_up.LAYOUT}, then pass data_dir=<dir> or set {ENV_VAR}=<dir>.")
  return chosen


def find_pairs(data_dir: str, tasks: Sequence[str] = TASKS,
               langs: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
               code_switched: bool = False) -> dict[Pair, tuple[str, ...]]:
  """`{pair: splits with a file}` in the release (see `register_xtreme_up_experiment`)."""
  found = {}
  for task in tasks:
    if task not in LANGUAGES:
      raise ValueError(f"unknown XTREME-UP task {task!r}; expected one of {list(TASKS)}")
    wanted = langs.get(task) if isinstance(langs, Mapping) else langs
    wanted = (wanted,) if isinstance(wanted, str) else wanted
    if wanted is not None:
      unknown = [l for l in wanted if l not in LANGUAGES[task]]
      if unknown:
        raise ValueError(f"languages {unknown} are not XTREME-UP {task} languages "
                         f"{list(LANGUAGES[task])}")
    available = tfds_xtreme_up.discover(data_dir, task)
    missing = sorted(set(wanted or ()) - {p.lang for p in available})
    if missing:
      raise release.ReleaseLayoutError(
          f"no XTREME-UP {task} files for languages {missing} under "
          f"{os.path.join(data_dir, task)}/<split>/ (named "
          f"{tfds_xtreme_up.FILE_PATTERNS[task]})")
    for pair, splits in available.items():
      if (pair.lang in wanted if wanted is not None
          else code_switched or not is_code_switched(pair.lang)):
        found[pair] = splits
  return found


def _inputs_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]},
                     num_parallel_calls=tf.data.AUTOTUNE)


def build_sources(data_dir: str, present: Mapping[Pair, Collection[str]],
                  tfds_data_dir: str | None = None
                  ) -> tuple[dict[Pair, PairSource], dict[str, dict]]:
  """Builds (or reuses) each pair's TFDS dataset: `{pair: PairSource}` and `{pair.key: info}`.

  Raises ReleaseLayoutError when a cached dataset's splits are not the release's (it was built
  from other files; delete its directory to rebuild).
  """
  sources, info = {}, {}
  for pair, splits in present.items():
    builder = tfds_xtreme_up.build(data_dir, pair, tfds_data_dir)
    counts = {s: builder.info.splits[s].num_examples for s in SPLITS if s in builder.info.splits}
    if set(counts) != set(splits):
      raise release.ReleaseLayoutError(
          f"the TFDS dataset {builder.data_dir} holds splits {sorted(counts)} but the release "
          f"in {data_dir} has {sorted(splits)} for {pair.key}; delete that directory to rebuild")
    sources[pair] = PairSource.from_tfds(os.fspath(builder.data_dir), {s: s for s in counts},
                                         counts, [_inputs_targets])
    info[pair.key] = {"config": builder.builder_config.name, "counts": counts,
                      "files": tfds_xtreme_up.release_files(data_dir, pair)}
  return sources, info


# -- experiments: space and hold-out from the data --------------------------------------------
def _pair_list(ps: Iterable[Pair]) -> list[str]:
  return [p.key for p in sorted(ps)]


def _cells(present: Mapping[Pair, Collection[str]]) -> dict[Pair, bool]:
  """`{cell: whether one of its pairs has a train split}` (variants pooled into their cell)."""
  cells: dict[Pair, bool] = {}
  for pair, splits in present.items():
    cells[pair.cell] = cells.get(pair.cell, False) or pairs.TRAIN in splits
  return cells


def experiment_holdout(present: Mapping[Pair, Collection[str]], unseen_pairs: Iterable = (),
                       unseen_langs: Iterable[str] = ()) -> HoldOut:
  """The hold-out of an experiment on the pairs `present` (`{pair: splits}`).

  The explicit `unseen_pairs` (('task', 'lang') or 'task.lang'; a transliteration cell holds out
  all its directions) and `unseen_langs`, plus what the data leaves untrained: a language
  without a train split in any pair is an unseen language (its adapter would never train), and
  a cell without a train split whose language trains elsewhere is an unseen pair. Raises
  ValueError for a held-out pair or language the data lacks, and when the hold-out leaves a
  task or a seen language without any trained pair.
  """
  if isinstance(unseen_pairs, (str, Pair)):
    unseen_pairs = (unseen_pairs,)
  if isinstance(unseen_langs, str):
    unseen_langs = (unseen_langs,)
  cells = _cells(present)
  langs = {c.lang for c in cells}
  explicit_pairs = {pairs.as_pair(p) for p in unseen_pairs or ()}
  explicit_langs = set(unseen_langs or ())
  if explicit_pairs - set(cells):
    raise ValueError(f"unseen pairs {_pair_list(explicit_pairs - set(cells))} have no XTREME-UP "
                     f"files among the loaded pairs {_pair_list(cells)}")
  if explicit_langs - langs:
    raise ValueError(f"unseen languages {sorted(explicit_langs - langs)} have no XTREME-UP files "
                     f"among the loaded languages {sorted(langs)}")
  with_train = {c.lang for c, trains in cells.items() if trains}
  implied_langs = langs - with_train - explicit_langs
  all_langs = explicit_langs | implied_langs
  implied_pairs = {c for c, trains in cells.items()
                   if c.lang not in all_langs and c not in explicit_pairs and not trains}
  holdout = HoldOut({p for p in explicit_pairs if p.lang not in implied_langs} | implied_pairs,
                    all_langs, scheme="xtreme_up")
  holdout.check_covers(cells)
  if implied_langs or implied_pairs:
    logging.info("XTREME-UP: no train split, so held out: languages %s, pairs %s",
                 sorted(implied_langs), _pair_list(implied_pairs))
  return holdout


def experiment_space(present: Mapping[Pair, Collection[str]], holdout: HoldOut) -> FeatureSpace:
  """`task` = the trained tasks, `lang` = the trained languages (never an unseen language:
  their pairs encode the language INACTIVE), sorted, so ids do not depend on the order tasks
  were listed in."""
  trained = [c for c, trains in _cells(present).items() if trains and holdout.is_trained(c)]
  return FeatureSpace.build({"task": sorted({c.task for c in trained}),
                             "lang": sorted({c.lang for c in trained})})


# prefix -> (arguments, registration): registering a prefix again with the same arguments
# returns the existing registration; with other arguments it replaces it.
_REGISTERED: dict[str, tuple[tuple, PairRegistration]] = {}


@gin.configurable(module="flix.data")
def register_xtreme_up_experiment(
    data_dir: str | None = None,
    tasks: Sequence[str] = TASKS,
    langs: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    prefix: str = "xtreme_up",
    unseen_pairs: Iterable = (),
    unseen_langs: Iterable[str] = (),
    rate: RateKind = "equal",
    temperature: float = 1.0,
    maximum: int | None = None,
    task_feature_lengths: Mapping[str, int] | None = None,
    tfds_data_dir: str | None = None,
    code_switched: bool = False,
    vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> PairRegistration:
  """Builds XTREME-UP's TFDS datasets and registers an experiment: what flix.train / flix.eval
  need (`.space`, `.holdout`, `.train_mixture`, `.eval_mixture`, `.decode_kwargs`,
  `.official`, `.info` with each pair's TFDS config, release files and split sizes).

  Args:
    data_dir: the unpacked release (`flix.data.tfds.xtreme_up.LAYOUT`); default $XTREME_UP_DIR.
    tasks: XTREME-UP text tasks (TASKS).
    langs: languages per task (mapping) or for every task (sequence); default every language
      with files, code-switched semantic parsing only with `code_switched`.
    prefix: name prefix; registering it again with the same arguments returns the existing
      registration, with other arguments replaces it.
    unseen_pairs: cells trained nowhere, evaluated zero-shot: ('task', 'lang') or 'task.lang'.
    unseen_langs: languages with no fine-tuning at all: not in the space, so their pairs are
      encoded with the language INACTIVE. Languages without any train split join them, and
      cells without a train split join `unseen_pairs` (see `experiment_holdout`).
    rate, temperature, maximum: the training mixture's rate (`pairs.mixing_rate`): "equal",
      "examples" (proportional to train examples, capped at `maximum`) or "temperature".
    task_feature_lengths: `{"inputs": ..., "targets": ...}` recorded on the registration;
      default DEFAULT_FEATURE_LENGTHS.
    tfds_data_dir: where the TFDS datasets are built and cached (default: TFDS's).
    code_switched: also register `semantic_parsing.{bn,hi,ta}_cs` when `langs` is None (the
      official score never counts them).
    vocabulary: the VOCABULARY the tasks tokenize with (gin: %VOCABULARY); part of what
      identifies a cached registration.
  """
  data_dir = os.path.abspath(resolve_data_dir(data_dir))
  tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
  if not tasks:
    raise ValueError(f"no XTREME-UP tasks given; expected a non-empty subset of {list(TASKS)}")
  if isinstance(unseen_pairs, (str, Pair)):
    unseen_pairs = (unseen_pairs,)
  unseen_pairs = frozenset(pairs.as_pair(p) for p in unseen_pairs or ())
  unseen_langs = frozenset((unseen_langs,) if isinstance(unseen_langs, str)
                           else unseen_langs or ())
  pairs.mixing_rate(rate, temperature, maximum)  # Validates before anything is read.
  lengths = dict(task_feature_lengths or DEFAULT_FEATURE_LENGTHS)
  arguments = (data_dir, tasks, pairs.frozen(langs), unseen_pairs, unseen_langs, rate,
               temperature, maximum, pairs.frozen(lengths), tfds_data_dir, code_switched,
               check_vocabulary(vocabulary))
  previous = pairs.cached_registration(_REGISTERED, prefix, arguments)
  if previous is not None:
    return previous

  present = find_pairs(data_dir, tasks, langs, code_switched)
  holdout = experiment_holdout(present, unseen_pairs, unseen_langs)
  space = experiment_space(present, holdout)
  sources, info = build_sources(data_dir, present, tfds_data_dir)
  registration = pairs.register_pairs(
      prefix, sources, space, holdout, lengths, metric_fns=lambda pair: METRICS[pair.task],
      rate=rate, temperature=temperature, maximum=maximum, info=info,
      decode_kwargs=lambda pair: DECODE_KWARGS.get(pair.task), official=official_scores,
      vocabulary=vocabulary)
  _REGISTERED[prefix] = (arguments, registration)
  kinds = {k: len(registration.tasks_of_kind(k)) for k in pairs.SPLIT_KINDS}
  logging.info("XTREME-UP %r: %d pairs (%s) from %s; space: tasks %s, languages %s", prefix,
               len(registration.tasks), kinds, data_dir, list(space.type("task").values),
               list(space.type("lang").values))
  return registration
