"""Registers the offline benchmark in seqio: one Task per present cell, mixtures, pretraining.

Names (with `prefix`, default "flix_offline"):
  `{prefix}.{task}.{lang}`  one Task per present cell; held-out cells have no train split.
  `{prefix}.train`          Mixture over the trained (seen) pairs, at the configured rate.
  `{prefix}.eval`           Mixture over every pair (validation/test), equal rates.
  `{prefix}.pretrain`       span corruption (or reconstruction, `pretrain_objective`) over the
                            train-split targets (optionally also inputs, unpaired) of every
                            cell (held-out cells and unseen languages included; never
                            validation/test values).
"""

from __future__ import annotations

import dataclasses

import seqio

from flix.data import metrics, pairs
from flix.data.offline import OfflineConfig, OfflineData, generate
from flix.data.pairs import PairRegistration, PairSource, PretrainTask, RateKind
from flix.data.span_corruption import register_pretraining_task
from flix.data.vocab import BYTE_VOCAB, check_vocabulary
from flix.features import FeatureSpace

OFFLINE_METRICS = (metrics.sequence_accuracy, metrics.chrf, metrics.cer)

# prefix -> (arguments, registration): registering a prefix again with the same arguments
# returns the existing registration; with other arguments it replaces it.
_REGISTERED: dict[str, tuple[tuple, PairRegistration]] = {}


def task_feature_lengths(config: OfflineConfig) -> dict[str, int]:
  """`{"inputs": ..., "targets": ...}` tokens incl. EOS, from the config (bytes under
  ByteVocabulary; a SentencePiece vocabulary needs fewer)."""
  return {"inputs": config.input_length, "targets": config.target_length}


def pretrain_feature_lengths(config: OfflineConfig, objective: str) -> dict[str, int]:
  """Corrupted texts are as long as the targets; cut spans fit in half of that, whole texts
  (reconstruction) need the full target length."""
  length = config.target_length
  return {"inputs": length, "targets": length if objective == "reconstruction" else length // 2}


def _register_pretrain(name: str, data: OfflineData, space: FeatureSpace,
                       noise_density: float, mean_span_length: float, objective: str,
                       fields: tuple[str, ...], vocabulary: seqio.Vocabulary) -> None:
  register_pretraining_task(
      name, {split: data.corpus(split, fields) for split in ("train", "validation")},
      space.n_types, noise_density, mean_span_length, objective, vocabulary)


def register_offline(config: OfflineConfig = OfflineConfig(),
                     space: FeatureSpace | None = None,
                     prefix: str = "flix_offline",
                     rate: RateKind = "equal",
                     temperature: float = 1.0,
                     maximum: int | None = None,
                     noise_density: float = 0.15,
                     mean_span_length: float = 3.0,
                     pretrain_objective: str = "span_corruption",
                     pretrain_fields: tuple[str, ...] = ("targets",),
                     vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> PairRegistration:
  """Generates the benchmark for `config` and registers its Tasks and Mixtures through
  `pairs.register_pairs`, plus its pretraining task.

  Args:
    config: the benchmark configuration.
    space: the training FeatureSpace; default `data.feature_space()`. It must not know the
      unseen languages (their pairs are encoded with the language INACTIVE).
    prefix: name prefix; registering it again with the same arguments returns the existing
      registration, with other arguments replaces it.
    rate, temperature, maximum: the training mixture's rate (see `pairs.mixing_rate`).
    noise_density, mean_span_length, pretrain_objective: the pretraining task's corruption
      and its targets (`flix.data.span_corruption.OBJECTIVES`).
    pretrain_fields: which texts of the train split form the unlabelled pretraining corpus
      ("targets", or "inputs" and "targets" as separate, unpaired texts).
    vocabulary: the VOCABULARY every task tokenizes with (`flix.data.vocab`); part of what
      identifies a cached registration, so another vocabulary registers the prefix anew.

  Returns:
    The PairRegistration; its `data` is the generated `OfflineData` and its `pretrain` the
    `{prefix}.pretrain` task with its feature lengths.
  """
  pretrain_fields = tuple(pretrain_fields)
  check_vocabulary(vocabulary)
  arguments = (config, space, rate, temperature, maximum, noise_density, mean_span_length,
               pretrain_objective, pretrain_fields, vocabulary)
  previous = pairs.cached_registration(_REGISTERED, prefix, arguments)
  if previous is not None:
    return previous
  data = generate(config)
  space = space or data.feature_space()
  if "lang" in space.names:
    leaked = sorted(set(config.unseen_langs) & set(space.type("lang").values))
    if leaked:
      raise ValueError(f"the FeatureSpace has adapters for unseen languages {leaked}; build it "
                       "with OfflineData.feature_space() so unseen languages stay unseen")
  sources = {pair: PairSource.from_examples(examples) for pair, examples in data.examples.items()}
  registration = pairs.register_pairs(
      prefix, sources, space, data.holdout, task_feature_lengths(config),
      metric_fns=lambda pair: OFFLINE_METRICS, rate=rate, temperature=temperature,
      maximum=maximum, vocabulary=vocabulary)
  pretrain = PretrainTask(f"{prefix}.pretrain", pretrain_objective,
                          pretrain_feature_lengths(config, pretrain_objective))
  registration = pairs.with_pretrain(
      registration, pretrain,
      lambda: _register_pretrain(pretrain.name, data, space, noise_density, mean_span_length,
                                 pretrain_objective, pretrain_fields, vocabulary))
  registration = dataclasses.replace(registration, data=data)
  _REGISTERED[prefix] = (arguments, registration)
  return registration
