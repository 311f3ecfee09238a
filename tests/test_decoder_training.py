"""flix.train / flix.eval / flix.infer with a decoder-only model chosen by gin
(models/decoder_tiny.gin): the offline benchmark's tasks unchanged, FLix adapters on a base
checkpoint with adapter-only checkpoints and row-sparse steps, evaluation and raw inference
(resume is family-independent: tests/test_training.py)."""

import json
import os

import gin
import jax
import numpy as np

from flix import checkpoints, gin_utils
from flix import eval as eval_entry, infer as infer_entry, train as train_entry
from flix.models.decoder import DecoderConfig, DecoderLM
from flix.training.checkpointer import step_dirs
from entry import GIN_DIR, run_entry
import tiny

GIN = os.path.join(GIN_DIR, "tiny_decoder.gin")
# Short decodes: an untrained tiny model never stops before max_length.
LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 12}"


def test_decoder_only_train_eval_infer(tmp_path, capsys):
  """A base checkpoint (as from-hf writes one), FLix on it, evaluated, served."""
  tuned = tmp_path / "tuned"
  steps = ["--gin.TRAIN_STEPS=2", "--gin.CHECKPOINT_PERIOD=2", "--gin.LOG_PERIOD=1"]
  gin.clear_config()
  gin_utils.parse_gin([GIN], ["MODEL_DIR = 'unused'"], [GIN_DIR])
  config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
  gin.clear_config()
  assert isinstance(config, DecoderConfig) and config.emb_dim == 32
  base_params = tiny.decoder_random_params(DecoderLM(config))
  base = checkpoints.save_model(str(tmp_path / "base"), base_params, config)
  assert json.loads(open(os.path.join(base, "model.json")).read())["family"] == "decoder"

  # FLix on the frozen base, row-sparse steps.
  assert run_entry(train_entry, f"--gin_file={GIN}", "--gin_file=runs/row_sparse.gin", f"--gin.MODEL_DIR='{tuned}'",
             f"--gin.INITIAL_CHECKPOINT_PATH='{base}'", LENGTHS, *steps) == 0
  assert [s for s, _ in step_dirs(str(tuned))] == [2]
  ckpt = tuned / "checkpoint_2"
  assert json.loads((ckpt / "base.json").read_text()) == {"base_checkpoint": base}
  saved = checkpoints.restore_pytree(str(ckpt / "params"))
  assert all(str(p[-1].key).startswith("lora_")
             for p, _ in jax.tree_util.tree_leaves_with_path(saved))  # Adapter-only.
  _, flix, params = checkpoints.load_model(str(ckpt))
  assert flix.space.names == ("task", "lang")
  jax.tree.map(np.testing.assert_array_equal, checkpoints.strip_adapters(params),
               jax.tree.map(np.asarray, base_params))
  b = params["layers_0"]["attention"]["query"]["lora_b_task"]
  assert np.any(b != 0)  # B started at zero.
  losses = [json.loads(l)["loss"] for l in (tuned / "metrics.jsonl").read_text().splitlines()]
  assert len(losses) == 2 and all(np.isfinite(losses))

  out = tmp_path / "eval"
  assert run_entry(eval_entry, "--gin_file=tiny_eval.gin",
             f"--gin.CHECKPOINT_PATH='{ckpt}'", f"--gin.EVAL_OUTPUT_DIR='{out}'", LENGTHS) == 0
  report = json.loads((out / "report.json").read_text())
  assert set(report["by_kind"]) == {"seen_pair", "unseen_pair", "unseen_language"}
  record = json.loads((out / "predictions" / "flix_offline.ordinal.fr.jsonl").read_text()
                      .splitlines()[0])
  assert record["feature_ids"] == [1, 1] and isinstance(record["prediction"], str)

  requests = tmp_path / "requests.jsonl"
  requests.write_text(json.dumps({"inputs": "ordinal fr: 12",
                                  "features": {"task": "ordinal", "lang": "fr"}}) + "\n")
  predictions = tmp_path / "out.jsonl"
  assert run_entry(infer_entry, "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{ckpt}'",
             f"--gin.INPUT_FILE='{requests}'", f"--gin.OUTPUT_FILE='{predictions}'",
             LENGTHS, "--gin.BATCH_SIZE=8") == 0
  result, = [json.loads(l) for l in predictions.read_text().splitlines()]
  assert isinstance(result["prediction"], str) and result["score"] <= 0
  capsys.readouterr()
