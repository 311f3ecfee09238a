"""XTREME-UP pairs from tiny JSONL fixtures: official formatting, metrics, bad records, and the
experiment registration driven through `flix.train` / `flix.eval` by the gin experiment files."""

import json
import os
import uuid

import gin
import numpy as np
import pytest
import seqio

from flix.data import converter, metrics, pairs, vocab, xtreme_up
from flix.data.pairs import HoldOut, Pair
from flix.features import INACTIVE, FeatureSpace

TEXT = "Ada alikwenda Nairobi"  # NER spans below are byte offsets into this.

RECORDS = {
    ("qa_in_lang", "sw"): [{"question": "Nani?", "title": "Ada", "context": "Ada ni mwalimu.",
                            "target": "Ada"}],
    ("qa_cross_lang", "bn"): [{"question": "কে?", "title": "T", "context": "Ada is a teacher.",
                               "target": "Ada"}],
    ("ner", "sw"): [{"text": TEXT, "spans": [
        {"start_byte": 0, "limit_byte": 3, "label": "PER"},
        {"start_byte": 14, "limit_byte": 21, "label": "LOC"}]},
                    {"text": "hakuna\tkitu", "spans": []}],
    ("semantic_parsing", "fi"): [{"input": "soita äidille",
                                  "target": "[IN:CREATE_CALL [SL:CONTACT äiti ] ]"}],
    ("translation", "sw"): [{"input": "Good morning", "target": "Habari za asubuhi"}],
    ("autocomplete", "en"): [{"context": "The quick bro", "target": "brown"}],
}
EXPECTED = {
    ("qa_in_lang", "sw"): [("question: Nani? title: Ada context: Ada ni mwalimu.", "Ada")],
    ("qa_cross_lang", "bn"): [("question: কে? title: T context: Ada is a teacher.", "Ada")],
    ("ner", "sw"): [(TEXT, "PER: Ada $$ LOC: Nairobi"), ("hakuna kitu", "")],
    ("semantic_parsing", "fi"): [("soita äidille", "[IN:CREATE_CALL [SL:CONTACT äiti ] ]")],
    ("translation", "sw"): [("Good morning", "Habari za asubuhi")],
    ("autocomplete", "en"): [("en-The quick bro$", "brown")],
    ("transliteration", "hi"): [("hi-Latn-Deva namaste", "नमस्ते"), ("hi-Deva-Latn नमस्ते",
                                                                     "namaste")],
}


def write_jsonl(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    for r in records:
      f.write((r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()) + b"\n")


@pytest.fixture
def data_dir(tmp_path):
  for (task, lang), records in RECORDS.items():
    for split in ("train", "validation"):
      write_jsonl(tmp_path / task / split / f"{lang}.jsonl", records)
  for split in ("train", "validation"):
    write_jsonl(tmp_path / "transliteration" / split / "Latn2Deva.hi.jsonl",
                [{"input": "namaste", "target": "नमस्ते"}])
    write_jsonl(tmp_path / "transliteration" / split / "Deva2Latn.hi.jsonl",
                [{"input": "नमस्ते", "target": "namaste"}])
  return str(tmp_path)


def space_for(keys):
  return FeatureSpace.build({"task": sorted({t for t, _ in keys}),
                             "lang": sorted({l for _, l in keys})}, 2)


def test_every_task_gives_officially_formatted_seqio_examples(data_dir):
  space = space_for(EXPECTED)
  reg = xtreme_up.register_xtreme_up(space, data_dir=data_dir,
                                     prefix=f"t_xup_{uuid.uuid4().hex[:8]}")
  try:
    assert {(t.pair.task, t.pair.lang) for t in reg.tasks} == set(EXPECTED)
    conv = converter.FlixEncDecFeatureConverter(space.n_types)
    for t in reg.tasks:
      key = (t.pair.task, t.pair.lang)
      raw = list(t.task.get_dataset({"inputs": 128, "targets": 64}, split="validation",
                                    shuffle=False).as_numpy_iterator())
      got = [(ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
             for ex in raw]
      assert sorted(got) == sorted(EXPECTED[key]), key
      batch = next(seqio.get_dataset(t.name, {"inputs": 128, "targets": 64}, conv,
                                     dataset_split="validation").batch(8).as_numpy_iterator())
      ids = space.encode({"task": t.pair.task, "lang": t.pair.lang})
      assert (batch["feature_ids"] == ids).all()
      assert vocab.BYTE_VOCAB.decode(batch["encoder_input_tokens"][0].tolist()) in {
          i for i, _ in EXPECTED[key]}
      assert t.task.metric_fns == list(xtreme_up.TASK_SPECS[t.pair.task].metric_fns)
  finally:
    reg.unregister()


def test_metric_assignment_matches_the_official_choice():
  names = {task: [f.__name__ for f in spec.metric_fns]
           for task, spec in xtreme_up.TASK_SPECS.items()}
  assert names == {"qa_in_lang": ["squad"], "qa_cross_lang": ["squad"], "ner": ["span_f1"],
                   "semantic_parsing": ["sequence_accuracy"], "translation": ["chrf"],
                   "transliteration": ["cer"], "autocomplete": ["top3_accuracy"]}
  # NER targets as formatted above score 100 against themselves, 50 with one span wrong.
  gold = "PER: Ada $$ LOC: Nairobi"
  assert metrics.span_f1([gold], [gold])["span_f1"] == pytest.approx(100.0)
  assert metrics.span_f1([gold], ["PER: Ada $$ LOC: Mombasa"])["span_f1"] == pytest.approx(50.0)


def test_cross_task_mixture_with_held_out_pair(data_dir):
  space = space_for(EXPECTED)
  holdout = HoldOut(unseen_pairs={Pair("translation", "sw")})
  prefix = f"t_xmix_{uuid.uuid4().hex[:8]}"
  reg = xtreme_up.register_xtreme_up(space, tasks=("ner", "translation", "qa_in_lang"),
                                     data_dir=data_dir, prefix=prefix, holdout=holdout)
  try:
    members = pairs.register_pair_mixture(f"{prefix}.train", reg.tasks, rate="examples")
    assert sorted(t.pair for t in members) == [Pair("ner", "sw"), Pair("qa_in_lang", "sw")]
  finally:
    pairs.unregister([f"{prefix}.train"])
    reg.unregister()


def test_missing_data_dir_says_what_to_download(tmp_path, monkeypatch):
  monkeypatch.delenv(xtreme_up.ENV_VAR, raising=False)
  with pytest.raises(FileNotFoundError, match="XTREME_UP_DIR is not set.*google-research/"
                     "xtreme-up"):
    xtreme_up.load(("ner",))
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere' does not exist.*<dir>/<task>/<split>"):
    xtreme_up.load(("ner",), data_dir=missing)
  monkeypatch.setenv(xtreme_up.ENV_VAR, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="task directory .*ner' not found"):
    xtreme_up.load(("ner",))


GOOD = {"input": "hello", "target": "hallo"}
BAD_CASES = [
    ("missing_field", {"input": "hello"}, "missing field 'target'"),
    ("empty_target", {"input": "hello", "target": "  "}, "field 'target' is empty"),
    ("non_utf8", b'{"input": "h\xffllo", "target": "x"}', "not valid UTF-8"),
    ("bad_json", b'{"input": "hello", ', "not valid JSON"),
    ("too_long", {"input": "x" * 40, "target": "y"}, "input is 40 bytes, longer than "
     "max_input_bytes=32"),
    ("not_string", {"input": 3, "target": "y"}, "field 'input' must be a string"),
]


@pytest.mark.parametrize("name,record,message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_record_error_names_file_and_line(tmp_path, name, record, message):
  path = tmp_path / "translation" / "train" / "sw.jsonl"
  write_jsonl(path, [GOOD, GOOD, record, GOOD])
  with pytest.raises(xtreme_up.BadRecordError) as err:
    xtreme_up.load(("translation",), data_dir=str(tmp_path), max_input_bytes=32)
  assert f"{path}:3: {message}" in str(err.value), name
  with pytest.warns(UserWarning, match=f"skipped 1 bad record.*sw.jsonl:3: {message}"):
    data = xtreme_up.load(("translation",), data_dir=str(tmp_path), bad_records="skip",
                          max_input_bytes=32)
  assert data.skipped == {str(path): 1} and data.total_skipped == 1
  assert len(data.examples[Pair("translation", "sw")]["train"]) == 3


def test_bad_ner_span_and_unknown_language(tmp_path):
  write_jsonl(tmp_path / "ner" / "train" / "sw.jsonl",
              [{"text": "abc", "spans": [{"start_byte": 1, "limit_byte": 9, "label": "PER"}]}])
  with pytest.raises(xtreme_up.BadRecordError, match=r"sw.jsonl:1: span 0 has byte range "
                     r"\[1, 9\) outside the text's 3 bytes"):
    xtreme_up.load(("ner",), data_dir=str(tmp_path))
  write_jsonl(tmp_path / "translation" / "train" / "xx.jsonl", [GOOD])
  write_jsonl(tmp_path / "translation" / "train" / "sw.jsonl", [GOOD, GOOD])
  with pytest.raises(xtreme_up.BadRecordError, match=r"xx.jsonl:0: unknown language code 'xx'"):
    xtreme_up.load(("translation",), data_dir=str(tmp_path))
  with pytest.warns(UserWarning, match="unknown language code 'xx'"):
    data = xtreme_up.load(("translation",), data_dir=str(tmp_path), bad_records="skip")
  assert list(data.examples) == [Pair("translation", "sw")] and data.total_skipped == 1
  with pytest.raises(ValueError, match=r"languages \['xx'\] are not XTREME-UP translation"):
    xtreme_up.load(("translation",), langs=["xx"], data_dir=str(tmp_path))


# -- the experiment registration (what flix.train / flix.eval use) ----------------------------
EXP_TASKS = ("ner", "translation", "semantic_parsing", "qa_in_lang")
EXP_HOLDOUT = {"unseen_pairs": [("translation", "fi")], "unseen_langs": ["yo"]}


@pytest.fixture
def experiment_dir(data_dir):
  """The fixture release plus: translation.fi (held out below; fi trains in semantic_parsing),
  ner.yo and translation.yo (yo held out as an unseen language), translation.am with no train
  split (an implied unseen language) and semantic_parsing.sw with no train split (an implied
  unseen pair: sw trains in ner)."""
  extra = {("translation", "fi"): ("train", "validation"), ("ner", "yo"): ("train", "validation"),
           ("translation", "yo"): ("train", "validation"), ("translation", "am"): ("validation",),
           ("semantic_parsing", "sw"): ("validation",)}
  for (task, lang), splits in extra.items():
    for split in splits:
      write_jsonl(os.path.join(data_dir, task, split, f"{lang}.jsonl"), RECORDS[(task, "sw")]
                  if task == "ner" else [{"input": f"{lang} {split}", "target": f"{lang}!"}])
  return data_dir


def register_experiment(data_dir, prefix, **kwargs):
  return xtreme_up.register_xtreme_up_experiment(data_dir=data_dir, tasks=EXP_TASKS,
                                                 prefix=prefix, **{**EXP_HOLDOUT, **kwargs})


def members(mixture):
  return sorted(t.name for t in seqio.get_mixture_or_task(mixture).tasks)


def test_experiment_space_mixtures_and_holdout(experiment_dir):
  prefix = f"t_xexp_{uuid.uuid4().hex[:8]}"
  reg = register_experiment(experiment_dir, prefix, ranks={"task": 3, "lang": 2},
                            task_feature_lengths={"inputs": 64, "targets": 32})
  try:
    space = reg.space
    assert space.names == ("task", "lang")
    assert space.type("task").values == ("ner", "qa_in_lang", "semantic_parsing", "translation")
    assert space.type("lang").values == ("fi", "sw")  # Not yo (explicit) nor am (no train).
    assert space.ranks == (3, 2)
    holdout = reg.data.holdout
    assert holdout.unseen_langs == {"yo", "am"}
    assert holdout.unseen_pairs == {Pair("translation", "fi"), Pair("semantic_parsing", "sw")}
    by_name = {t.name: t for t in reg.tasks}
    name = lambda task, lang: f"{prefix}.{task}.{lang}"
    seen = [name("ner", "sw"), name("qa_in_lang", "sw"), name("semantic_parsing", "fi"),
            name("translation", "sw")]
    assert reg.train_mixture == f"{prefix}.train" and reg.eval_mixture == f"{prefix}.eval"
    assert members(reg.train_mixture) == sorted(seen)
    assert members(reg.eval_mixture) == sorted(by_name) and len(by_name) == 9
    assert name("translation", "fi") in by_name and name("translation", "fi") not in seen
    assert by_name[name("translation", "fi")].kind == "unseen_pair"
    assert "train" not in by_name[name("translation", "fi")].num_examples
    assert {t.name for t in reg.tasks_of_kind("unseen_language")} == {
        name("ner", "yo"), name("translation", "yo"), name("translation", "am")}
    # The unseen language encodes INACTIVE, in the registered Task's examples too.
    ner_yo = by_name[name("ner", "yo")]
    assert ner_yo.feature_ids == (space.type("task").id_of("ner"), INACTIVE)
    conv = converter.FlixEncDecFeatureConverter(space.n_types)
    batch = next(seqio.get_dataset(ner_yo.name, reg.task_feature_lengths, conv,
                                   dataset_split="validation").batch(4).as_numpy_iterator())
    assert (batch["feature_ids"] == [space.type("task").id_of("ner"), INACTIVE]).all()
    assert by_name[name("translation", "fi")].feature_ids == tuple(
        space.encode({"task": "translation", "lang": "fi"}))
    assert set(reg.names) == {reg.train_mixture, reg.eval_mixture, *by_name}

    # Same prefix, same arguments: the same registration, no duplicate-name error.
    assert register_experiment(experiment_dir, prefix, ranks={"lang": 2, "task": 3},
                               task_feature_lengths={"inputs": 64, "targets": 32}) is reg
    # Other arguments replace it: the train mixture is now proportional to train examples.
    again = register_experiment(experiment_dir, prefix, rate="examples")
    assert again is not reg and members(again.train_mixture) == sorted(seen)
    mixture = seqio.get_mixture_or_task(again.train_mixture)
    rate = lambda n: mixture.get_rate(seqio.get_mixture_or_task(n))
    assert rate(name("ner", "sw")) == pytest.approx(2 * rate(name("translation", "sw")))
    reg = again
  finally:
    reg.unregister()
  assert not any(n.startswith(prefix) for n in
                 seqio.TaskRegistry.names() | seqio.MixtureRegistry.names())


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
  prefix = f"t_xerr_{uuid.uuid4().hex[:8]}"
  with pytest.raises(ValueError, match=message):
    register_experiment(experiment_dir, prefix, **holdout)
  assert not any(n.startswith(prefix) for n in
                 seqio.TaskRegistry.names() | seqio.MixtureRegistry.names())


def run_entry(module, *argv):
  from flix import gin_utils
  gin.clear_config()
  with pytest.raises(SystemExit) as exit_info:
    gin_utils.run(module.main, list(argv))
  return exit_info.value.code


def test_train_and_eval_entry_points_with_the_xtreme_up_gin_files(experiment_dir, tmp_path,
                                                                   capsys):
  from flix import checkpoints
  from flix import eval as eval_entry, train as train_entry
  from flix.training.checkpointer import step_dirs
  run_dir, out = tmp_path / "runs" / "flix", tmp_path / "runs" / "eval"
  data = [f"--gin.XTREME_UP_DIR='{experiment_dir}'", f"--gin.XTREME_UP_TASKS={EXP_TASKS}",
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
    assert flix.space.type("lang").values == ("fi", "sw") and flix.space.ranks == (2, 2)

    code = run_entry(eval_entry, "--gin_file=experiments/xtreme_up_eval.gin", *data,
                     f"--gin.CHECKPOINT_PATH='{run_dir / 'checkpoint_3'}'",
                     f"--gin.OUTPUT_DIR='{out}'")
    assert code == 0, capsys.readouterr().err[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["by_kind"]) == {"seen_pair", "unseen_pair", "unseen_language"}
    assert len(os.listdir(out / "predictions")) == 9
  finally:
    gin.clear_config()
    entry = xtreme_up._REGISTERED.pop("xtreme_up", None)
    if entry:
      entry[1].unregister()
