"""Evaluation over the pairs of a tiny offline registration: predictions, metrics, reports."""

import json
import uuid

import numpy as np
import pytest
import seqio

from flix import decoding, evaluation
from flix.config import FlixConfig
from flix.data import BYTE_VOCAB, FlixEncDecFeatureConverter, OfflineConfig, register_offline
from flix.data.pairs import SPLIT_KINDS
from flix.features import FeatureSpace
from flix.models.model import EncoderDecoderModel
from flix.models.t5 import T5
import tiny

# 2 tasks x (2 seen + 1 unseen language): the diagonal hold-out gives every split kind.
CONFIG = OfflineConfig(tasks=("cardinal", "ordinal"), langs=("en", "fr", "pt"), n_train=4,
                       n_validation=3, n_test=3, input_length=16, target_length=48,
                       unseen_langs=("pt",), seed=1)
BATCH = 2  # 3 validation examples per pair: one full batch and one padded batch.
METRICS = {"sequence_accuracy", "chrf", "cer"}


@pytest.fixture(scope="module")
def reg():
  registration = register_offline(CONFIG, prefix=f"t_eval_{uuid.uuid4().hex[:8]}")
  yield registration
  registration.unregister()


@pytest.fixture(scope="module")
def evaluator(reg):
  return evaluation.PairEvaluator(reg.eval_mixture, feature_lengths=reg.task_feature_lengths,
                                  batch_size=BATCH, holdout=reg.holdout)


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_tiny_model_predictions_metrics_and_reports(reg, evaluator, tmp_path):
  assert {t.kind for t in reg.tasks} == set(SPLIT_KINDS)
  model = EncoderDecoderModel(T5(tiny.t5_config(vocab_size=260), FlixConfig(reg.space, ranks=4)))
  params = tiny.random_params(model.module)
  report = evaluator.evaluate(model, params, out_dir=str(tmp_path), step=7)

  assert set(report.per_pair) == {t.name for t in reg.tasks}
  for task in reg.tasks:
    assert set(report.per_pair[task.name]) == METRICS, task.name
    assert report.pairs[task.name]["kind"] == task.kind
    examples = reg.data.examples[task.pair]["validation"]
    lines = _lines(tmp_path / evaluation.PREDICTIONS_DIR / f"{task.name}.jsonl")
    assert len(lines) == len(examples) == report.pairs[task.name]["n_examples"]
    for line, ex in zip(lines, examples):  # Dataset order, padded rows dropped.
      assert (line["inputs"], line["target"]) == (ex["inputs"], ex["targets"])
      assert line["features"] == task.pair.features
      assert line["feature_ids"] == list(task.feature_ids)
      assert isinstance(line["prediction"], str) and isinstance(line["score"], float)
  assert set(report.by_kind) == set(SPLIT_KINDS)
  for kind in SPLIT_KINDS:
    assert report.by_kind[kind]["n_pairs"] == len(reg.tasks_of_kind(kind))
    assert METRICS <= set(report.by_kind[kind])
  assert set(report.by_task) == set(CONFIG.tasks) and set(report.by_lang) == set(CONFIG.langs)
  assert report.overall["all"]["n_pairs"] == len(reg.tasks)
  # A random model is far from the targets.
  assert report.overall["all"]["sequence_accuracy"] == 0.0 and report.overall["all"]["cer"] > 50
  saved = json.loads((tmp_path / evaluation.REPORT_JSON).read_text())
  assert saved == json.loads(report.to_json()) and saved["step"] == 7
  markdown = (tmp_path / evaluation.REPORT_MD).read_text()
  assert "unseen_language" in markdown and "## Per pair" in markdown

  # The JSONL predictions are what decoding gives for those examples (pad rows don't leak).
  task = reg.tasks_of_kind("unseen_language")[0]
  ds = seqio.get_dataset(task.name, reg.task_feature_lengths,
                         FlixEncDecFeatureConverter(reg.space.n_types),
                         dataset_split="validation", shuffle=False)
  batch = next(ds.batch(3).as_numpy_iterator())
  assert np.all(batch["feature_ids"][:, 1] == -1)  # The unseen language runs without lang.
  lines = _lines(tmp_path / evaluation.PREDICTIONS_DIR / f"{task.name}.jsonl")
  other = reg.tasks_of_kind("seen_pair")[0].feature_ids
  for rows, ids in (([0, 1], batch["feature_ids"][:2]),
                    ([2, 0], np.stack([batch["feature_ids"][2], other]))):
    out = model.decode(params, batch["encoder_input_tokens"][rows], ids,
                       options=decoding.DecodeOptions(CONFIG.target_length))
    got = BYTE_VOCAB.decode(np.asarray(out.tokens[0]).tolist())
    assert got == lines[rows[0]]["prediction"]
    np.testing.assert_allclose(out.scores[0], lines[rows[0]]["score"], rtol=1e-5)


def test_oracle_predictions_score_perfectly_through_the_same_path(reg, evaluator, tmp_path):
  report = evaluator.evaluate_predictor(evaluation.target_predictor, out_dir=str(tmp_path))
  for name, metrics in report.per_pair.items():
    assert metrics == {"sequence_accuracy": 100.0, "chrf": 100.0, "cer": 0.0}, name
    for line in _lines(tmp_path / evaluation.PREDICTIONS_DIR / f"{name}.jsonl"):
      assert line["prediction"] == line["target"] and "score" not in line
  for group in (report.by_kind, report.by_task, report.by_lang, report.overall):
    for values in group.values():
      assert values["sequence_accuracy"] == 100.0 and values["cer"] == 0.0
  assert (tmp_path / evaluation.REPORT_MD).exists()


def test_build_report_aggregates_known_values(reg):
  names = {t.kind: [] for t in reg.tasks}
  for t in reg.tasks:
    names[t.kind].append(t.name)
  per_pair = {t.name: {"sequence_accuracy": 10.0 * i, "chrf": 1.0}
              for i, t in enumerate(reg.tasks)}
  report = evaluation.build_report(per_pair, reg.holdout, split="test")
  for kind, members in names.items():
    expected = np.mean([per_pair[n]["sequence_accuracy"] for n in members])
    assert report.by_kind[kind]["sequence_accuracy"] == pytest.approx(expected)
    assert report.by_kind[kind]["n_pairs"] == len(members)
  assert report.overall["all"]["sequence_accuracy"] == pytest.approx(
      10.0 * np.mean(range(len(reg.tasks))))
  with pytest.raises(ValueError, match="cannot read a pair"):
    evaluation.build_report({"not_a_pair": {"x": 1.0}}, split="test")


def test_bad_setups_fail_loudly(reg, evaluator):
  task_only = EncoderDecoderModel(T5(
      tiny.t5_config(vocab_size=260), FlixConfig(FeatureSpace.build({"task": CONFIG.tasks}), 2)))
  with pytest.raises(ValueError, match="FeatureSpace has 1 feature types"):
    evaluator.evaluate(task_only, {}, out_dir=None)
  with pytest.raises(ValueError, match="has a 'nosuch' split"):
    evaluation.PairEvaluator(reg.eval_mixture, feature_lengths=reg.task_feature_lengths,
                             batch_size=BATCH, split="nosuch")
  with pytest.raises(ValueError, match="reached more than once"):
    evaluation.PairEvaluator([reg.eval_mixture, reg.tasks[0].name],
                             feature_lengths=reg.task_feature_lengths, batch_size=BATCH)
  with pytest.raises(ValueError, match="not decode_kwargs"):
    evaluation.model_predictor(task_only, {}, max_length=4, decode_kwargs={"max_length": 3})
  with pytest.raises(ValueError, match="needs rng"):
    evaluation.model_predictor(task_only, {}, max_length=4, decode_kwargs={"method": "sample"})


def test_truncation_is_counted_per_pair_and_marked_per_example(reg, tmp_path):
  lengths = {"inputs": 3, "targets": 20}  # Shorter than some examples (EOS included).
  short = evaluation.PairEvaluator(reg.eval_mixture, feature_lengths=lengths, batch_size=BATCH,
                                   holdout=reg.holdout)
  report = short.evaluate_predictor(evaluation.target_predictor, out_dir=str(tmp_path))
  totals = {"inputs": 0, "targets": 0}
  for task in reg.tasks:
    examples = reg.data.examples[task.pair]["validation"]
    lines = _lines(tmp_path / evaluation.PREDICTIONS_DIR / f"{task.name}.jsonl")
    for key in totals:
      long = [len(ex[key].encode("utf-8")) + 1 > lengths[key] for ex in examples]
      assert report.pairs[task.name][f"truncated_{key}"] == sum(long), (task.name, key)
      assert [key in line["truncated"] for line in lines] == long
      totals[key] += sum(long)
  assert totals["inputs"] > 0 and totals["targets"] > 0  # The lengths do cut something.
  assert "| truncated_inputs | truncated_targets |" in report.to_markdown()
  # At the registration's own lengths nothing is cut.
  full = evaluation.PairEvaluator(reg.eval_mixture, feature_lengths=reg.task_feature_lengths,
                                  batch_size=BATCH, holdout=reg.holdout)
  report = full.evaluate_predictor(evaluation.target_predictor, out_dir=None)
  assert all(p["truncated_inputs"] == p["truncated_targets"] == 0 for p in report.pairs.values())
