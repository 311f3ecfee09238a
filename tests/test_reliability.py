"""Every row of docs/reliability.md, checked against the code, so the table cannot drift.

The table's rows are `| id | area | bad input | outcome |`; each id has a check below that
feeds the code that bad input (entry points run in-process through their `main`, or the library
function they call) and returns what a user sees (`exit N: <last stderr line>`, or
`<ExceptionType>: <message>`). Every `backticked` fragment of the row's outcome must appear in
it. Checks assert what the table says in words (e.g. nothing written) themselves.
"""

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil

import gin
import jax.numpy as jnp
import pytest

from flix import checkpoints, convert, gin_utils
from flix import compile as compile_entry
from flix import eval as eval_entry
from flix import infer as infer_entry
from flix import train as train_entry
from flix.config import FlixConfig
from flix.data import xtreme_up
from flix.data.pairs import Pair
from flix.data.tfds import xtreme_up as tfds_xtreme_up
from flix.features import FeatureSpace
from flix.models.t5 import T5
from flix.training import loop
from flix.training.checkpointer import Checkpointer
from flix.training.state import TrainState
import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "reliability.md")
GIN_DIR = os.path.join(ROOT, "tests", "gin")
AREAS = {"data files", "feature values", "gin", "checkpoints", "conversion", "requests", "study",
         "compile"}
LONG = "x" * 400


def doc_rows() -> dict[str, tuple[str, str]]:
  """{id: (area, outcome)} of the table in docs/reliability.md."""
  rows = {}
  with open(DOC, encoding="utf-8") as f:
    for line in f:
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      m = re.fullmatch(r"`([a-z0-9-]+)`", cells[0]) if line.startswith("|") else None
      if m and len(cells) >= 4:
        assert m.group(1) not in rows, f"row {m.group(1)} appears twice"
        rows[m.group(1)] = (cells[1], cells[-1])
  return rows


CHECKS = {}


def check(row_id):
  def register(fn):
    CHECKS[row_id] = fn
    return fn
  return register


def cli(main, argv) -> str:
  """`exit N: <last stderr line>` of an entry point's main run in this process."""
  gin.clear_config()
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      code = main(argv)
    except SystemExit as e:
      code = e.code
  lines = err.getvalue().strip().splitlines()
  return f"exit {code}: {lines[-1] if lines else ''}"


def gin_cli(module, argv) -> str:
  return cli(lambda a: gin_utils.run(module.main, a), argv)


def convert_cli(*argv) -> str:
  """`python -m flix.convert ARGV`'s message (see `cli`)."""
  return cli(convert.main, list(argv))


def raised(fn, *args, **kwargs) -> str:
  """`<ExceptionType>: <message>` of what `fn` raises ("no error" when nothing)."""
  try:
    fn(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  return "no error"


class Env:
  """Files the checks share, made on first use: a tiny flix checkpoint (tasks cardinal,
  ordinal; languages en, fr), a damaged copy, request files."""

  def __init__(self, root):
    self.root = root
    self._ckpt = self.params = None

  def path(self, *parts):
    return os.path.join(self.root, *parts)

  def empty_dir(self, name):
    """An existing directory under the root (kept across checks)."""
    path = self.path(name)
    os.makedirs(path, exist_ok=True)
    return path

  def fresh(self, name):
    """An absent path under the root (for MODEL_DIR / --out)."""
    path = self.path(name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
    return path

  def model(self):
    space = FeatureSpace.build({"task": ("cardinal", "ordinal"), "lang": ("en", "fr")})
    return T5(tiny.t5_config(vocab_size=260, num_encoder_layers=1, num_decoder_layers=1),
              FlixConfig(space, ranks={"task": 2, "lang": 2}))

  def checkpoint(self):
    if self._ckpt is None:
      model = self.model()
      self.params = tiny.random_params(model)
      self._ckpt = checkpoints.save_model(self.path("ckpt"), self.params, model.config,
                                          model.flix)
    return self._ckpt

  def damaged(self):
    """A copy of the checkpoint whose first array file is garbage."""
    path = self.path("damaged")
    if not os.path.exists(path):
      shutil.copytree(self.checkpoint(), path)
      store = sorted(d for d in os.listdir(os.path.join(path, "params"))
                     if d.startswith("decoder."))[0]
      chunk = [f for f in os.listdir(os.path.join(path, "params", store))
               if not f.startswith(".")][0]
      with open(os.path.join(path, "params", store, chunk), "wb") as f:
        f.write(b"not zstd")
    return path

  def requests(self, name, *lines):
    path = self.path(name)
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return Env(str(tmp_path_factory.mktemp("reliability")))


# -- gin and train settings ----------------------------------------------------------------------
def train(env, *bindings, model_dir=None) -> str:
  model_dir = model_dir or env.fresh("run")
  out = gin_cli(train_entry, [f"--gin_search_paths={GIN_DIR}",
                              f"--gin_file={GIN_DIR}/tiny_offline.gin",
                              f"--gin.MODEL_DIR='{model_dir}'", *bindings])
  assert not os.path.exists(model_dir), f"{model_dir} was written: {out}"
  return out


for _id, _bindings in {
    "train-steps-negative": ["--gin.TRAIN_STEPS=-5"],
    "train-steps-zero": ["--gin.TRAIN_STEPS=0"],
    "checkpoint-period-zero": ["--gin.CHECKPOINT_PERIOD=0"],
    "log-period-negative": ["--gin.LOG_PERIOD=-2"],
    "batch-size-zero": ["--gin.BATCH_SIZE=0"],
    "keep-checkpoints-zero": ["--gin.train.keep_checkpoints=0"],
    "feature-length-zero": ["--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 48}"],
    "train-steps-string": ["--gin.TRAIN_STEPS='8'"],
    "gin-unknown-parameter": ["--gin.train.foo=3"],
    "gin-unquoted-string": ["--gin.METHOD=flix"],
    "mesh-not-dividing-batch": ["--gin.MESH_SHAPE=(3, 2)"],
    "mesh-too-many-devices": ["--gin.MESH_SHAPE=(16, 1)"],
    "method-unknown": ["--gin.METHOD='adapters'"],
    "feature-ranks-unknown-type": ["--gin.FEATURE_RANKS={'task': 2, 'langue': 2}"],
    "feature-ranks-missing-type": ["--gin.FEATURE_RANKS={'task': 2}"],
    "feature-dropout-one": ["--gin.FEATURE_DROPOUT=1.0"],
    "optimizer-table-factor-bad": ["--gin.make_optimizer.table_min_dim_size_to_factor=0"],
    "offline-unseen-lang-unknown": ["--gin.OfflineConfig.unseen_langs=('es',)"],
}.items():
  check(_id)(lambda env, b=_bindings: train(env, *b))


@check("gin-unknown-flag")
def _(env):
  return train(env, "--steps=5")


@check("gin-no-file")
def _(env):
  return gin_cli(train_entry, [])


@check("gin-file-missing")
def _(env):
  return gin_cli(train_entry, ["--gin_file=experiments/nope.gin"])


@check("gin-missing-macro")
def _(env):
  return gin_cli(train_entry, [f"--gin_search_paths={GIN_DIR}",
                               f"--gin_file={GIN_DIR}/tiny_offline.gin"])


@check("gin-syntax-error")
def _(env):
  return train(env, "--gin.TRAIN_STEPS=(8")


# -- requests (flix.infer) -----------------------------------------------------------------------
FR = {"task": "ordinal", "lang": "fr"}


def infer(env, requests, *bindings, checkpoint=None) -> str:
  out = env.fresh("predictions.jsonl")
  result = gin_cli(infer_entry, [
      "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{checkpoint or env.checkpoint()}'",
      f"--gin.INPUT_FILE='{requests}'", f"--gin.OUTPUT_FILE='{out}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 4}", *bindings])
  if not result.startswith("exit 0"):
    assert not os.path.exists(out), result
    return result
  with open(out, encoding="utf-8") as f:
    return result + " " + f.read()


@check("request-file-missing")
def _(env):
  return infer(env, env.path("absent.jsonl"), checkpoint="unused")


@check("request-bad-json")
def _(env):
  return infer(env, env.requests("bad.jsonl", {"inputs": "1", "features": FR}, "{inputs: 2"),
               checkpoint="unused")


@check("request-no-inputs")
def _(env):
  return infer(env, env.requests("noinputs.jsonl", {"input": "12", "features": FR}),
               checkpoint="unused")


@check("request-features-not-object")
def _(env):
  return infer(env, env.requests("features.jsonl", {"inputs": "12", "features": "fr"}),
               checkpoint="unused")


@check("request-too-long-refused")
def _(env):
  return infer(env, env.requests("long.jsonl", {"inputs": "12", "features": FR},
                                 {"inputs": LONG, "features": FR}),
               "--gin.TRUNCATION='error'", checkpoint="unused")


@check("request-too-long-marked")
def _(env):
  return infer(env, env.requests("long1.jsonl", {"inputs": LONG, "features": FR}),
               "--gin.BATCH_SIZE=1")


@check("request-truncation-unknown")
def _(env):
  return infer(env, env.requests("ok.jsonl", {"inputs": "1", "features": FR}),
               "--gin.TRUNCATION='cut'", checkpoint="unused")


@check("request-batch-size-zero")
def _(env):
  return infer(env, env.requests("ok.jsonl", {"inputs": "1", "features": FR}),
               "--gin.BATCH_SIZE=0", checkpoint="unused")


@check("request-unknown-feature-value")
def _(env):
  return infer(env, env.requests("de.jsonl", {"inputs": "1", "features": {
      "task": "ordinal", "lang": "de"}}))


@check("request-unknown-feature-type")
def _(env):
  return infer(env, env.requests("topic.jsonl", {"inputs": "1", "features": {
      "task": "ordinal", "topic": "sports"}}))


# -- checkpoints ---------------------------------------------------------------------------------
@check("checkpoint-not-flix")
def _(env):
  return infer(env, env.requests("ok.jsonl", {"inputs": "1", "features": FR}),
               checkpoint=env.empty_dir("empty_dir"))


@check("checkpoint-damaged-array")
def _(env):
  return infer(env, env.requests("ok.jsonl", {"inputs": "1", "features": FR}),
               checkpoint=env.damaged())


def train_dir_with(env, name, damaged_step):
  """A copy of a MODEL_DIR with train checkpoints 1 and 2 of the tiny model (`damaged_step`'s
  damaged), a Checkpointer for it and a target state."""
  model = env.model()
  env.checkpoint()
  state = TrainState(step=jnp.int32(1), params=env.params, opt_state={},
                     rng=jnp.zeros((2,), jnp.uint32))
  model_dir = env.fresh(name)
  saver = Checkpointer(model_dir, model.config, model.flix)
  if not os.path.exists(env.path("train_dir")):
    writer = Checkpointer(env.path("train_dir"), model.config, model.flix)
    for step in (1, 2):
      writer.save(state.replace(step=jnp.int32(step)), step)
  shutil.copytree(env.path("train_dir"), model_dir)
  if damaged_step:
    path = os.path.join(model_dir, f"checkpoint_{damaged_step}", "params")
    store = sorted(d for d in os.listdir(path) if d.startswith("encoder."))[0]
    shutil.rmtree(os.path.join(path, store))
    os.makedirs(os.path.join(path, store))
  return model_dir, saver, state


@check("checkpoint-damaged-resume")
def _(env):
  model_dir, saver, state = train_dir_with(env, "resume", damaged_step=2)
  before = sorted(os.listdir(model_dir))
  out = raised(loop.restore_latest, saver, model_dir, state)
  assert sorted(os.listdir(model_dir)) == before  # Nothing deleted or moved.
  return out


@check("checkpoint-damaged-skip")
def _(env):
  model_dir, saver, state = train_dir_with(env, "skip", damaged_step=2)
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    _, position, path = loop.restore_latest(saver, model_dir, state, skip_damaged=True)
  assert path.endswith("checkpoint_1") and position == 1
  assert sorted(os.listdir(model_dir)) == ["checkpoint_1", "checkpoint_2.damaged"]
  return err.getvalue()


@check("checkpoint-other-model")
def _(env):
  model_dir, _, state = train_dir_with(env, "other", damaged_step=None)
  model = env.model()
  other = Checkpointer(model_dir, dataclasses.replace(model.config, num_heads=4), model.flix)
  return raised(loop.restore_latest, other, model_dir, state)


# -- evaluation ----------------------------------------------------------------------------------
@check("eval-unknown-mixture")
def _(env):
  return gin_cli(eval_entry, [f"--gin_search_paths={GIN_DIR}",
                              f"--gin_file={GIN_DIR}/tiny_eval.gin",
                              "--gin.CHECKPOINT_PATH='unused'",
                              f"--gin.EVAL_OUTPUT_DIR='{env.fresh('eval')}'",
                              "--gin.MIXTURE_OR_TASK_NAME='nope'"])


# -- data files ----------------------------------------------------------------------------------
def xtreme_file(env, name, *lines, lang="sw"):
  """A release file translation/train/en2{lang}.jsonl holding `lines` (dicts or raw bytes)."""
  directory = env.fresh(name)
  path = os.path.join(directory, "translation", "train", f"en2{lang}.jsonl")
  os.makedirs(os.path.dirname(path))
  with open(path, "wb") as f:
    f.write(b"\n".join(l if isinstance(l, bytes) else json.dumps(l).encode() for l in lines))
  return path


GOOD = {"input": "Habari", "target": "Hello"}
SW_TRANSLATION = Pair("translation", "sw")


def parse_release_file(path):
  return list(tfds_xtreme_up.examples(SW_TRANSLATION, path))


@check("xtreme-up-no-data-dir")
def _(env):
  return raised(xtreme_up.resolve_data_dir, env.path("no_xtreme"))


@check("xtreme-up-bad-json")
def _(env):
  return raised(parse_release_file, xtreme_file(env, "xu_json", GOOD, b'{"input": "x",'))


@check("xtreme-up-bad-utf8")
def _(env):
  return raised(parse_release_file,
                xtreme_file(env, "xu_utf8", GOOD, b'{"input": "\xff", "target": "a"}'))


@check("xtreme-up-missing-field")
def _(env):
  return raised(parse_release_file, xtreme_file(env, "xu_field", {"input": "Habari"}))


@check("xtreme-up-unknown-language-file")
def _(env):
  return raised(tfds_xtreme_up.parse_file_name, "translation",
                xtreme_file(env, "xu_lang", GOOD, lang="klingon"))


@check("xtreme-up-misnamed-file")
def _(env):
  path = os.path.join(env.fresh("xu_name"), "translation", "train", "sw.jsonl")
  return raised(tfds_xtreme_up.parse_file_name, "translation", path)


@check("morphology-no-release")
def _(env):
  from flix.data.morphology_tasks import register_morphology_experiment
  return raised(register_morphology_experiment, env.path("no_morph"))


@check("feature-ids-no-static-length")
def _(env):
  import seqio  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from flix.data.converter import data_n_types
  from flix.data.vocab import BYTE_VOCAB
  tokens = tf.TensorSpec([None], tf.int32)
  signature = {"inputs": tokens, "targets": tokens, "feature_ids": tokens}  # Any number of ids.
  rows = lambda: iter([{"inputs": [5], "targets": [6], "feature_ids": [0, 1]}])
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_generator(
          rows, output_signature=signature), splits=["train"])
  features = {k: seqio.Feature(BYTE_VOCAB) for k in ("inputs", "targets")}
  seqio.TaskRegistry.add("reliability_ragged_ids", source=source, output_features=features)
  try:
    return raised(data_n_types, "reliability_ragged_ids")
  finally:
    seqio.TaskRegistry.remove("reliability_ragged_ids")


@check("morphology-holdout-not-spec")
def _(env):
  from flix.data.morphology_tasks import register_morphology_experiment
  return raised(register_morphology_experiment, env.path("no_morph"), holdout="random")


@check("holdout-scheme-unknown")
def _(env):
  from flix.data.pairs import HoldOutSpec
  return raised(HoldOutSpec, "diag")


# -- conversion ----------------------------------------------------------------------------------
@check("hf-dir-missing")
def _(env):
  return convert_cli("from-hf", "--hf_dir", env.path("no_hf"), "--out", env.fresh("o"))


@check("hf-no-config")
def _(env):
  return convert_cli("from-hf", "--hf_dir", env.empty_dir("hf_empty"),
                     "--out", env.fresh("o"))


def hf_dir_with_config(env, name, **config):
  """A directory holding only a config.json of a tiny Llama with `config`'s changes."""
  path = env.empty_dir(name)
  llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64,
           "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
           "num_attention_heads": 4, "rope_theta": 10000.0}
  with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
    json.dump({**llama, **config}, f)
  return path


def from_hf_nothing_written(env, hf_dir) -> str:
  out = env.fresh("o")
  observed = convert_cli("from-hf", "--hf_dir", hf_dir, "--out", out)
  assert not os.path.exists(out)
  return observed


@check("hf-unsupported-architecture")
def _(env):
  return from_hf_nothing_written(
      env, hf_dir_with_config(env, "hf_gpt2", architectures=["GPT2LMHeadModel"]))


@check("hf-unsupported-rope")
def _(env):
  return from_hf_nothing_written(
      env, hf_dir_with_config(env, "hf_yarn", rope_scaling={"type": "yarn", "factor": 4.0}))


@check("t5x-missing")
def _(env):
  return convert_cli("from-t5x", "--t5x_dir", env.path("no_t5x"), "--out", env.fresh("o"))


@check("t5x-not-a-checkpoint")
def _(env):
  return convert_cli("from-t5x", "--t5x_dir", env.empty_dir("t5x_empty"),
                     "--out", env.fresh("o"))


@check("convert-out-exists")
def _(env):
  return convert_cli("from-t5x", "--t5x_dir", env.empty_dir("t5x_empty"),
                     "--out", env.path("t5x_empty"))


@check("convert-features-syntax")
def _(env):
  return convert_cli("to-hf", "--checkpoint", env.checkpoint(), "--features", "ordinal",
                     "--out", env.fresh("o"))


@check("convert-features-unknown-value")
def _(env):
  return convert_cli("to-hf", "--checkpoint", env.checkpoint(),
                     "--features", "task=ordinal,lang=xx", "--out", env.fresh("o"))


@check("convert-peft-no-features")
def _(env):
  return convert_cli("export-peft", "--checkpoint", env.checkpoint(),
                     "--out", env.fresh("o"))


# -- study runner --------------------------------------------------------------------------------
def study(*argv) -> str:
  from experiments.study import cli as study_cli
  return cli(study_cli.parse_args, list(argv))


for _id, _argv in {
    "study-no-out": [],
    "study-bad-seeds": ["--out", "x", "--seeds", "0,one"],
    "study-repeated-seeds": ["--out", "x", "--seeds", "1,1"],
    "study-unknown-grid": ["--out", "x", "--grids", "offline,xtreme"],
    "study-unknown-method": ["--out", "x", "--methods", "flix,adapters"],
    "study-few-bootstraps": ["--out", "x", "--n_boot", "10"],
    "study-finetune-steps-zero": ["--out", "x", "--finetune_steps", "0"],
    "study-learning-rate-range": ["--out", "x", "--finetune_learning_rate", "2"],
    "study-method-needs-offline-grid": ["--out", "x", "--grids", "morph", "--methods",
                                        "flix_task"],
    "study-lora-rank-zero": ["--out", "x", "--methods", "lora_r0"],
}.items():
  check(_id)(lambda env, a=_argv: study(*a))


# -- flix.compile --------------------------------------------------------------------------------
def compile_cli(env, *args, gin_file="tiny_offline.gin", mesh="4,2") -> tuple[str, str]:
  """(`python -m flix.compile ...`'s message, its --json path) on cpu:8 (see `cli`)."""
  out = env.fresh("compile.json")
  return cli(compile_entry.main, [f"--gin_search_paths={GIN_DIR}",
                                  f"--gin_file={GIN_DIR}/{gin_file}", "--topology=cpu:8",
                                  f"--mesh={mesh}", f"--json={out}", *args]), out


for _id, _args in {
    "compile-topology-unknown": ["--topology=tpu:4"],
    "compile-mesh-not-the-topology": ["--mesh=2,2"],
    "compile-feature-space-bad": ["--feature_space=task"],
    "partitioning-dims-unknown": ["--gin.Partitioner.parameter_partitioning_dims=3"],
    "partitioning-feature-shard-rows-bad": ["--gin.Partitioner.feature_shard_rows=0"],
    "remat-policy-unknown": ["--gin.train.step_config=@StepConfig()",
                             "--gin.StepConfig.remat_policy='some'"],
    "scan-layers-not-bool": ["--gin.train.step_config=@StepConfig()",
                             "--gin.StepConfig.scan_layers=1"],
}.items():
  check(_id)(lambda env, a=_args: compile_cli(env, *a)[0])


@check("compile-state-does-not-fit")
def _(env):
  message, out = compile_cli(env, "--gin.T5Config.emb_dim=1048576",
                             "--gin.T5Config.vocab_size=250112")
  assert not os.path.exists(out), message
  return message


@check("compile-step-does-not-fit")
def _(env):
  message, out = compile_cli(env, "--feature_space=task:2,lang:2",
                             "--gin.TARGETS=('*attention.query',)", "--gin.BATCH_SIZE=65536",
                             "--gin.TASK_FEATURE_LENGTHS={'inputs': 2048, 'targets': 2048}",
                             gin_file="tiny_decoder.gin", mesh="8,1")
  with open(out) as f:
    assert json.load(f)["fits"] is False, message
  return message


@check("study-confirm-missing-run")
def _(env):
  from experiments.study import confirm  # pylint: disable=import-outside-toplevel
  return cli(confirm.main, ["--archive", env.fresh("archive"), "--flix", "flix_derived_p0.0",
                            "--lora", "lora", "--seeds", "3-12", "--out",
                            env.fresh("confirmatory.json")])


# -- the matrix ----------------------------------------------------------------------------------
ROWS = doc_rows()


def test_table_covers_every_area_and_check():
  assert len(ROWS) >= 30
  assert {area for area, _ in ROWS.values()} == AREAS
  assert set(ROWS) == set(CHECKS), (sorted(set(ROWS) - set(CHECKS)),
                                    sorted(set(CHECKS) - set(ROWS)))


@pytest.mark.parametrize("row_id", sorted(ROWS))
def test_row(env, row_id):
  _, outcome = ROWS[row_id]
  documented = re.findall(r"`([^`]+)`", outcome)
  assert documented, f"row {row_id} documents no outcome text"
  observed = CHECKS[row_id](env)
  for text in documented:
    assert text in observed, f"{row_id}: {text!r} not in {observed!r}"
