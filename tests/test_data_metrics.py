"""Metrics against hand-computed values, and aggregation per task / language / split kind."""

import pytest

from flix.data import aggregation, metrics
from flix.data.pairs import HoldOut, Pair


def test_sequence_accuracy():
  assert metrics.sequence_accuracy(["a", "b", "c", "d"], ["a", "x", "c", b"d"]) == {
      "sequence_accuracy": 75.0}


def test_squad_em_and_f1():
  # "The Cat sat." normalizes to "cat sat"; "a cat" to "cat": P = 1/1, R = 1/2, F1 = 2/3.
  out = metrics.squad(["The Cat sat.", "Paris", ["No Answer", "none"]],
                      ["a cat", "paris!", "none"])
  assert out["em"] == pytest.approx(100 * 2 / 3)
  assert out["f1"] == pytest.approx(100 * (2 / 3 + 1 + 1) / 3)


def test_span_f1():
  targets = ["PER: Ada $$ LOC: Paris", "ORG: UN", ""]
  predictions = ["PER: Ada $$ LOC: London", "ORG: UN $$ PER: Bob", ""]
  # tp = 2 (Ada, UN), fp = 2 (London, Bob), fn = 1 (Paris): P = 1/2, R = 2/3, F1 = 4/7.
  assert metrics.span_f1(targets, predictions)["span_f1"] == pytest.approx(100 * 4 / 7)


def test_cer_and_edit_distance():
  assert metrics.edit_distance("kitten", "sitting") == 3
  # (1 + 1) edits over (3 + 2) target characters.
  assert metrics.cer(["abc", "aa"], ["abd", "a"])["cer"] == pytest.approx(40.0)
  with pytest.raises(ValueError, match="every target is empty"):
    metrics.cer([""], ["x"])


def test_chrf_matches_sacrebleu_and_perfect_is_100():
  assert metrics.chrf(["the cat sat"], ["the cat sat"])["chrf"] == pytest.approx(100.0)
  assert 0.0 < metrics.chrf(["the cat sat"], ["the dog sat"])["chrf"] < 100.0


def test_top3_accuracy_needs_exactly_three_predictions():
  targets = ["hello", "world", "x"]
  predictions = [["help", "hello", "hell"], ["word", "works", "wild"], ["y", "z", "x"]]
  assert metrics.top3_accuracy(targets, predictions)["top3_accuracy"] == pytest.approx(
      100 * 2 / 3)
  with pytest.raises(ValueError, match="exactly 3 predictions.*example 0 has 4 decodes"):
    metrics.top3_accuracy(["a"], [["a", "b", "c", "d"]])
  with pytest.raises(ValueError, match="example 1 has 2 decodes"):
    metrics.top3_accuracy(["a", "b"], [["a", "b", "c"], ["b", "c"]])
  # A greedy decode is one string: refused, not scored as top-1.
  with pytest.raises(ValueError, match="num_samples=3.*example 0 has one decoded string"):
    metrics.top3_accuracy(["x"], ["x"])


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.sequence_accuracy(["a", "b"], ["a"])


def test_aggregate_per_task_language_and_kind():
  holdout = HoldOut(unseen_pairs={Pair("ordinal", "fr")}, unseen_langs={"pt"})
  per_pair = {
      Pair("cardinal", "en"): {"sequence_accuracy": 90.0, "chrf": 95.0},
      Pair("cardinal", "fr"): {"sequence_accuracy": 70.0},
      Pair("ordinal", "en"): {"sequence_accuracy": 80.0},
      "prefix.ordinal.fr": {"sequence_accuracy": 20.0},  # A seqio task name.
      Pair("cardinal", "pt"): {"sequence_accuracy": 10.0, "note": "ignored"},
  }
  out = aggregation.aggregate(per_pair, holdout)
  assert out["by_task"]["cardinal"] == {"sequence_accuracy": pytest.approx(170 / 3),
                                        "chrf": 95.0, "n_pairs": 3}
  assert out["by_task"]["ordinal"]["sequence_accuracy"] == pytest.approx(50.0)
  assert out["by_lang"]["fr"]["sequence_accuracy"] == pytest.approx(45.0)
  assert out["by_lang"]["pt"] == {"sequence_accuracy": 10.0, "n_pairs": 1}
  assert list(out["by_kind"]) == ["seen_pair", "unseen_pair", "unseen_language"]
  assert out["by_kind"]["seen_pair"]["sequence_accuracy"] == pytest.approx(80.0)
  assert out["by_kind"]["seen_pair"]["n_pairs"] == 3
  assert out["by_kind"]["unseen_pair"] == {"sequence_accuracy": 20.0, "n_pairs": 1}
  assert out["by_kind"]["unseen_language"] == {"sequence_accuracy": 10.0, "n_pairs": 1}
  assert out["overall"]["all"]["sequence_accuracy"] == pytest.approx(54.0)
  with pytest.raises(ValueError, match="cannot read a pair from 'ordinal'"):
    aggregation.aggregate({"ordinal": {"x": 1.0}})
