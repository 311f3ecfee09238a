"""Inference on raw inputs with their features: JSONL in, JSONL predictions out.

Each input line is `{"inputs": str, "features": {"task": ..., "lang": ...}}` (extra fields are
copied through). Features are encoded with the checkpoint's saved FeatureSpace; values it does
not know are an error, or (unknown="drop") switch that feature off, the zero-shot path for an
unseen language. Inputs are tokenized as the tasks tokenize them (bytes + EOS) and put into the
model family's batch (`BaseModel.inputs_batch`): encoder tokens for a T5, the prefix-LM prompt
(start token, inputs, EOS) for a decoder-only model.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping, Sequence

import gin
import jax
import numpy as np

from flix import decoding
from flix.data.vocab import BYTE_VOCAB, FEATURE_IDS
from flix.features import INACTIVE, UnknownPolicy
from flix.models.model import BaseModel, make_model


def read_requests(path: str) -> list[dict[str, Any]]:
  """Parsed JSONL requests; a bad line raises naming file and line."""
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
      requests.append(record)
  return requests


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def tokenize(texts: Sequence[str], length: int, batch_size: int) -> np.ndarray:
  """Byte ids + EOS, truncated/padded to `length`, in `[batch_size, length]` (PAD rows added)."""
  out = np.zeros((batch_size, length), np.int32)
  for i, text in enumerate(texts):
    ids = list(BYTE_VOCAB.encode(text))[:length - 1] + [decoding.EOS_ID]
    out[i, :len(ids)] = ids
  return out


def predict(model: BaseModel, params, requests: Sequence[Mapping[str, Any]], *, input_length: int,
            max_length: int, batch_size: int = 32, unknown: UnknownPolicy = "error",
            decode_kwargs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
  """Decodes every request; returns the requests with `prediction` and `score` added."""
  space = model.flix.space if model.n_types else None
  kwargs = dict(decode_kwargs or {})
  rng = kwargs.pop("rng", None)  # Sampling: folded with the batch index.
  options = decoding.DecodeOptions(max_length=max_length, **kwargs)
  results = []
  for index, chunk in enumerate(_batches(list(requests), batch_size)):
    # The family's model batch: encoder tokens (T5), or the prefix-LM prompt (decoder-only).
    batch = model.inputs_batch(tokenize([r["inputs"] for r in chunk], input_length, batch_size))
    if space is not None:
      rows = space.encode_batch([r.get("features", {}) for r in chunk], unknown)
      batch[FEATURE_IDS] = np.full((batch_size, space.n_types), INACTIVE, np.int32)
      batch[FEATURE_IDS][:len(chunk)] = rows
    out = model.predict_batch(params, batch, options,
                              None if rng is None else jax.random.fold_in(rng, index))
    tokens_out, scores = np.asarray(out.tokens), np.asarray(out.scores)
    for i, request in enumerate(chunk):
      seq = [int(t) for t in tokens_out[i] if t > decoding.EOS_ID]
      results.append({**request, "prediction": BYTE_VOCAB.decode(seq),
                      "score": float(scores[i])})
  return results


@gin.configurable
def infer_file(*, checkpoint_path: str = gin.REQUIRED, input_file: str = gin.REQUIRED,
               output_file: str = gin.REQUIRED,
               task_feature_lengths: Mapping[str, int] = gin.REQUIRED, batch_size: int = 32,
               unknown_features: str = "error",
               decode_kwargs: Mapping[str, Any] | None = None) -> list[dict]:
  """Decodes every request of `input_file` into `output_file` (written atomically)."""
  from flix import checkpoints
  model_config, flix, params = checkpoints.load_model(checkpoint_path)
  requests = read_requests(input_file)
  results = predict(make_model(model_config, flix), params, requests,
                              input_length=task_feature_lengths["inputs"],
                              max_length=task_feature_lengths["targets"], batch_size=batch_size,
                              unknown=unknown_features, decode_kwargs=decode_kwargs)
  tmp = f"{output_file}.tmp"
  os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
  with open(tmp, "w", encoding="utf-8") as f:
    for r in results:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(tmp, output_file)
  print(f"wrote {len(results)} predictions to {output_file}")
  return results

