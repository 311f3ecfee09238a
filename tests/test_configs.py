"""The packaged gin files: training and evaluation register the same data, every file says
what it requires."""

import glob
import os

import gin
import pytest

from flix import gin_utils

# Each data gin's registration function, and the training / evaluation files that include it.
DATA = {
    "offline": ("register_offline", "offline_flix", "offline_lora", "offline_eval"),
    "morph": ("register_morphology_experiment", "morph_flix", "morph_lora", "morph_eval"),
    "xtreme_up": ("register_xtreme_up_experiment", "xtreme_up_flix", "xtreme_up_lora",
                  "xtreme_up_eval"),
}
REQUIRED = ["MODEL_DIR='/tmp/m'", "TRAIN_STEPS=1", "INITIAL_CHECKPOINT_PATH=None",
            "CHECKPOINT_PATH='/tmp/c'", "EVAL_OUTPUT_DIR='/tmp/e'", "MORPH_DIR='/tmp/d'"]


def resolve(value):
  """A bound value with its macros and references evaluated (vocabularies, configs)."""
  if isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn()
    return value() if callable(value) and not isinstance(value, type) else value
  return value


def registration_bindings(experiment: str, function: str) -> dict:
  """`function`'s parameters as `experiment`'s gin files bind them, resolved."""
  gin.clear_config()
  try:
    gin_utils.parse_gin([f"experiments/{experiment}.gin"],
                        [b.replace("=", " = ", 1) for b in REQUIRED], [])
    names = [line.split("=")[0].strip().split(".", 1)[1]
             for line in gin.config_str().splitlines() if line.startswith(f"{function}.")]
    values = {n: resolve(gin.query_parameter(f"{function}.{n}")) for n in names}
    values["TASK_FEATURE_LENGTHS"] = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    return values
  finally:
    gin.clear_config()


@pytest.mark.parametrize("data", sorted(DATA))
def test_training_and_evaluation_register_the_same_data(data):
  function, *experiments = DATA[data]
  bound = {e: registration_bindings(e, function) for e in experiments}
  train = bound[experiments[0]]
  assert "vocabulary" in train and len(train) > 2, train
  for name, values in bound.items():
    assert values == train, f"{name}.gin registers other data than {experiments[0]}.gin"
  # The data is bound in one file, data/<name>.gin, that every experiment includes.
  for name in experiments:
    text = open(os.path.join(gin_utils.CONFIGS_DIR, "experiments", f"{name}.gin")).read()
    assert f"{function}." not in text.replace(f"@{function}()", ""), name


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(gin_utils.CONFIGS_DIR, "*",
                                                               "*.gin"))),
                         ids=lambda p: os.path.relpath(p, gin_utils.CONFIGS_DIR))
def test_every_gin_file_starts_with_its_required_macros(path):
  with open(path) as f:
    header = []
    for line in f:
      if not line.startswith("#"):
        break
      header.append(line)
  assert header and not header[0].startswith("# Required"), "a one-line description first"
  assert any(line.startswith("# Required") for line in header), f"{path}: no '# Required' line"
