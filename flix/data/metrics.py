"""Metrics as seqio metric_fns: `fn(targets, predictions) -> {name: value}`, values in 0..100.

Implemented after the XTREME-UP evaluation definitions: sequence accuracy (exact match),
SQuAD EM/F1 (lower-case, punctuation and English articles removed, whitespace tokens), span F1
over "LABEL: entity $$ ..." strings, chrF (sacrebleu corpus chrF), CER (character edit distance
over NFKC-normalized text, summed over the corpus, divided by the target characters), and
top-3 accuracy (one of exactly 3 predictions matches exactly).

And after the SIGMORPHON shared tasks' evaluation scripts, where a target may be a list of
accepted references (a syncretic form's analyses, a word's pronunciations): inflection and
analysis report exact-match accuracy and the mean Levenshtein distance (to the closest
reference); grapheme-to-phoneme reports word error rate and phone error rate (edit distance
over space-separated IPA segments, summed, divided by the reference segments).
"""

from __future__ import annotations

import collections
import re
import string
import unicodedata
from typing import Sequence

import numpy as np

NER_DELIMITER = " $$ "


def _text(x) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, str):
    return x
  raise TypeError(f"expected a str (or UTF-8 bytes), got {type(x).__name__}: {x!r}")


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"got {len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    raise ValueError("metrics need at least one example, got none")


def sequence_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions equal to their target."""
  _check_lengths(targets, predictions)
  return {"sequence_accuracy": 100.0 * float(np.mean(
      [_text(t) == _text(p) for t, p in zip(targets, predictions)]))}


def normalize_squad(text: str) -> str:
  """SQuAD answer normalization."""
  text = "".join(ch for ch in _text(text).lower() if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  t, p = target.split(), prediction.split()
  same = sum((collections.Counter(t) & collections.Counter(p)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(p), same / len(t)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[str | Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD exact match `em` and token F1 `f1`; a target may be a list of reference answers."""
  _check_lengths(targets, predictions)
  em, f1 = [], []
  for refs, pred in zip(targets, predictions):
    refs = [refs] if isinstance(refs, (str, bytes)) else list(refs)
    refs = [normalize_squad(r) for r in refs]
    pred = normalize_squad(pred)
    em.append(max(float(r == pred) for r in refs))
    f1.append(max(_token_f1(r, pred) for r in refs))
  return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def parse_spans(text: str) -> list[tuple[str, str]]:
  """'PER: Ada $$ LOC: Paris' -> [('PER', 'Ada'), ('LOC', 'Paris')]; malformed parts dropped."""
  spans = []
  for part in _text(text).split(NER_DELIMITER):
    fields = part.strip().split(":")
    if len(fields) == 2:
      spans.append((fields[0].strip(), fields[1].strip()))
  return spans


def span_f1(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Micro F1 over (label, entity) spans, each gold span matched at most once."""
  _check_lengths(targets, predictions)
  tp = fp = fn = 0
  for target, pred in zip(targets, predictions):
    gold = parse_spans(target)
    for span in parse_spans(pred):
      if span in gold:
        gold.remove(span)
        tp += 1
      else:
        fp += 1
    fn += len(gold)
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"span_f1": 100.0 * f1}


def chrf(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """sacrebleu corpus chrF (character 6-grams, beta 2), one reference per example."""
  import sacrebleu  # pylint: disable=import-outside-toplevel
  _check_lengths(targets, predictions)
  score = sacrebleu.corpus_chrf([_text(p) for p in predictions], [[_text(t) for t in targets]])
  return {"chrf": float(score.score)}


def edit_distance(a: Sequence, b: Sequence) -> int:
  """Levenshtein distance between two sequences, e.g. strings or lists of IPA segments (unit
  insert / delete / substitute)."""
  if len(a) < len(b):
    a, b = b, a
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def cer(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Character error rate: total edit distance / total target characters, NFKC-normalized."""
  _check_lengths(targets, predictions)
  ts = [unicodedata.normalize("NFKC", _text(t)) for t in targets]
  ps = [unicodedata.normalize("NFKC", _text(p)) for p in predictions]
  chars = sum(len(t) for t in ts)
  if chars == 0:
    raise ValueError("CER is undefined when every target is empty")
  return {"cer": 100.0 * sum(edit_distance(t, p) for t, p in zip(ts, ps)) / chars}


TOP_K = 3


def top3_accuracy(targets: Sequence[str], predictions: Sequence[Sequence[str]]) -> dict[str, float]:
  """Accuracy@3 as XTREME-UP scores autocomplete: the percentage of examples where one of
  exactly 3 predictions (e.g. the 3 beams of a beam search) equals the target.

  Each prediction is a list of TOP_K decodes; anything else (a bare string from greedy
  decoding, another count) is an error: decode the task with 3 returned decodes.
  """
  _check_lengths(targets, predictions)
  hits = []
  for i, (target, topk) in enumerate(zip(targets, predictions)):
    if isinstance(topk, (str, bytes)) or len(topk) != TOP_K:
      got = "one decoded string" if isinstance(topk, (str, bytes)) else f"{len(topk)} decodes"
      raise ValueError(f"top-3 accuracy needs exactly {TOP_K} predictions per example (decode "
                       f"with method='beam', num_beams={TOP_K}, num_samples={TOP_K}); example "
                       f"{i} has {got}: {topk!r}")
    hits.append(any(_text(p) == _text(target) for p in topk))
  return {"top3_accuracy": 100.0 * float(np.mean(hits))}


def _references(target) -> list[str]:
  refs = [target] if isinstance(target, (str, bytes)) else list(target)
  if not refs:
    raise ValueError("a target needs at least one reference, got an empty list")
  return [_text(r) for r in refs]


def exact_match_and_levenshtein(targets: Sequence[str | Sequence[str]],
                                predictions: Sequence[str]) -> dict[str, float]:
  """SIGMORPHON inflection / analysis: `exact_match` (% predictions equal to a reference) and
  `levenshtein` (mean character edit distance to the closest reference)."""
  _check_lengths(targets, predictions)
  hits, distances = [], []
  for target, prediction in zip(targets, predictions):
    refs, pred = _references(target), _text(prediction)
    hits.append(pred in refs)
    distances.append(min(edit_distance(r, pred) for r in refs))
  return {"exact_match": 100.0 * float(np.mean(hits)),
          "levenshtein": float(np.mean(distances))}


def word_and_phone_error_rates(targets: Sequence[str | Sequence[str]],
                               predictions: Sequence[str]) -> dict[str, float]:
  """SIGMORPHON grapheme-to-phoneme: `wer` (% words whose prediction equals no reference) and
  `per` (100 * summed segment edit distance to the closest reference / summed length of that
  reference in segments); also `exact_match` = 100 - wer."""
  _check_lengths(targets, predictions)
  wrong, edits, length = 0, 0, 0
  for target, prediction in zip(targets, predictions):
    refs = [r.split() for r in _references(target)]
    pred = _text(prediction).split()
    best = min(refs, key=lambda r: (edit_distance(r, pred), len(r)))
    wrong += pred not in refs
    edits += edit_distance(best, pred)
    length += len(best)
  if length == 0:
    raise ValueError("phone error rate is undefined when every reference is empty")
  wer = 100.0 * wrong / len(targets)
  return {"wer": wer, "per": 100.0 * edits / length, "exact_match": 100.0 - wer}
