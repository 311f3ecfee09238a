"""XTREME-UP pairs from tiny JSONL fixtures: official formatting, metrics, bad records."""

import json
import os
import uuid

import pytest
import seqio

from flix.data import converter, metrics, pairs, vocab, xtreme_up
from flix.data.pairs import HoldOut, Pair
from flix.features import FeatureSpace

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
