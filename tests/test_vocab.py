"""VOCABULARY: a SentencePiece model trained here runs train -> eval -> infer through the gin
entry points; a model smaller than the vocabulary, or tasks of another vocabulary, are refused
before any step."""
import json

import pytest
import seqio

from entry import run_entry, tiny_data
from flix import eval as eval_entry, infer as infer_entry, train as train_entry
from flix.data import offline_tasks
from flix.data.offline import generate

SP_SIZE = 128  # < 259 ByteVocabulary ids: the model below cannot take bytes.
TINY_DATA = tiny_data()  # The test's SentencePiece model learns its texts.


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  """A deterministic SentencePiece model (T5's ids: PAD 0, EOS 1, UNK 2, no BOS) of the tiny
  offline benchmark's texts."""
  import sentencepiece
  out = tmp_path_factory.mktemp("spm")
  data = generate(TINY_DATA)
  texts = [t for split in ("train", "validation", "test")
           for t in data.corpus(split, ("inputs", "targets"))]
  (out / "corpus.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
  sentencepiece.SentencePieceTrainer.train(
      input=str(out / "corpus.txt"), model_prefix=str(out / "sp"), vocab_size=SP_SIZE,
      model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2)
  return str(out / "sp.model")


def sentencepiece_bindings(path):
  return ["--gin.VOCABULARY=@seqio.SentencePieceVocabulary()",
          f"--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file='{path}'"]


def subtask_vocabularies(name):
  return [t.output_features["targets"].vocabulary
          for t in seqio.get_subtasks(seqio.get_mixture_or_task(name))]


def test_sentencepiece_train_eval_infer(tmp_path, sp_model, capsys):
  vocabulary = seqio.SentencePieceVocabulary(sp_model)
  assert vocabulary.vocab_size == SP_SIZE
  model_dir, out = tmp_path / "run", tmp_path / "eval"
  sp = sentencepiece_bindings(sp_model)
  model = [f"--gin.T5Config.vocab_size={SP_SIZE}", "--gin.T5Config.num_encoder_layers=1",
           "--gin.T5Config.num_decoder_layers=1"]
  assert run_entry(train_entry, "--gin_file=tiny_offline.gin", *sp, *model, f"--gin.MODEL_DIR='{model_dir}'",
                   "--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=2") == 0
  # Every registered task (pairs and the pretraining corpus) tokenizes with the SentencePiece
  # model, so the ids the model saw were its pieces, not bytes.
  assert all(v == vocabulary for v in subtask_vocabularies("flix_offline.eval"))
  assert subtask_vocabularies("flix_offline.pretrain") == [vocabulary]
  ckpt = str(model_dir / "checkpoint_2")

  assert run_entry(eval_entry, "--gin_file=tiny_eval.gin", *sp, f"--gin.CHECKPOINT_PATH='{ckpt}'",
                   f"--gin.EVAL_OUTPUT_DIR='{out}'", "--gin.EVAL_EXAMPLES=1") == 0
  report = json.loads((out / "report.json").read_text())
  assert set(report["by_kind"]) == {"seen_pair", "unseen_pair", "unseen_language"}
  record = json.loads((out / "predictions" / "flix_offline.ordinal.fr.jsonl").read_text())
  assert isinstance(record["prediction"], str)

  requests, predictions = tmp_path / "requests.jsonl", tmp_path / "out.jsonl"
  requests.write_text(json.dumps({"inputs": "ordinal fr: 12",
                                  "features": {"task": "ordinal", "lang": "fr"}}) + "\n")
  infer = [f"--gin.CHECKPOINT_PATH='{ckpt}'", f"--gin.INPUT_FILE='{requests}'",
           f"--gin.OUTPUT_FILE='{predictions}'",
           "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 48}",
           "--gin.BATCH_SIZE=8"]  # Eval's decode shapes: compiled once.
  assert run_entry(infer_entry, "--gin_file=runs/infer.gin", *sp, *infer) == 0
  [result] = [json.loads(l) for l in predictions.read_text().splitlines()]
  assert isinstance(result["prediction"], str) and result["score"] <= 0
  assert not result["truncated"]

  # The checkpoint's model (vocab_size 128) cannot take ByteVocabulary's 259 ids: eval and
  # infer with the default VOCABULARY refuse it before decoding anything.
  message = f"vocab_size {SP_SIZE}, smaller than the 259 ids of VOCABULARY"
  capsys.readouterr()
  assert run_entry(eval_entry, "--gin_file=tiny_eval.gin", f"--gin.CHECKPOINT_PATH='{ckpt}'",
                   f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval_bytes'}'") == 1
  assert run_entry(infer_entry, "--gin_file=runs/infer.gin", *infer[:2],
                   f"--gin.OUTPUT_FILE='{tmp_path / 'bytes.jsonl'}'", *infer[3:]) == 1
  assert capsys.readouterr().err.count(message) == 2
  assert not (tmp_path / "eval_bytes").exists() and not (tmp_path / "bytes.jsonl").exists()


def test_vocabulary_errors_before_any_step(tmp_path, sp_model, capsys):
  sp = sentencepiece_bindings(sp_model)
  model_dir = tmp_path / "run"
  # Byte ids (the default VOCABULARY) into a model of 128 ids.
  assert run_entry(train_entry, "--gin_file=tiny_offline.gin", f"--gin.T5Config.vocab_size={SP_SIZE}",
                   f"--gin.MODEL_DIR='{model_dir}'") == 1
  err = capsys.readouterr().err
  assert (f"has vocab_size {SP_SIZE}, smaller than the 259 ids of VOCABULARY" in err
          and "Set the gin macro VOCABULARY" in err), err
  assert not model_dir.exists()
  # The vocabulary is part of what identifies a cached registration: the same arguments with
  # another vocabulary register the prefix anew, the same vocabulary finds the cached one.
  by_bytes = offline_tasks.register_offline(TINY_DATA)
  assert subtask_vocabularies("flix_offline.train")[0] == seqio.ByteVocabulary()
  sp_vocabulary = seqio.SentencePieceVocabulary(sp_model)
  by_pieces = offline_tasks.register_offline(TINY_DATA, vocabulary=sp_vocabulary)
  assert by_pieces is not by_bytes and by_pieces.vocabulary == sp_vocabulary
  assert subtask_vocabularies("flix_offline.train")[0] == sp_vocabulary
  assert offline_tasks.register_offline(
      TINY_DATA, vocabulary=seqio.SentencePieceVocabulary(sp_model)) is by_pieces

  # Tasks registered with bytes in a run whose VOCABULARY is the SentencePiece model.
  assert run_entry(train_entry, "--gin_file=tiny_offline.gin", *sp,
                   "--gin.register_offline.vocabulary=@seqio.ByteVocabulary()",
                   f"--gin.MODEL_DIR='{model_dir}'") == 1
  err = capsys.readouterr().err
  assert ("tokenizes 'inputs' with ByteVocabulary(extra_ids=0), but the run's VOCABULARY is "
          "SentencePieceVocabulary(file=" in err), err
  assert not model_dir.exists()

  # models/mt5_small.gin's VOCABULARY is mT5's SentencePiece model: never bytes by default.
  assert run_entry(train_entry, "--gin_file=tiny_offline.gin", "--gin_file=models/mt5_small.gin",
                   f"--gin.MODEL_DIR='{model_dir}'") == 1
  assert "set SENTENCEPIECE_MODEL (models/mt5_*.gin)" in capsys.readouterr().err
  assert not model_dir.exists()


@pytest.mark.slow  # Two training runs and two in-training evaluations of a converted model.
def test_t5x_checkpoint_sentencepiece_flix_run_evaluates_and_resumes(tmp_path, sp_model,
                                                                     capsys):
  """Issue 16's whole path: T5X's own tiny T5.1.1 (SentencePiece-sized vocabulary) converts,
  trains FLix on SentencePiece pieces, packed (PACK 'auto', no feature dropout), evaluates
  during training, and resumes from the input iterator's saved state."""
  from flix import convert
  from shared_files import shared_path
  t5x_file = shared_path("fixtures", "t5x", "test_t5_tiny.checkpoint_0")
  base, model_dir = tmp_path / "base", tmp_path / "run"
  assert convert.main(["from-t5x", "--t5x_dir", t5x_file, "--out", str(base),
                       "--dropout_rate", "0.0"]) == 0
  run = [*sentencepiece_bindings(sp_model), f"--gin_file={base / 'model.gin'}",
         f"--gin.INITIAL_CHECKPOINT_PATH='{base}'", f"--gin.MODEL_DIR='{model_dir}'",
         "--gin.FEATURE_DROPOUT=0.0", "--gin.PACK='auto'", "--gin.CHECKPOINT_PERIOD=2",
         "--gin.EVAL_PERIOD=2", "--gin.EVAL_EXAMPLES=1"]
  capsys.readouterr()
  assert run_entry(train_entry, "--gin_file=tiny_offline.gin", *run, "--gin.TRAIN_STEPS=2") == 0
  err = capsys.readouterr().err
  assert "PACK = True ('auto': method 'flix' without feature dropout" in err, err[-2000:]
  assert run_entry(train_entry, "--gin_file=tiny_offline.gin", *run, "--gin.TRAIN_STEPS=4") == 0
  err = capsys.readouterr().err
  assert (f"resuming from {model_dir / 'checkpoint_2'} at step 2 (input iterator restored from "
          "its state)") in err, err[-2000:]
  assert "PACK = True ('auto': as" in err
  checkpoint = model_dir / "checkpoint_4"
  assert json.loads((checkpoint / "model.json").read_text())["vocab_size"] == 32128
  assert json.loads((checkpoint / "base.json").read_text())["base_checkpoint"] == str(base)
  meta = json.loads((checkpoint / "train_state.json").read_text())
  assert meta["pack"] is True and meta["data_position"] == 4
  assert {"seen_pair/sequence_accuracy", "unseen_language/sequence_accuracy"} <= set(meta["eval"])
  lines = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines if "eval/validation/overall/sequence_accuracy" in l] == [2, 4]
