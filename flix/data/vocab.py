"""Vocabularies (T5X's VOCABULARY gin macro) and the output features every flix task shares.

A run's vocabulary is any `seqio.Vocabulary` that follows T5's id conventions: PAD = 0 (also the
decoder start token; seqio's feature converters pad with 0) and an EOS id. flix uses two:
  ByteVocabulary (ByT5, the default): 0 PAD, 1 EOS, 2 UNK, UTF-8 byte b -> id b + 3; no files.
  SentencePieceVocabulary(path) (mT5, T5.1.1): the model file's pieces (T5's models: 0 PAD,
    1 EOS, 2 UNK), plus `extra_ids` sentinels at the top.
gin: `VOCABULARY = @seqio.ByteVocabulary()` (flix/configs/models/tiny.gin) or
`VOCABULARY = @seqio.SentencePieceVocabulary()` with
`seqio.SentencePieceVocabulary.sentencepiece_model_file = %SENTENCEPIECE_MODEL`
(flix/configs/models/mt5_small.gin); registrations, train, eval and infer take `%VOCABULARY`.

`feature_ids` is a real output feature: int32 `[n_types]` per example, one id per feature type
of the `FeatureSpace` (INACTIVE = -1 for a type that contributes nothing), never given an EOS.
"""

from __future__ import annotations

from typing import Iterable

import seqio

from flix.decoding import PAD_ID
from flix.features import FEATURE_IDS

BYTE_VOCAB = seqio.ByteVocabulary()


def describe(vocabulary: seqio.Vocabulary) -> str:
  """A readable name: `SentencePieceVocabulary(file=..., extra_ids=..., spm_md5=...)` (seqio's),
  `ByteVocabulary(extra_ids=0)`, or the class name and size."""
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return str(vocabulary)
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return f"ByteVocabulary(extra_ids={vocabulary.extra_ids})"
  return f"{type(vocabulary).__name__}(vocab_size={vocabulary.vocab_size})"


def check_vocabulary(vocabulary) -> seqio.Vocabulary:
  """`vocabulary` if it is a seqio.Vocabulary with PAD 0 and an EOS id; else a ValueError
  naming the VOCABULARY gin macro."""
  if not isinstance(vocabulary, seqio.Vocabulary):
    raise ValueError(f"VOCABULARY must be a seqio.Vocabulary (@seqio.ByteVocabulary() or "
                     f"@seqio.SentencePieceVocabulary()), got {vocabulary!r}")
  if (isinstance(vocabulary, seqio.SentencePieceVocabulary)
      and not vocabulary.sentencepiece_model_file):
    raise ValueError("VOCABULARY is @seqio.SentencePieceVocabulary() without a model file: set "
                     "SENTENCEPIECE_MODEL (models/mt5_*.gin) or "
                     "seqio.SentencePieceVocabulary.sentencepiece_model_file to the "
                     "sentencepiece.model the model was trained with")
  if vocabulary.pad_id != PAD_ID or vocabulary.eos_id is None:
    raise ValueError(f"VOCABULARY {describe(vocabulary)} has PAD id {vocabulary.pad_id} and EOS id "
                     f"{vocabulary.eos_id}; flix (like T5X) needs PAD = {PAD_ID} (the decoder "
                     "start token) and an EOS id: train the SentencePiece model with "
                     "--pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1, as T5's are")
  return vocabulary


def check_model_vocab_size(model_vocab_size: int, vocabulary: seqio.Vocabulary,
                           model_name: str = "the model") -> None:
  """ValueError (naming both sizes and the VOCABULARY macro) if the model's embedding has fewer
  rows than the vocabulary has ids."""
  check_vocabulary(vocabulary)
  if model_vocab_size < vocabulary.vocab_size:
    raise ValueError(
        f"{model_name} has vocab_size {model_vocab_size}, smaller than the {vocabulary.vocab_size} "
        f"ids of VOCABULARY {describe(vocabulary)}: ids >= {model_vocab_size} would have no embedding. "
        "Set the gin macro VOCABULARY to the vocabulary the model was built for, or give the "
        "model a vocab_size >= the vocabulary's (T5Config.vocab_size / DecoderConfig.vocab_size)")


def check_tasks_vocabulary(tasks: Iterable[seqio.Task], vocabulary: seqio.Vocabulary) -> None:
  """ValueError naming the first task whose inputs or targets are tokenized with another
  vocabulary than `vocabulary` (the run's VOCABULARY)."""
  for task in tasks:
    for key in ("inputs", "targets"):
      feature = task.output_features.get(key)
      if feature is not None and feature.vocabulary != vocabulary:
        raise ValueError(
            f"task {task.name!r} tokenizes {key!r} with {describe(feature.vocabulary)}, but the "
            f"run's VOCABULARY is {describe(vocabulary)}; register the task with the run's vocabulary "
            "(e.g. register_offline.vocabulary = %VOCABULARY) or set VOCABULARY to the task's")


def check_run_vocabulary(vocabulary, model_config,
                         mixture_or_task_name: str | None = None) -> seqio.Vocabulary:
  """What train, eval and infer check before any step: `vocabulary` follows T5's ids, the
  model (`model_config.vocab_size`) embeds all of its ids, and every task of
  `mixture_or_task_name` (a registered name; None: no tasks) tokenizes with it."""
  check_model_vocab_size(model_config.vocab_size, vocabulary,
                         f"the model ({type(model_config).__name__})")
  if mixture_or_task_name is not None:
    check_tasks_vocabulary(seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name)),
                           vocabulary)
  return vocabulary


def text_features(vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> dict[str, seqio.Feature]:
  """`inputs` and `targets` (int32 token ids `[length]`, EOS appended after trimming)."""
  check_vocabulary(vocabulary)
  return {"inputs": seqio.Feature(vocabulary, add_eos=True, dtype="int32"),
          "targets": seqio.Feature(vocabulary, add_eos=True, dtype="int32")}


def pair_output_features(n_types: int,
                         vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> dict[str, seqio.Feature]:
  """Text features plus `feature_ids` (int32 `[n_types]`, no EOS)."""
  if not isinstance(n_types, int) or n_types < 0:
    raise ValueError(f"n_types must be an int >= 0, got {n_types!r}")
  features = text_features(vocabulary)
  # The vocabulary size only bounds what a decoder of these ids could see; ids are never decoded.
  features[FEATURE_IDS] = seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False,
                                        dtype="int32", required=True)
  return features
