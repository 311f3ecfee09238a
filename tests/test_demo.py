"""`python -m experiments.demo --quick`: the main job end to end, with its output schema."""

import json
import math

import matplotlib.image
import pytest

from experiments import demo

SPLITS = {"seen", "unseen_pair", "unseen_lang"}
# Seen cells' character error rate against the untrained base's (quick run: 0.39-0.44;
# untrained adapters give 1.0, since B = 0 makes every method the base).
MAX_CER_RATIO = 0.6


@pytest.mark.slow
def test_quick_demo_writes_results_heatmap_and_report(tmp_path):
  out, cache = tmp_path / "out", tmp_path / "cache"
  assert demo.main(["--quick", "--out", str(out), "--cache_dir", str(cache)]) == 0
  results = json.loads((out / "results.json").read_text())
  assert isinstance(results["wall_seconds"], float) and results["wall_seconds"] > 0
  assert list(results["methods"]) == ["lora", "flix", "flix_derived"]
  base = results["base"]
  assert set(base["summary"]) == SPLITS
  cells_by_method = {"base": [(c["task"], c["lang"], c["split"], c["n"]) for c in base["cells"]]}
  for name, m in results["methods"].items():
    assert isinstance(m["params_trained"], int) and m["params_trained"] > 0
    # Fails when nothing is learned: fine-tuning must cut the training loss well down.
    assert m["train_loss"]["last"] < 0.7 * m["train_loss"]["first"], (name, m["train_loss"])
    assert {c["split"] for c in m["cells"]} == SPLITS
    for c in m["cells"]:
      assert set(c) == {"task", "lang", "split", "metric", "value", "n"}
      assert c["metric"] == "exact_match" and 0.0 <= c["value"] <= 1.0 and c["n"] > 0
    assert set(m["summary"]) == SPLITS and set(m["validation_summary"]) == SPLITS
    for kind, value in m["summary"].items():
      values = [c["value"] for c in m["cells"] if c["split"] == kind]
      assert math.isclose(value, sum(values) / len(values))
    # Fails when nothing is learned: seen cells decode clearly better than the untrained base
    # (character error rate; 150 steps of a tiny model rarely get a whole date exactly right).
    assert m["summary_cer"]["seen"] <= MAX_CER_RATIO * base["summary_cer"]["seen"], (
        name, m["summary_cer"], base["summary_cer"])
    assert m["summary"]["seen"] >= base["summary"]["seen"], (name, m["summary"], base["summary"])
    cells_by_method[name] = [(c["task"], c["lang"], c["split"], c["n"]) for c in m["cells"]]
  # Same cells, same examples for the base and every method.
  assert len({tuple(cells) for cells in cells_by_method.values()}) == 1
  # LoRA's rank equals FLix's summed active rank, so FLix holds more parameters in total.
  params = {name: m["params_trained"] for name, m in results["methods"].items()}
  assert params["flix"] > params["flix_derived"] > params["lora"], params
  assert results["methods"]["flix_derived"]["spec"]["derived"] == ["family", "script"]
  image = matplotlib.image.imread(out / "heatmap.png")
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  assert "| flix |" in (out / "report.md").read_text()
  # A second run reuses the cached base and refuses to overwrite results.
  assert demo.main(["--quick", "--out", str(out), "--cache_dir", str(cache)]) == 1
  assert len(list(cache.iterdir())) == 1


@pytest.mark.parametrize("args, message", [
    (["--finetune_steps", "0"], "--finetune_steps must be >= 1, got 0"),
    (["--methods", "lora,flixx"], "unknown method 'flixx'; known: ["),
    (["--methods", "lora", "--ablation", "dropout"], "give --methods or --ablation, not both"),
])
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, capsys, args, message):
  with pytest.raises(SystemExit):
    demo.main(["--quick", *args, "--out", str(tmp_path / "out")])
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
