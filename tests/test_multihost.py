"""scripts/multihost_cpu.sh: 2 processes x 4 CPU devices train like 1 process x 8 devices
reading the same 2 seqio shards; they share one MODEL_DIR, save, resume and stop on SIGTERM."""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from flix import checkpoints
from flix.training.checkpointer import step_dirs
from entry import ROOT, run_train, saved_state

SMALL = ["--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1",
         "--gin.LOG_PERIOD=1"]
SCRIPT = os.path.join(ROOT, "scripts", "multihost_cpu.sh")


def losses(path):
  return [json.loads(l)["loss"] for l in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_save_resume_stop_and_match_one(tmp_path):
  mh, one = tmp_path / "mh", tmp_path / "one"
  # The second run reuses the first one's compiled programs.
  base_env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
                  TIMEOUT="240")
  # 2 steps, then a checkpoint at the end and a normal exit.
  env = dict(base_env, TRAIN_STEPS="2")
  proc = subprocess.run([SCRIPT, str(mh), *SMALL], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [s for s, _ in step_dirs(str(mh))] == [2]
  # Resume from checkpoint_2; SIGTERM to the script (and so to both processes) once step 3 is
  # logged: both save at the step they agree on, then exit 143.
  env = dict(base_env, TRAIN_STEPS="1000", CHECKPOINT_PERIOD="1000")
  proc = subprocess.Popen([SCRIPT, str(mh), *SMALL], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  start = time.time()
  while len(losses(mh / "metrics.jsonl")) < 3:
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() - start < 240, "timed out"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
  (two, _), (stop, last) = step_dirs(str(mh))
  assert two == 2 and 3 <= stop < 1000
  for i in (0, 1):
    log = (mh / f"process_{i}.log").read_text()
    assert f"stopped by SIGTERM; checkpoint saved at {last}" in log, log[-2000:]
  assert sorted(os.listdir(mh)) == [f"checkpoint_{n}" for n in (2, stop)] + [
      "config.gin", "metrics.jsonl", "process_0.log", "process_1.log", "train"]
  meta = json.loads((mh / f"checkpoint_{stop}" / "train_state.json").read_text())
  assert meta == {"step": stop, "data_position": stop, "data_shards": 2, "pack": False}

  # One process, 8 devices, the same 2 shards: the same batches.
  assert run_train(one, *SMALL, f"--gin.TRAIN_STEPS={stop}", "--gin.CHECKPOINT_PERIOD=2",
                   "--gin.train.keep_checkpoints=1000", "--gin.MESH_SHAPE=(8, 1)",
                   "--gin.train.data_shards=2") == 0
  multi = losses(mh / "metrics.jsonl")
  assert len(multi) == stop
  # Cross-process all-reduces (gloo) may sum in another order: float32 rounding only.
  np.testing.assert_allclose(multi, losses(one / "metrics.jsonl"), rtol=1e-5)
  for step in 2, stop:
    (pa, ra), (pb, rb) = (saved_state(d / f"checkpoint_{step}") for d in (mh, one))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                 (pa, ra["opt_state"]), (pb, rb["opt_state"]))
    np.testing.assert_array_equal(ra["rng"], rb["rng"])
  assert checkpoints.load_configs(str(mh / f"checkpoint_{stop}")) == checkpoints.load_configs(
      str(one / f"checkpoint_{stop}"))
