"""The morphology grid in seqio: inflect / analyze / g2p x languages, from the TFDS datasets.

`register_morphology_experiment` (gin: `experiments/morph_{flix,lora,eval}.gin`) builds (once,
cached in the TFDS data dir) the `flix_morphology` dataset of every language from the release
files in `morph_dir` (`sigmorphon2023/{lang}.{trn,dev,tst}`, `wikipron/{lang}_*.tsv`), and
registers one seqio Task per (task, language) cell over `seqio.TfdsDataSource`:

  `{prefix}.{task}.{lang}`  inputs "{task} {lang}: {source}" (prefix 'task_lang'), targets the
                            first reference, plus `references` for the metrics;
  `{prefix}.train`          the trained (seen) cells, at the configured rate;
  `{prefix}.eval`           every cell (validation / test), equal rates.

Hold-outs as for the offline benchmark (`flix.data.pairs.HoldOutSpec`): none, diagonal, a
seeded random draw that keeps every task and language trained in >= 2 cells, or an explicit
list, plus unseen languages (no adapter; their cells are evaluation-only). Derived feature types
(the language's family and script, `flix.data.languages`) are added with `derived`.

Lengths: sources and targets of at most 56 UTF-8 bytes are kept (0.16% of all lines are longer,
most of them Georgian; `MorphologyConfig`), so TASK_FEATURE_LENGTHS is 56 + the longest prefix
+ EOS for inputs and 56 + EOS for targets, rounded up to a multiple of 8 (72 / 64).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from flix.data import languages, metrics, morphology, pairs, span_corruption
from flix.data.pairs import (HoldOutSpec, Pair, PairRegistration, PairSource, PretrainTask,
                             RateKind)
from flix.data.tfds import morphology as tfds_morphology
from flix.data.tfds import release, sigmorphon2023, wikipron
from flix.data.vocab import BYTE_VOCAB, check_vocabulary
from flix.features import FeatureSpace

PREFIXES = ("none", "task", "task_lang")
METRICS = {"inflect": (metrics.exact_match_and_levenshtein,),
           "analyze": (metrics.exact_match_and_levenshtein,),
           "g2p": (metrics.word_and_phone_error_rates,)}

# prefix -> (arguments, registration), as in flix.data.offline_tasks.
_REGISTERED: dict[str, tuple[tuple, PairRegistration]] = {}


def input_prefix(kind: str, pair: Pair) -> str:
  if kind not in PREFIXES:
    raise ValueError(f"prefix {kind!r} unknown; expected one of {PREFIXES}")
  return {"none": "", "task": f"{pair.task}: ", "task_lang": f"{pair.task} {pair.lang}: "}[kind]


def references_postprocessor(output, example=None, is_target: bool = False):
  """Targets: the example's list of accepted references; predictions: the decoded text."""
  if is_target and example is not None and "references" in example:
    return [r.decode("utf-8") if isinstance(r, bytes) else str(r)
            for r in np.asarray(example["references"]).tolist()]
  return output


def _formatter(prefix: str):
  def format_examples(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda ex: {"inputs": tf.strings.join([prefix, ex["source"]]),
                                   "targets": ex["target"], "references": ex["references"]},
                       num_parallel_calls=tf.data.AUTOTUNE)
  return format_examples


def _wikipron_file(morph_dir: str, lang: str, chosen: Mapping[str, str]) -> str | None:
  if lang in chosen:
    return chosen[lang]
  files = wikipron.files_for(os.path.join(morph_dir, tfds_morphology.WIKIPRON_DIR), lang)
  if len(files) > 1:  # E.g. broad and narrow transcriptions: prefer broad.
    broad = [f for f in files if f.endswith("_broad")]
    logging.info("WikiPron files for %s: %s; using %s (set wikipron_files to choose)", lang,
                 files, (broad or files)[0])
    files = tuple(broad or files)
  return files[0] if files else None


def build_language(morph_dir: str, lang: str, wikipron_file: str | None,
                   config: morphology.MorphologyConfig, data_dir: str | None):
  """The prepared `flix_morphology` builder of `lang` (built on first use)."""
  builder = tfds_morphology.FlixMorphology(
      config=tfds_morphology.config(lang, wikipron_file, config), data_dir=data_dir)
  return release.prepare(builder, morph_dir)


def corpus(builders: Mapping[str, Any], present: Sequence[Pair], split: str) -> list[str]:
  """Sources and targets of `split` in every cell, each text on its own, deduplicated."""
  texts = {}
  for pair in present:
    rows = tfds.as_numpy(builders[pair.lang].as_dataset(split=f"{pair.task}_{split}",
                                                        shuffle_files=False))
    for row in rows:
      for key in ("source", "target"):
        texts.setdefault(row[key].decode("utf-8"), None)
  return list(texts)


def pretrain_feature_lengths(config: morphology.MorphologyConfig) -> dict[str, int]:
  """Reconstruction of a whole text: inputs and targets as long as the longest text + EOS."""
  length = 8 * math.ceil((max(config.max_source_bytes, config.max_target_bytes) + 1) / 8)
  return {"inputs": length, "targets": length}


def feature_lengths(config: morphology.MorphologyConfig, tasks: Sequence[str],
                    langs: Sequence[str], prefix: str) -> dict[str, int]:
  longest = max(len(input_prefix(prefix, Pair(t, l)).encode()) for t in tasks for l in langs)
  round8 = lambda n: 8 * math.ceil(n / 8)
  return {"inputs": round8(config.max_source_bytes + longest + 1),
          "targets": round8(config.max_target_bytes + 1)}


@gin.configurable(module="flix.data")
def register_morphology_experiment(
    morph_dir: str = gin.REQUIRED,
    langs: Sequence[str] | None = None,
    tasks: Sequence[str] = morphology.TASKS,
    holdout: HoldOutSpec = HoldOutSpec(),
    derived: Sequence[str] = (),
    prefix: str = "task_lang",
    name: str = "morph",
    rate: RateKind = "equal",
    temperature: float = 1.0,
    maximum: int | None = None,
    config: morphology.MorphologyConfig = morphology.MorphologyConfig(),
    tfds_data_dir: str | None = None,
    wikipron_files: Mapping[str, str] | None = None,
    pretrain_objective: str | None = None,
    vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> PairRegistration:
  """Builds the languages' datasets and registers the grid; what flix.train / flix.eval need.

  Args:
    morph_dir: release files in the layout of `../shared/data/morphology` (`sigmorphon2023/`,
      `wikipron/`); MORPH_DIR in gin.
    langs: ISO 639-3 codes; None: every language with SIGMORPHON files in morph_dir
      (MORPH_LANGS). A language without a WikiPron file has no g2p cell.
    tasks: from inflect, analyze, g2p (MORPH_TASKS).
    holdout: the cells fine-tuning never sees: the scheme, unseen pairs and languages, and the
      random scheme's seed and size (`flix.data.pairs.HoldOutSpec`; gin `@HoldOutSpec()`).
    derived: language-table fields to add as derived feature types ("family", "script"); a
      language missing from the table gets none (logged). The method gives them ranks
      (`AdapterSettings.feature_ranks`, gin FEATURE_RANKS).
    prefix: input prefix, "none", "task" or "task_lang" (baselines without feature adapters
      need it to know the task and language).
    name: the seqio name prefix.
    rate, temperature, maximum: the training mixture's rate (`pairs.mixing_rate`).
    config: byte budgets and the g2p split (`MorphologyConfig`).
    tfds_data_dir: where TFDS datasets are built and cached (default: TFDS's).
    wikipron_files: `{lang: file name without .tsv}` where a language has several.
    pretrain_objective: also register `{name}.pretrain` (the registration's `pretrain`),
      `flix.data.span_corruption` with this objective over the train-split sources and targets
      of every cell (unpaired texts, held-out cells included, never validation or test);
      lengths `pretrain_feature_lengths`.
    vocabulary: the VOCABULARY the tasks tokenize with (gin: %VOCABULARY); part of what
      identifies a cached registration. `config`'s budgets count bytes whatever it is.
  """
  morph_dir = os.path.abspath(morph_dir)
  tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
  unknown_tasks = sorted(set(tasks) - set(morphology.TASKS))
  if unknown_tasks or not tasks:
    raise ValueError(f"unknown morphology tasks {unknown_tasks or list(tasks)}; expected a "
                     f"non-empty subset of {list(morphology.TASKS)}")
  input_prefix(prefix, Pair("inflect", "eng"))  # Validates the prefix kind.
  pairs.mixing_rate(rate, temperature, maximum)
  if not isinstance(holdout, HoldOutSpec):
    raise ValueError(f"holdout must be a HoldOutSpec (e.g. HoldOutSpec('random', seed=0); gin: "
                     f"@HoldOutSpec()), got {holdout!r}")
  sig_dir = os.path.join(morph_dir, tfds_morphology.SIGMORPHON_DIR)
  available = sigmorphon2023.languages(sig_dir)
  if langs is None:
    langs = available
    if not langs:
      raise release.ReleaseLayoutError(
          f"no language has SIGMORPHON files under {sig_dir}; expected "
          f"{sigmorphon2023.LAYOUT} per language")
  langs = (langs,) if isinstance(langs, str) else tuple(langs)
  missing = [l for l in langs if l not in available]
  if missing:
    raise release.ReleaseLayoutError(
        f"languages {missing} have no SIGMORPHON files in {sig_dir}; expected "
        f"{sigmorphon2023.LAYOUT.format(lang=missing[0])} (found: {list(available)})")
  chosen = dict(wikipron_files or {})
  arguments = (morph_dir, langs, tasks, holdout, tuple(derived),
               prefix, rate, temperature, maximum, config, tfds_data_dir,
               pairs.frozen(chosen), pretrain_objective, check_vocabulary(vocabulary))
  previous = pairs.cached_registration(_REGISTERED, name, arguments)
  if previous is not None:
    return previous

  builders, info = {}, {}
  for lang in langs:
    wiki = _wikipron_file(morph_dir, lang, chosen) if "g2p" in tasks else None
    builders[lang] = build_language(morph_dir, lang, wiki, config, tfds_data_dir)
  present = [Pair(t, l) for t in tasks for l in langs
             if f"{t}_train" in builders[l].info.splits]
  hold = holdout.make(tasks, langs, present)
  trained = [p for p in present if hold.is_trained(p)]
  space = FeatureSpace.build(
      {"task": [t for t in tasks if any(p.task == t for p in trained)],
       "lang": sorted({p.lang for p in trained})},
      derived=languages.derived_features(langs, derived) if derived else None)
  sources = {}
  for pair in present:
    builder = builders[pair.lang]
    split_names = {s: f"{pair.task}_{s}" for s in morphology.SPLITS}
    sources[pair] = PairSource.from_tfds(
        os.fspath(builder.data_dir), split_names,
        {s: builder.info.splits[n].num_examples for s, n in split_names.items()},
        [_formatter(input_prefix(prefix, pair))])
    metadata = builder.info.metadata
    info[f"{pair.task}.{pair.lang}"] = {
        "counts": metadata["counts"][pair.task], "dropped": metadata["dropped"][pair.task],
        "wikipron_file": metadata["wikipron_file"] if pair.task == "g2p" else None}
  registration = pairs.register_pairs(
      name, sources, space, hold, feature_lengths(config, tasks, langs, prefix),
      metric_fns=lambda pair: METRICS[pair.task], postprocess_fn=references_postprocessor,
      rate=rate, temperature=temperature, maximum=maximum, info=info, vocabulary=vocabulary)
  if pretrain_objective is not None:
    pretrain = PretrainTask(f"{name}.pretrain", pretrain_objective,
                            pretrain_feature_lengths(config))
    registration = pairs.with_pretrain(
        registration, pretrain, lambda: span_corruption.register_pretraining_task(
            pretrain.name, {s: corpus(builders, present, s) for s in ("train", "validation")},
            space.n_types, objective=pretrain_objective, vocabulary=vocabulary))
  _REGISTERED[name] = (arguments, registration)
  kinds = {k: len(registration.tasks_of_kind(k)) for k in pairs.SPLIT_KINDS}
  logging.info("morphology %r: %d cells %s from %s; space %s", name, len(present), kinds,
               morph_dir, {t.name: len(t.values) for t in space.types})
  return registration
