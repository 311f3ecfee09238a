"""XTREME-UP from small files in the official release layout and names: strict TFDS builds,
official formatting, seqio over TfdsDataSource, per-task decoding and metrics, the official
aggregate, and the experiment driven through `flix.train` / `flix.eval` by the gin files."""

import json
import os
import uuid

import gin
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from flix import decoding, evaluation
from flix.config import FlixConfig
from flix.data import converter, metrics, vocab, xtreme_up
from flix.data.pairs import Pair
from flix.data.tfds import release
from flix.data.tfds import xtreme_up as tfds_xtreme_up
from flix.features import INACTIVE
from flix.models.model import EncoderDecoderModel
from flix.models.t5 import T5
from entry import run_entry
import tiny

tfds.disable_progress_bar()

TEXT = "Ada alikwenda Nairobi"  # NER spans below are byte offsets into this.

# One file per entry, spelled as the official code names them (baseline/*_tasks.py,
# evaluation/score_system.py), written for the train and validation splits.
FILES = {
    "qa_in_lang/{split}/sw.jsonl": [{"question": "Nani?", "title": "Ada",
                                     "context": "Ada ni mwalimu.", "target": "Ada"}],
    "qa_cross_lang/{split}/bn.jsonl": [{"question": "কে?", "title": "T",
                                        "context": "Ada is a teacher.", "target": "Ada"}],
    "ner/{split}/sw.jsonl": [{"text": TEXT, "spans": [
        {"start_byte": 0, "limit_byte": 3, "label": "PER"},
        {"start_byte": 14, "limit_byte": 21, "label": "LOC"}]},
                             {"text": "hakuna\tkitu", "spans": []}],
    "semantic_parsing/{split}/fi.jsonl": [{"input": "soita äidille",
                                           "target": "[IN:CREATE_CALL [SL:CONTACT äiti ] ]"}],
    "semantic_parsing/{split}/hi_cs.jsonl": [{"input": "mummy ko call karo",
                                              "target": "[IN:CREATE_CALL ]"}],
    "translation/{split}/en2sw.jsonl": [{"input": "Good morning", "target": "Habari za asubuhi"}],
    "transliteration/{split}/Latn2Deva.hi.jsonl": [{"input": "namaste",
                                                    "target": "नमस्ते"}],
    "transliteration/{split}/Deva2Latn.hi.jsonl": [{"input": "नमस्ते",
                                                    "target": "namaste"}],
    "autocomplete/{split}/en.jsonl": [{"context": "The quick bro", "target": "brown"}],
}
EXPECTED = {  # seqio task name (without the prefix) -> (inputs, targets) of its examples.
    "qa_in_lang.sw": [("question: Nani? title: Ada context: Ada ni mwalimu.", "Ada")],
    "qa_cross_lang.bn": [("question: কে? title: T context: Ada is a teacher.", "Ada")],
    "ner.sw": [(TEXT, "PER: Ada $$ LOC: Nairobi"), ("hakuna kitu", "")],
    "semantic_parsing.fi": [("soita äidille", "[IN:CREATE_CALL [SL:CONTACT äiti ] ]")],
    "translation.sw": [("Good morning", "Habari za asubuhi")],
    "transliteration.hi:Latn2Deva": [("hi-Latn-Deva namaste", "नमस्ते")],
    "transliteration.hi:Deva2Latn": [("hi-Deva-Latn नमस्ते", "namaste")],
    "autocomplete.en": [("en-The quick bro$", "brown")],
}
LENGTHS = {"inputs": 64, "targets": 32}


def write_jsonl(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    for r in records:
      f.write((r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()) + b"\n")


@pytest.fixture
def release_dir(tmp_path):
  root = tmp_path / "xtreme_up_v1.1"
  for pattern, records in FILES.items():
    for split in ("train", "validation"):
      write_jsonl(root / pattern.format(split=split), records)
  (root / "ner" / "train" / "README.txt").write_text("not a release file")
  return root


def register(root, prefix, **kwargs):
  kwargs.setdefault("tfds_data_dir", str(root.parent / "tfds"))
  kwargs.setdefault("task_feature_lengths", LENGTHS)
  return xtreme_up.register_xtreme_up_experiment(str(root), prefix=prefix, **kwargs)


def unique(stem):
  return f"t_{stem}_{uuid.uuid4().hex[:8]}"


def registered_with(prefix):
  return {n for n in seqio.TaskRegistry.names() | seqio.MixtureRegistry.names()
          if n.startswith(prefix + ".")}


def examples(name, split="validation"):
  rows = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  return [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
          for ex in rows.as_numpy_iterator()]


def test_every_task_from_the_official_file_names(release_dir):
  prefix = unique("xup")
  reg = register(release_dir, prefix)
  try:
    assert {t.name for t in reg.tasks} == {f"{prefix}.{k}" for k in EXPECTED}
    space = reg.space
    assert space.type("task").values == tuple(sorted(xtreme_up.TASKS))
    assert space.type("lang").values == ("bn", "en", "fi", "hi", "sw")  # No hi_cs by default.
    conv = converter.FlixEncDecFeatureConverter(space.n_types)
    for t in reg.tasks:
      key = t.name[len(prefix) + 1:]
      assert sorted(examples(t.name)) == sorted(EXPECTED[key]), key
      assert isinstance(t.task.source, seqio.TfdsDataSource)
      assert t.task.source.tfds_dataset.data_dir.startswith(str(release_dir.parent / "tfds"))
      assert t.task.metric_fns == list(xtreme_up.METRICS[t.pair.task])
      assert t.num_examples == {"train": len(EXPECTED[key]), "validation": len(EXPECTED[key])}
      ids = space.encode(t.pair.features)
      assert t.feature_ids == tuple(ids) and INACTIVE not in ids
    directions = [t for t in reg.tasks if t.pair.task == "transliteration"]
    assert [t.pair.variant for t in directions] == ["Deva2Latn", "Latn2Deva"]
    hi = space.encode({"task": "transliteration", "lang": "hi"})
    for t in directions:  # Two tasks, one pair's features, in the model batch.
      batch = next(seqio.get_dataset(t.name, LENGTHS, conv, dataset_split="validation")
                   .batch(8).as_numpy_iterator())
      assert (batch["feature_ids"] == hi).all()
    assert reg.decode_kwargs == {f"{prefix}.autocomplete.en": {
        "method": "beam", "num_beams": 3, "num_samples": 3}}
    assert reg.info["transliteration.hi:Latn2Deva"]["files"]["train"] == str(
        release_dir / "transliteration" / "train" / "Latn2Deva.hi.jsonl")
    assert reg.info["translation.sw"]["config"] == "translation-sw"
    assert reg.official is xtreme_up.official_scores

    # Code-switched semantic parsing on request (its own language feature).
    cs = register(release_dir, prefix, tasks=["semantic_parsing"], code_switched=True)
    assert cs is not reg and not registered_with(prefix) - set(cs.names)
    assert sorted(t.pair.lang for t in cs.tasks) == ["fi", "hi_cs"]
    assert examples(f"{prefix}.semantic_parsing.hi_cs") == [("mummy ko call karo",
                                                             "[IN:CREATE_CALL ]")]
    reg = cs
  finally:
    reg.unregister()
  assert not registered_with(prefix)


@pytest.mark.parametrize("name, message", [
    ("translation/train/sw.jsonl", r"translation files are named en2\{lang\}.jsonl, got "
     "'sw.jsonl'"),
    ("transliteration/train/hi.jsonl", r"named \{Src\}2\{Tgt\}.\{lang\}.jsonl, got 'hi.jsonl'"),
    ("transliteration/train/Latn2Guru.hi.jsonl", r"'Latn2Guru' is not an XTREME-UP "
     r"transliteration direction of 'hi'; expected one of \['Latn2Deva', 'Deva2Latn'\]"),
    ("transliteration/test/Latn2Guru.pa.JSONL.jsonl", r"named \{Src\}2\{Tgt\}"),
    ("autocomplete/validation/en2sw.jsonl", r"autocomplete files are named \{lang\}.jsonl"),
    ("ner/train/xx.jsonl", r"unknown language code 'xx'; XTREME-UP ner languages are"),
])
def test_file_names_outside_the_official_ones_are_refused(release_dir, name, message):
  write_jsonl(release_dir / name, [{"input": "a", "target": "b"}])
  task = name.split("/")[0]
  prefix = unique("xname")
  with pytest.raises(release.ReleaseLayoutError, match=f"{release_dir / name}: .*{message}"):
    register(release_dir, prefix, tasks=[task])
  assert not registered_with(prefix)


GOOD = {"input": "hello", "target": "hallo"}
BAD_LINES = [
    ("missing_field", {"input": "hello"}, "missing field 'target'"),
    ("empty_target", {"input": "hello", "target": "  "}, "field 'target' is empty"),
    ("not_string", {"input": 3, "target": "y"}, "field 'input' must be a string, got int"),
    ("non_utf8", b'{"input": "h\xffllo", "target": "x"}', "not valid UTF-8"),
    ("bad_json", b'{"input": "hello", ', "not valid JSON"),
    ("blank", b"", "blank line"),
    ("not_object", b'["hello", "hallo"]', "expected a JSON object, got list"),
]


@pytest.mark.parametrize("name, line, message", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_malformed_line_names_file_and_line(release_dir, name, line, message):
  path = release_dir / "translation" / "validation" / "en2sw.jsonl"
  write_jsonl(path, [GOOD, GOOD, line, GOOD])
  prefix = unique("xbad")
  with pytest.raises(release.ReleaseFormatError, match=f"{path}:3: {message}"):
    register(release_dir, prefix, tasks=["translation"])
  assert not registered_with(prefix)
  if name == "blank":  # Nothing half-built stays behind: the fixed file builds in full.
    write_jsonl(path, [GOOD, GOOD, GOOD])
    reg = register(release_dir, prefix, tasks=["translation"])
    assert reg.info["translation.sw"]["counts"] == {"train": 1, "validation": 3}
    reg.unregister()


def test_bad_ner_span_empty_file_and_missing_release(release_dir, tmp_path, monkeypatch):
  path = release_dir / "ner" / "validation" / "sw.jsonl"
  write_jsonl(path, [{"text": "abc", "spans": [{"start_byte": 1, "limit_byte": 9,
                                                "label": "PER"}]}])
  with pytest.raises(release.ReleaseFormatError, match=rf"sw.jsonl:1: span 0 has byte range "
                     r"\[1, 9\) outside the text's 3 bytes"):
    register(release_dir, unique("xner"), tasks=["ner"])
  path.write_text("")
  with pytest.raises(release.ReleaseFormatError, match="sw.jsonl: empty file"):
    register(release_dir, unique("xner"), tasks=["ner"])

  monkeypatch.delenv(xtreme_up.ENV_VAR, raising=False)
  with pytest.raises(FileNotFoundError, match="XTREME_UP_DIR is not set.*google-research/"
                     "xtreme-up.*translation/train/en2sw.jsonl"):
    xtreme_up.register_xtreme_up_experiment(tasks=["ner"])
  with pytest.raises(FileNotFoundError, match="nowhere' does not exist"):
    register(tmp_path / "nowhere", unique("x"))
  empty = tmp_path / "empty"
  os.makedirs(empty / "ner" / "train")
  monkeypatch.setenv(xtreme_up.ENV_VAR, str(empty))
  with pytest.raises(release.ReleaseLayoutError, match="task directory .*empty/translation not "
                     "found; expected <dir>/{task}/{split}/{stem}.jsonl"):
    xtreme_up.register_xtreme_up_experiment(tasks=["translation"], tfds_data_dir=str(tmp_path))
  with pytest.raises(release.ReleaseLayoutError, match=r"no \{lang\}.jsonl files under"):
    xtreme_up.register_xtreme_up_experiment(tasks=["ner"], tfds_data_dir=str(tmp_path))
  with pytest.raises(release.ReleaseLayoutError, match=r"no XTREME-UP translation files for "
                     r"languages \['yo'\].*named en2\{lang\}.jsonl"):
    register(release_dir, unique("x"), tasks=["translation"], langs=["yo"])
  with pytest.raises(ValueError, match=r"languages \['xx'\] are not XTREME-UP translation"):
    register(release_dir, unique("x"), tasks=["translation"], langs=["xx"])


def test_stale_tfds_dataset_is_named(release_dir):
  prefix = unique("xstale")
  register(release_dir, prefix, tasks=["translation"]).unregister()
  write_jsonl(release_dir / "translation" / "test" / "en2sw.jsonl", [GOOD])
  with pytest.raises(release.ReleaseLayoutError, match=r"holds splits \['train', 'validation'\] "
                     r"but the release .* has \['test', 'train', 'validation'\] for "
                     "translation.sw; delete that directory to rebuild"):
    register(release_dir, prefix, tasks=["translation"])


# -- metrics, decoding and the official aggregate -----------------------------------------------
def test_official_aggregate_as_score_system_computes_it():
  per_pair = {
      "p.translation.sw": {"chrf": 40.0}, "p.translation.am": {"chrf": 20.0},
      "p.translation.fi": {"chrf": 90.0},  # High-resource: not counted.
      "p.transliteration.hi:Latn2Deva": {"cer": 50.0},  # Hindi is high-resource.
      "p.transliteration.pa:Latn2Guru": {"cer": 10.0},
      "p.transliteration.pa:Guru2Latn": {"cer": 20.0},
      "p.transliteration.mr:Latn2Deva": {"cer": 30.0},
      "p.semantic_parsing.sw": {"sequence_accuracy": 60.0},
      "p.semantic_parsing.bn_cs": {"sequence_accuracy": 0.0},  # Code-switched.
      "p.semantic_parsing.pt_br": {"sequence_accuracy": 100.0},  # pt: high-resource.
      "p.qa_in_lang.sw": {"em": 10.0, "f1": 50.0}, "p.qa_in_lang.en": {"em": 90.0, "f1": 100.0},
      "p.autocomplete.en": {"top3_accuracy": 100.0},  # English is its only high-resource one.
  }
  got = xtreme_up.official_scores(per_pair)
  assert got == {
      "translation": {"chrf": 30.0, "n_pairs": 2, "n_official": 70},
      "transliteration": {"cer": 20.0, "n_pairs": 3, "n_official": 28},  # Per direction.
      "semantic_parsing": {"sequence_accuracy": 60.0, "n_pairs": 1, "n_official": 9},
      "qa_in_lang": {"f1": 50.0, "n_pairs": 1, "n_official": 4},
      "overall": {"score": pytest.approx((30 + (100 - 20) + 60 + 50) / 4), "n_tasks": 4}}
  assert {t: len(xtreme_up.official_pairs(t)) for t in xtreme_up.TASKS} == {
      "qa_in_lang": 4, "qa_cross_lang": 21, "ner": 20, "semantic_parsing": 9,
      "translation": 70, "transliteration": 28, "autocomplete": 22}
  assert len(tfds_xtreme_up.directions("pa")) == 6
  with pytest.raises(ValueError, match="p.qa_in_lang.sw: no 'f1' metric"):
    xtreme_up.official_scores({"p.qa_in_lang.sw": {"em": 1.0}})
  # Our per-task mean of the same numbers averages every pair instead.
  report = evaluation.build_report(per_pair, split="test", official=xtreme_up.official_scores)
  assert report.by_task["translation"]["chrf"] == pytest.approx(50.0)
  assert report.official == got and "## Official aggregate" in report.to_markdown()


@pytest.fixture
def decode_reg(release_dir):
  reg = register(release_dir, unique("xdec"), tasks=["autocomplete", "translation"],
                 task_feature_lengths={"inputs": 24, "targets": 24})
  yield reg
  reg.unregister()


def test_autocomplete_decodes_three_beams_and_other_tasks_one(decode_reg, tmp_path):
  reg = decode_reg
  evaluator = evaluation.PairEvaluator(reg.eval_mixture, feature_lengths=reg.task_feature_lengths,
                                       batch_size=2, holdout=reg.holdout, official=reg.official)
  model = EncoderDecoderModel(T5(tiny.t5_config(vocab_size=260, num_encoder_layers=1,
                                                num_decoder_layers=1),
                                 FlixConfig(reg.space, ranks=4)))
  params = tiny.random_params(model.module)
  report = evaluator.evaluate(model, params, out_dir=str(tmp_path),
                              task_decode_kwargs=reg.decode_kwargs)
  auto, mt = f"{reg.prefix}.autocomplete.en", f"{reg.prefix}.translation.sw"
  assert set(report.per_pair[auto]) == {"top3_accuracy"} and set(report.per_pair[mt]) == {"chrf"}
  [line] = [json.loads(l) for l in (tmp_path / "predictions" / f"{auto}.jsonl").open()]
  [mt_line] = [json.loads(l) for l in (tmp_path / "predictions" / f"{mt}.jsonl").open()]
  assert isinstance(mt_line["prediction"], str)
  # The 3 beams, best first, are what beam search gives for the example.
  batch = next(seqio.get_dataset(auto, reg.task_feature_lengths,
                                 converter.FlixEncDecFeatureConverter(reg.space.n_types),
                                 dataset_split="validation", shuffle=False)
               .batch(1).as_numpy_iterator())
  out = model.decode(params, batch["encoder_input_tokens"], batch["feature_ids"],
                     options=decoding.DecodeOptions(24, method="beam", num_beams=3, num_samples=3))
  beams = [vocab.BYTE_VOCAB.decode(np.asarray(row).tolist()) for row in out.tokens[0]]
  assert line["prediction"] == beams and len(line["score"]) == 3
  assert report.per_pair[auto]["top3_accuracy"] == 100.0 * ("brown" in beams)
  # English autocomplete is not in the official score; en2sw translation is.
  assert set(report.official) == {"translation", "overall"}
  # Greedy autocomplete would be scored top-1: refused.
  with pytest.raises(ValueError, match="exactly 3 predictions"):
    evaluator.evaluate(model, params, out_dir=None)


def test_task_predictors_route_per_task(decode_reg):
  reg = decode_reg
  evaluator = evaluation.PairEvaluator(reg.eval_mixture, feature_lengths=reg.task_feature_lengths,
                                       batch_size=2, official=reg.official)
  calls = []

  def three(batch):  # The target among 3 decodes, second.
    calls.append(batch["decoder_target_tokens"].shape)
    target = batch["decoder_target_tokens"]
    return np.stack([np.zeros_like(target), target, np.zeros_like(target)], axis=1)

  report = evaluator.evaluate_predictor(
      evaluation.target_predictor, out_dir=None,
      task_predictors={f"{reg.prefix}.autocomplete.en": three, "not.evaluated.here": None})
  assert report.per_pair[f"{reg.prefix}.autocomplete.en"] == {"top3_accuracy": 100.0}
  assert report.per_pair[f"{reg.prefix}.translation.sw"] == {"chrf": 100.0}
  assert calls == [(2, 24)]  # One padded batch of the one autocomplete example.
  assert report.official["overall"] == {"score": 100.0, "n_tasks": 1}


# -- the experiment registration (what flix.train / flix.eval use) ----------------------------
EXP_TASKS = ("ner", "translation", "semantic_parsing", "qa_in_lang", "transliteration",
             "autocomplete")
EXP_HOLDOUT = {"unseen_pairs": [("translation", "fi")], "unseen_langs": ["yo"]}


@pytest.fixture
def experiment_dir(release_dir):
  """The fixture release plus: translation.fi (held out below; fi trains in semantic_parsing),
  ner.yo and translation.yo (yo held out as an unseen language), translation.am with no train
  split (an implied unseen language), semantic_parsing.sw with no train split (an implied
  unseen pair: sw trains in ner), translation.hi (hi trains outside transliteration) and
  transliteration.mr, whose Deva2Latn direction has no train split (a seen cell: Latn2Deva
  trains)."""
  extra = {"translation/{}/en2fi.jsonl": ("train", "validation"),
           "ner/{}/yo.jsonl": ("train", "validation"),
           "translation/{}/en2yo.jsonl": ("train", "validation"),
           "translation/{}/en2am.jsonl": ("validation",),
           "translation/{}/en2hi.jsonl": ("train", "validation"),
           "semantic_parsing/{}/sw.jsonl": ("validation",),
           "transliteration/{}/Latn2Deva.mr.jsonl": ("train", "validation"),
           "transliteration/{}/Deva2Latn.mr.jsonl": ("validation",)}
  for pattern, splits in extra.items():
    for split in splits:
      records = (FILES["ner/{split}/sw.jsonl"] if pattern.startswith("ner") else
                 [{"input": f"{pattern[:5]} {split}", "target": f"{split}!"}])
      write_jsonl(release_dir / pattern.format(split), records)
  return release_dir


def register_experiment(root, prefix, **kwargs):
  return register(root, prefix, tasks=EXP_TASKS, **{**EXP_HOLDOUT, **kwargs})


def members(mixture):
  return sorted(t.name for t in seqio.get_mixture_or_task(mixture).tasks)


def test_experiment_space_mixtures_and_holdout(experiment_dir):
  prefix = unique("xexp")
  held = [("translation", "fi"), "transliteration.hi"]
  reg = register_experiment(experiment_dir, prefix, unseen_pairs=held)
  try:
    space = reg.space
    assert space.names == ("task", "lang")
    assert space.type("task").values == tuple(sorted(EXP_TASKS))
    assert space.type("lang").values == ("en", "fi", "hi", "mr", "sw")  # Not yo, am.
    assert reg.holdout.unseen_langs == {"yo", "am"}
    assert reg.holdout.unseen_pairs == {Pair("translation", "fi"), Pair("semantic_parsing", "sw"),
                                        Pair("transliteration", "hi")}
    name = lambda key: f"{prefix}.{key}"
    seen = [name(k) for k in ("ner.sw", "qa_in_lang.sw", "semantic_parsing.fi", "translation.sw",
                              "translation.hi", "autocomplete.en", "transliteration.mr:Latn2Deva")]
    by_name = {t.name: t for t in reg.tasks}
    assert members(reg.train_mixture) == sorted(seen)
    assert members(reg.eval_mixture) == sorted(by_name) and len(by_name) == 15
    # A held-out transliteration cell holds out both directions; a seen cell's direction
    # without a train split is evaluated, never trained.
    for direction in ("Latn2Deva", "Deva2Latn"):
      assert by_name[name(f"transliteration.hi:{direction}")].kind == "unseen_pair"
    mr_back = by_name[name("transliteration.mr:Deva2Latn")]
    assert mr_back.kind == "seen_pair" and not mr_back.trained
    assert mr_back.feature_ids == tuple(space.encode({"task": "transliteration", "lang": "mr"}))
    assert "train" not in by_name[name("translation.fi")].num_examples
    assert by_name[name("ner.yo")].feature_ids == (space.type("task").id_of("ner"), INACTIVE)
    assert by_name[name("translation.am")].kind == "unseen_language"

    # Same prefix, same arguments: the same registration; other arguments replace it.
    assert register_experiment(experiment_dir, prefix, unseen_pairs=held[::-1]) is reg
    again = register_experiment(experiment_dir, prefix, rate="examples")
    assert again is not reg
    mixture = seqio.get_mixture_or_task(again.train_mixture)
    rate = lambda n: mixture.get_rate(seqio.get_mixture_or_task(n))
    assert rate(name("ner.sw")) == pytest.approx(2 * rate(name("translation.sw")))
    assert sorted(t.pair.key for t in again.tasks if t.trained and
                  t.pair.task == "transliteration") == [
                      "transliteration.hi:Deva2Latn", "transliteration.hi:Latn2Deva",
                      "transliteration.mr:Latn2Deva"]
    reg = again
  finally:
    reg.unregister()
  assert not registered_with(prefix)


@pytest.mark.parametrize("holdout, message", [
    ({"unseen_pairs": ["ner.fi"]}, r"unseen pairs \['ner.fi'\] have no XTREME-UP files"),
    ({"unseen_langs": ["zu"]}, r"unseen languages \['zu'\] have no XTREME-UP files"),
    ({"unseen_pairs": ["qa_in_lang.sw"]}, r"leaves tasks \['qa_in_lang'\] .*without any "
     "training pair"),
    ({"unseen_pairs": ["translation.yo"]}, "listed as unseen pairs but their language is an "
     "unseen language"),
    ({"unseen_pairs": ["translation"]}, "an unseen pair is written"),
])
def test_experiment_holdout_errors(experiment_dir, holdout, message):
  prefix = unique("xerr")
  with pytest.raises(ValueError, match=message):
    register_experiment(experiment_dir, prefix, **holdout)
  assert not registered_with(prefix)


@pytest.mark.slow
def test_train_and_eval_entry_points_with_the_xtreme_up_gin_files(experiment_dir, tmp_path,
                                                                   capsys):
  from flix import checkpoints
  from flix import eval as eval_entry, train as train_entry
  from flix.training.checkpointer import step_dirs
  run_dir, out = tmp_path / "runs" / "flix", tmp_path / "runs" / "eval"
  tasks = tuple(t for t in EXP_TASKS if t != "qa_in_lang")  # 12 pairs, every split kind.
  data = [f"--gin.XTREME_UP_DIR='{experiment_dir}'", f"--gin.XTREME_UP_TASKS={tasks}",
          "--gin.XTREME_UP_LANGS={'translation': ['sw', 'fi', 'yo']}",
          f"--gin.TFDS_DATA_DIR='{tmp_path / 'tfds'}'",
          "--gin.UNSEEN_PAIRS=[('translation', 'fi')]", "--gin.UNSEEN_LANGS=['yo']",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}", "--gin.BATCH_SIZE=8"]
  try:
    # The real experiment file (ByT5-base sizes) with a one-layer, 32-wide model on one device.
    code = run_entry(
        train_entry, "--gin_file=experiments/xtreme_up_flix.gin", *data,
        f"--gin.MODEL_DIR='{run_dir}'", "--gin.TRAIN_STEPS=3", "--gin.INITIAL_CHECKPOINT_PATH=None",
        "--gin.CHECKPOINT_PERIOD=3", "--gin.LOG_PERIOD=1", "--gin.MESH_SHAPE=(1, 1)",
        "--gin.FEATURE_RANKS={'task': 2, 'lang': 2}", "--gin.T5Config.emb_dim=32",
        "--gin.T5Config.num_heads=2", "--gin.T5Config.head_dim=8", "--gin.T5Config.mlp_dim=64",
        "--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1")
    assert code == 0, capsys.readouterr().err[-2000:]
    assert [s for s, _ in step_dirs(str(run_dir))] == [3]
    losses = [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses)), losses
    _, flix, _ = checkpoints.load_model(str(run_dir / "checkpoint_3"))
    assert flix.space.type("lang").values == ("en", "fi", "hi", "mr", "sw")  # Not yo.
    assert flix.ranks == (2, 2)

    code = run_entry(eval_entry, "--gin_file=experiments/xtreme_up_eval.gin", *data,
                     f"--gin.CHECKPOINT_PATH='{run_dir / 'checkpoint_3'}'",
                     f"--gin.EVAL_OUTPUT_DIR='{out}'")
    assert code == 0, capsys.readouterr().err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["by_kind"]) == {"seen_pair", "unseen_pair", "unseen_language"}
    assert len(os.listdir(out / "predictions")) == len(report["per_pair"]) == 12
    assert set(report["official"]) == {"ner", "translation", "semantic_parsing",
                                       "transliteration", "overall"}
    assert report["official"]["transliteration"]["n_pairs"] == 2  # mr; hi is high-resource.
    auto = [json.loads(l) for l in (out / "predictions" / "xtreme_up.autocomplete.en.jsonl")
            .read_text().splitlines()]
    assert [len(l["prediction"]) for l in auto] == [3]
    assert 0.0 <= report["per_pair"]["xtreme_up.autocomplete.en"]["top3_accuracy"] <= 100.0
  finally:
    gin.clear_config()
    entry = xtreme_up._REGISTERED.pop("xtreme_up", None)
    if entry:
      entry[1].unregister()
