"""`python -m flix.demo --quick`: the main job end to end, with its output schema."""

import json
import math

import matplotlib.image
import pytest

from flix import demo

SPLITS = {"seen", "unseen_pair", "unseen_lang"}


@pytest.mark.slow
def test_quick_demo_writes_results_heatmap_and_report(tmp_path):
  out, cache = tmp_path / "out", tmp_path / "cache"
  assert demo.main(["--quick", "--out", str(out), "--cache_dir", str(cache)]) == 0
  results = json.loads((out / "results.json").read_text())
  assert isinstance(results["wall_seconds"], float) and results["wall_seconds"] > 0
  assert set(results["methods"]) == {"lora", "flix"}
  cells_by_method = {}
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
    cells_by_method[name] = [(c["task"], c["lang"], c["split"], c["n"]) for c in m["cells"]]
  assert cells_by_method["lora"] == cells_by_method["flix"]  # Same cells, same examples.
  # LoRA's rank equals FLix's summed active rank, so FLix holds more parameters in total.
  assert results["methods"]["flix"]["params_trained"] > results["methods"]["lora"]["params_trained"]
  image = matplotlib.image.imread(out / "heatmap.png")
  assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  assert "| flix |" in (out / "report.md").read_text()
  # A second run reuses the cached base and refuses to overwrite results.
  assert demo.main(["--quick", "--out", str(out), "--cache_dir", str(cache)]) == 1
  assert len(list(cache.iterdir())) == 1


@pytest.mark.parametrize("flag", ["--finetune_steps", "--feature_rank"])
def test_bad_sizes_are_refused_before_anything_runs(tmp_path, capsys, flag):
  with pytest.raises(SystemExit):
    demo.main(["--quick", flag, "0", "--out", str(tmp_path / "out")])
  assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
