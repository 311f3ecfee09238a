"""T5-style span corruption for pretraining on unlabelled text (any VOCABULARY).

A fraction `noise_density` of a text's tokens, in `n_spans ~ noise / mean_span_length` spans,
is cut out. inputs = kept tokens with one sentinel per cut span. Two objectives (T5 paper,
section 3.3) differ in the targets:
  "span_corruption": each sentinel followed by the tokens it replaced (T5's default);
  "reconstruction":  the whole original text (the "replace spans, reconstruct the original"
                     variant, like BART's text infilling): the decoder also learns to copy
                     its input in order, which a small base trained for minutes otherwise
                     lacks.
Sentinels count down from the vocabulary's last id, `vocab_size - 1`, as in seqio's
span_corruption: under ByteVocabulary ids 258..248 are bytes 0xFF..0xF5, which never occur in
UTF-8 text; a SentencePiece vocabulary needs `extra_ids` (or a model file with sentinel pieces
at the top, as mT5's). At most MAX_SPANS spans are used.
"""

from __future__ import annotations

import numpy as np
import seqio
import tensorflow as tf

from flix.data import pairs
from flix.data.vocab import BYTE_VOCAB, FEATURE_IDS, pair_output_features

FIRST_SENTINEL = BYTE_VOCAB.vocab_size - 1  # 258 under ByteVocabulary.
MAX_SPANS = 11
OBJECTIVES = ("span_corruption", "reconstruction")


def _segment(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
  """Random split of `total` items into `n` positive lengths `[n]`."""
  cuts = np.sort(rng.choice(np.arange(1, total), size=n - 1, replace=False)) if n > 1 else []
  return np.diff(np.concatenate([[0], cuts, [total]])).astype(np.int64)


def span_corrupt(tokens: np.ndarray, rng: np.random.Generator, noise_density: float = 0.15,
                 mean_span_length: float = 3.0, objective: str = "span_corruption",
                 first_sentinel: int = FIRST_SENTINEL) -> tuple[np.ndarray, np.ndarray]:
  """Corrupts int tokens `[n]` (no EOS) into (inputs `[m]`, targets `[k]`), int32; sentinels
  count down from `first_sentinel` (the vocabulary's `vocab_size - 1`)."""
  tokens = np.asarray(tokens, np.int32)
  n = tokens.shape[0]
  if n < 2:
    return tokens, (tokens if objective == "reconstruction" else np.zeros((0,), np.int32))
  n_noise = int(np.clip(round(n * noise_density), 1, n - 1))
  n_spans = int(np.clip(round(n_noise / mean_span_length), 1, min(MAX_SPANS, n_noise, n - n_noise)))
  noise = _segment(n_noise, n_spans, rng)
  keep = _segment(n - n_noise, n_spans, rng)
  inputs, targets, pos = [], [], 0
  for i in range(n_spans):
    sentinel = first_sentinel - i
    inputs.extend(tokens[pos:pos + keep[i]])
    pos += keep[i]
    inputs.append(sentinel)
    targets.append(sentinel)
    targets.extend(tokens[pos:pos + noise[i]])
    pos += noise[i]
  if objective == "reconstruction":
    targets = tokens
  return np.asarray(inputs, np.int32), np.asarray(targets, np.int32)


def span_corruption(noise_density: float = 0.15, mean_span_length: float = 3.0,
                    objective: str = "span_corruption",
                    vocabulary: seqio.Vocabulary = BYTE_VOCAB):
  """A seqio preprocessor: tokenized `targets` -> corrupted `inputs` and `targets` (`objective`).

  Runs after tokenization and before `append_eos_after_trim`; per-example randomness comes from
  seqio's seeds, so a seeded `get_dataset` is deterministic.
  """
  if not 0.0 < noise_density < 1.0:
    raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
  if not mean_span_length >= 1.0:
    raise ValueError(f"mean_span_length must be >= 1, got {mean_span_length}")
  if objective not in OBJECTIVES:
    raise ValueError(f"unknown pretraining objective {objective!r}; expected one of {OBJECTIVES}")

  def corrupt_np(tokens, seed):
    rng = np.random.default_rng(np.asarray(seed, np.int64) & 0xFFFFFFFF)
    return span_corrupt(tokens, rng, noise_density, mean_span_length, objective,
                        vocabulary.vocab_size - 1)

  @seqio.map_over_dataset(num_seeds=1)
  def corrupt(features, seed):
    inputs, targets = tf.numpy_function(corrupt_np, [features["targets"], seed],
                                        [tf.int32, tf.int32], stateful=False)
    inputs.set_shape([None])
    targets.set_shape([None])
    return {**features, "inputs": inputs, "targets": targets}

  return corrupt


def register_pretraining_task(name: str, texts: dict[str, list[str]], n_types: int,
                              noise_density: float = 0.15, mean_span_length: float = 3.0,
                              objective: str = "span_corruption",
                              vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> None:
  """Registers seqio Task `name` over unlabelled `texts` (`{split: [str]}`) tokenized with
  `vocabulary`, corrupted by `span_corruption`; every example's feature ids are INACTIVE (a base
  model has no adapters)."""
  ids = tf.constant(np.full((n_types,), -1, np.int32))
  seqio.TaskRegistry.add(
      name,
      source=pairs.examples_source({s: [{"targets": t} for t in v] for s, v in texts.items()},
                                   keys=("targets",)),
      output_features=pair_output_features(n_types, vocabulary),
      preprocessors=[
          seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
          span_corruption(noise_density, mean_span_length, objective, vocabulary),
          lambda ds: ds.map(lambda ex: {**ex, FEATURE_IDS: ids}),
          seqio.preprocessors.append_eos_after_trim],
      metric_fns=[],
      shuffle_buffer_size=max(1, len(texts.get("train", ()))))
