"""scripts/multihost_cpu.sh: 2 processes x 4 CPU devices train like 1 process x 8 devices."""

import json
import os
import subprocess

import numpy as np

from test_training import ROOT, run_train

SMALL = ["--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1",
         "--gin.LOG_PERIOD=1"]


def losses(path):
  return [json.loads(l)["loss"] for l in path.read_text().splitlines()]


def test_two_processes_match_one(tmp_path):
  env = dict(os.environ, TRAIN_STEPS="2", TIMEOUT="240")
  proc = subprocess.run([os.path.join(ROOT, "scripts", "multihost_cpu.sh"), str(tmp_path / "mh"),
                         *SMALL], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  one = tmp_path / "one"
  assert run_train(one, *SMALL, "--gin.TRAIN_STEPS=2", "--gin.MESH_SHAPE=(8, 1)") == 0
  multi = losses(tmp_path / "mh" / "process_0" / "metrics.jsonl")
  assert len(multi) == 2
  assert multi == losses(tmp_path / "mh" / "process_1" / "metrics.jsonl")
  # Cross-process all-reduces (gloo) may sum in another order: float32 rounding only.
  np.testing.assert_allclose(multi, losses(one / "metrics.jsonl"), rtol=1e-5)
