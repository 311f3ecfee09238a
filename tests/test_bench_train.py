"""Smoke test of `python -m experiments.bench train` at tiny sizes."""

import json

import pytest

from experiments.bench.__main__ import main

TINY = ["train", "--emb-dim", "16", "--mlp-dim", "32", "--num-heads", "2", "--head-dim", "8",
        "--layers", "1", "--batch", "4", "--in-len", "8", "--out-len", "4", "--F", "8",
        "--methods", "lora_r16,flix_sparse", "--optimizers", "adafactor",
        "--repeats", "2"]


@pytest.mark.bench
def test_train_bench_writes_schema(tmp_path, capsys):
  out = tmp_path / "bench.json"
  main(TINY + ["--json", str(out)])
  data = json.loads(out.read_text())
  assert set(data) == {"config", "records", "largest_F"}
  names = [(r["method"], r["F"], r["optimizer"]) for r in data["records"]]
  assert names == [("lora_r16", None, "adafactor"), ("flix_sparse", 8, "adafactor")]
  tokens = 4 * (8 + 4)
  for r in data["records"]:
    assert len(r["all_seconds"]) == 2 and r["seconds"] > 0
    assert r["tokens_per_s"] == pytest.approx(tokens / r["seconds"])
    assert r["peak_bytes"] >= r["state_bytes"] > 0
    assert r["loss"] > 0
  assert data["records"][0]["ratio_vs_lora_r16"] == 1.0
  assert "largest F in 24 GiB" in capsys.readouterr().out


def test_methods_must_include_the_reference():
  with pytest.raises(SystemExit):
    main(["train", "--methods", "full"])
