"""Inference on raw inputs with their features: JSONL in, JSONL predictions out.

Each input line is `{"inputs": str, "features": {"task": ..., "lang": ...}}` (extra fields are
copied through). Features are encoded with the checkpoint's saved FeatureSpace; values it does
not know are an error, or (unknown="drop") switch that feature off, the zero-shot path for an
unseen language. Inputs are tokenized as the tasks tokenize them (the run's VOCABULARY, bytes
by default, + its EOS) and put into the
model family's batch (`BaseModel.inputs_batch`): encoder tokens for a T5, the prefix-LM prompt
(start token, inputs, EOS) for a decoder-only model.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterator, Mapping, Sequence

import gin
import jax
import numpy as np
import seqio

from flix import decoding, files
from flix.checks import check_counts
from flix.data.vocab import BYTE_VOCAB, FEATURE_IDS, check_run_vocabulary
from flix.features import INACTIVE, UnknownPolicy
from flix.models.model import BaseModel, make_model


TRUNCATION = ("mark", "error")


def read_requests(path: str) -> list[dict[str, Any]]:
  """Parsed JSONL requests; a bad line raises naming file and line."""
  return [record for _, record in read_numbered_requests(path)]


def read_numbered_requests(path: str) -> list[tuple[int, dict[str, Any]]]:
  """(line number, request) pairs of a JSONL file; a bad line raises naming file and line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"inference input file {path} does not exist")
  requests = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
      if not isinstance(record, dict) or not isinstance(record.get("inputs"), str):
        raise ValueError(f"{path}:{line_no}: expected an object with a string 'inputs' field")
      if not isinstance(record.get("features", {}), dict):
        raise ValueError(f"{path}:{line_no}: 'features' must be an object like "
                         '{"task": "ordinal", "lang": "fr"}')
      requests.append((line_no, record))
  return requests


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def n_input_tokens(text: str, vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> int:
  """Encoder tokens of `text` before truncation: its tokens under `vocabulary` plus EOS."""
  return len(vocabulary.encode(text)) + 1


def check_lengths(numbered: Sequence[tuple[int, Mapping[str, Any]]], length: int,
                  path: str, vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> None:
  """Refuses the first request longer than `length` encoder tokens, naming file and line."""
  unit = "bytes" if isinstance(vocabulary, seqio.ByteVocabulary) else "tokens"
  for line_no, request in numbered:
    n = n_input_tokens(request["inputs"], vocabulary)
    if n > length:
      raise ValueError(
          f"{path}:{line_no}: input of {n} tokens ({n - 1} {unit} + EOS) is longer than "
          f"TASK_FEATURE_LENGTHS['inputs'] = {length}; raise it, shorten the input, or set "
          f"TRUNCATION = 'mark' to decode its first {length - 1} {unit}")


def tokenize(texts: Sequence[str], length: int, batch_size: int,
             vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> np.ndarray:
  """`vocabulary`'s ids + EOS, truncated/padded (PAD 0) to `length`, in `[batch_size, length]`
  (PAD rows added)."""
  out = np.zeros((batch_size, length), np.int32)
  for i, text in enumerate(texts):
    ids = list(vocabulary.encode(text))[:length - 1] + [vocabulary.eos_id]
    out[i, :len(ids)] = ids
  return out


def predict(model: BaseModel, params, requests: Sequence[Mapping[str, Any]], *, input_length: int,
            max_length: int, batch_size: int = 32, unknown: UnknownPolicy = "error",
            decode_kwargs: Mapping[str, Any] | None = None,
            vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> list[dict[str, Any]]:
  """Decodes every request (tokenized with, and decoded back to text by, `vocabulary`, whose
  EOS ends a decode); returns the requests with `prediction`, `score` and `truncated`
  (whether the input was cut to `input_length` tokens) added."""
  space = model.flix.space if model.n_types else None
  kwargs = dict(decode_kwargs or {})
  rng = kwargs.pop("rng", None)  # Sampling: folded with the batch index.
  options = decoding.DecodeOptions(**{"max_length": max_length, "eos_id": vocabulary.eos_id,
                                      **kwargs})
  results = []
  for index, chunk in enumerate(_batches(list(requests), batch_size)):
    # The family's model batch: encoder tokens (T5), or the prefix-LM prompt (decoder-only).
    batch = model.inputs_batch(tokenize([r["inputs"] for r in chunk], input_length, batch_size,
                                        vocabulary))
    if space is not None:
      rows = space.encode_batch([r.get("features", {}) for r in chunk], unknown)
      batch[FEATURE_IDS] = np.full((batch_size, space.n_types), INACTIVE, np.int32)
      batch[FEATURE_IDS][:len(chunk)] = rows
    out = model.predict_batch(params, batch, options,
                              None if rng is None else jax.random.fold_in(rng, index))
    tokens_out, scores = np.asarray(out.tokens), np.asarray(out.scores)
    for i, request in enumerate(chunk):
      # seqio's decode stops at EOS (PAD fills the rest), as evaluation decodes.
      results.append({**request, "prediction": vocabulary.decode(tokens_out[i].tolist()),
                      "score": float(scores[i]),
                      "truncated": n_input_tokens(request["inputs"], vocabulary) > input_length})
  return results


@gin.configurable
def infer_file(*, checkpoint_path: str = gin.REQUIRED, input_file: str = gin.REQUIRED,
               output_file: str = gin.REQUIRED,
               task_feature_lengths: Mapping[str, int] = gin.REQUIRED, batch_size: int = 32,
               unknown_features: str = "error", truncation: str = "mark",
               decode_kwargs: Mapping[str, Any] | None = None,
               mixture_or_task_module: str | Sequence[str] | None = None,
               vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> list[dict]:
  """Decodes every request of `input_file` into `output_file` (written atomically).

  An input longer than `task_feature_lengths['inputs']` tokens (bytes + EOS) is cut to it (as
  T5X does); truncation="mark" flags its record `"truncated": true` and counts it in the log,
  "error" refuses the file before anything is decoded or written.
  `mixture_or_task_module` (T5X's MIXTURE_OR_TASK_MODULE): module name(s) imported first, as
  in train and eval, so one set of macros serves all three (requests come from `input_file`,
  not from a seqio task, so nothing here looks a task up). `vocabulary` (VOCABULARY): what the
  checkpoint was trained with; the model must cover it (checked before anything is decoded).
  """
  from flix import checkpoints
  from flix.data.pairs import import_task_modules
  import_task_modules(mixture_or_task_module)
  check_counts(BATCH_SIZE=batch_size, **{
      f"TASK_FEATURE_LENGTHS[{k!r}]": task_feature_lengths.get(k) for k in ("inputs", "targets")})
  if truncation not in TRUNCATION:
    raise ValueError(f"unknown truncation {truncation!r}; expected one of {TRUNCATION}")
  numbered = read_numbered_requests(input_file)
  length = task_feature_lengths["inputs"]
  if truncation == "error":
    check_lengths(numbered, length, input_file, vocabulary)
  requests = [record for _, record in numbered]
  model_config, flix, params = checkpoints.load_model(checkpoint_path)
  check_run_vocabulary(vocabulary, model_config)
  results = predict(make_model(model_config, flix), params, requests,
                              input_length=length,
                              max_length=task_feature_lengths["targets"], batch_size=batch_size,
                              unknown=unknown_features, decode_kwargs=decode_kwargs,
                              vocabulary=vocabulary)
  files.write_jsonl(output_file, results)
  truncated = sum(r["truncated"] for r in results)
  if truncated:
    print(f"warning: {truncated} of {len(results)} inputs were longer than "
          f"TASK_FEATURE_LENGTHS['inputs'] = {length} tokens and were truncated (their records "
          "say \"truncated\": true; TRUNCATION = 'error' refuses them)", file=sys.stderr)
  print(f"wrote {len(results)} predictions to {output_file} ({truncated} truncated)")
  return results

