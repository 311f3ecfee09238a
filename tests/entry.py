"""The gin entry points (`python -m flix.train|eval|infer`) run in this process, as a user's
command line would run them, and what the tests read back from their model directories."""

import os
import shutil

import gin
import jax
import numpy as np
import pytest

from flix import checkpoints, gin_utils

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)
GIN_DIR = os.path.join(TESTS_DIR, "gin")
TINY_OFFLINE = os.path.join(GIN_DIR, "tiny_offline.gin")


def run_entry(module, *argv) -> int:
  """`python -m <module> --gin_search_paths=tests/gin ARGV` in this process, gin's config
  cleared first; returns the exit code (0 done, 1 a user error, printed as one line)."""
  gin.clear_config()
  with pytest.raises(SystemExit) as exit_info:
    gin_utils.run(module.main, [f"--gin_search_paths={GIN_DIR}", *argv])
  return exit_info.value.code


def run_train(model_dir, *bindings) -> int:
  """`python -m flix.train` on tests/gin/tiny_offline.gin into `model_dir`."""
  from flix import train as train_entry
  return run_entry(train_entry, f"--gin_file={TINY_OFFLINE}", f"--gin.MODEL_DIR='{model_dir}'",
                   *bindings)


def saved_state(path):
  """(params, the rest of the train state) of a checkpoint directory."""
  _, _, params = checkpoints.load_model(str(path))
  rest = checkpoints.restore_pytree(os.path.join(path, "train_state"))
  return params, rest


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def copy_run(model_dir, dest, *, drop_steps=(), dirs_exist_ok=False):
  """A copy of a run's model directory at `dest` without checkpoint_{s} for s in `drop_steps`:
  a run that stopped earlier, to resume or to write into without touching the original."""
  shutil.copytree(model_dir, dest, dirs_exist_ok=dirs_exist_ok)
  for step in drop_steps:
    shutil.rmtree(os.path.join(dest, f"checkpoint_{step}"))
  return dest


def tiny_data():
  """tests/gin/tiny_data.gin's offline benchmark: 2 tasks x 3 languages (de unseen)."""
  from flix.data.offline import OfflineConfig
  return OfflineConfig(tasks=("cardinal", "ordinal"), langs=("en", "fr", "de"),
                       unseen_langs=("de",), n_train=24, n_validation=4, n_test=4,
                       input_length=24, target_length=48)
