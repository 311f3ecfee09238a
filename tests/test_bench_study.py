"""`python -m experiments.bench study` on the quick study's grid: schema, strategies, equal losses."""

import json
import re

import pytest

from experiments.bench.__main__ import main


@pytest.mark.bench
def test_study_step_bench_times_each_strategy_of_the_same_computation(tmp_path, capsys):
  out = tmp_path / "bench.json"
  main(["study", "--quick", "--methods", "lora,flix_p0.0", "--strategies", "auto,masked",
        "--repeats", "1", "--settle", "0", "--json", str(out)])
  data = json.loads(out.read_text())
  assert data["config"]["model"]["emb_dim"] == 64 and data["config"]["batch"] == 16
  rows = [(r["method"], r["strategy"], r["resolved"], r["optimizer"]) for r in data["records"]]
  # The quick grid's flix_p0.0: (3 tasks + 3 or 4 languages) x rank 8 columns, 3x or more an
  # example's 16: auto is gather.
  assert rows == [("lora", None, None, "adamw"), ("flix_p0.0", "auto", "gather", "adamw"),
                  ("flix_p0.0", "masked", "masked", "adamw")]
  lora, gather, masked = data["records"]
  assert lora["ratio_vs_lora"] == 1.0
  assert gather["ratio_vs_lora"] == pytest.approx(gather["seconds"] / lora["seconds"])
  # Two steps (warm-up + timed) from B = 0: the adapters moved the loss away from LoRA's, and the
  # two strategies compute the same update.
  assert gather["loss"] != lora["loss"]
  assert masked["loss"] == pytest.approx(gather["loss"], rel=1e-5)
  for r in data["records"]:
    assert len(r["all_seconds"]) == 1 and r["seconds"] > 0 and r["hlo_lines"] > 1000
  assert re.search(r"\| flix_p0\.0 +\| auto \(gather\) +\|", capsys.readouterr().out)


@pytest.mark.parametrize("flags, message", [
    (["--methods", "flix"], "--methods must include 'lora'"),
    (["--methods", "lora,flux"], "unknown study methods ['flux']"),
    (["--strategies", "masked,dense"], "--strategies must be a non-empty subset"),
    (["--optimizers", "adafactor"], "--optimizers must be a non-empty subset"),
])
def test_study_step_bench_refuses_bad_flags(flags, message, capsys):
  with pytest.raises(SystemExit):
    main(["study"] + flags)
  assert message in capsys.readouterr().err
