"""Smoke test of `python -m experiments.bench layer` at tiny sizes."""

import json

import pytest

from experiments.bench import layer
from experiments.bench.__main__ import main
from experiments.bench.synthetic import feature_config

TINY = ["layer", "--d", "32", "--batch", "4", "--length", "8", "--F", "8,64", "--repeats", "2"]
KEYS = {"strategy", "F", "seconds", "ratio_vs_lora_r16", "ratio_vs_own_smallest_F", "all_seconds"}


@pytest.mark.bench
def test_layer_bench_writes_schema(tmp_path, capsys):
  out = tmp_path / "bench.json"
  main(TINY + ["--json", str(out)])
  data = json.loads(out.read_text())
  assert set(data) == {"config", "records", "bar"}
  assert data["config"]["F"] == [8, 64] and data["config"]["repeats"] == 2
  records = data["records"]
  names = [(r["strategy"], r["F"]) for r in records]
  assert names[:3] == [("base", None), ("lora_r8", None), ("lora_r16", None)]
  for n in (8, 64):
    for s in ("masked", "gather", "ragged", "auto_dense", "auto"):
      assert (s, n) in names
  ref = next(r["seconds"] for r in records if r["strategy"] == "lora_r16")
  for r in records:
    assert KEYS <= set(r), r
    assert ("resolved" in r) == r["strategy"].startswith("auto")
    if r.get("skipped"):
      assert r["seconds"] is None and r["all_seconds"] == []
      continue
    assert r["seconds"] > 0 and len(r["all_seconds"]) == 2
    assert r["ratio_vs_lora_r16"] == pytest.approx(r["seconds"] / ref, rel=1e-12)
  auto = {r["F"]: r for r in records if r["strategy"] == "auto"}
  # 2 types x 4 rows x rank 8 = 64 columns, 4x an example's 16: gather.
  assert auto[8]["resolved"] == "gather"
  assert auto[64]["ratio_vs_own_smallest_F"] == pytest.approx(
      auto[64]["seconds"] / auto[8]["seconds"], rel=1e-12)
  # Every path sees the same x, tables and ids at one F, so the losses agree.
  for n in (8, 64):
    losses = [r["loss"] for r in records if r["F"] == n]
    assert losses == pytest.approx([losses[0]] * len(losses), rel=1e-4)
  bar = data["bar"]
  assert bar["largest_F"] == 64 and bar["smallest_F"] == 8
  # The bar reads the records of its largest F; whether it holds is the machine's business.
  assert bar["auto_vs_lora_r16"] == auto[64]["ratio_vs_lora_r16"]
  assert bar["auto_vs_auto_smallest_F"] == auto[64]["ratio_vs_own_smallest_F"]
  assert isinstance(bar["holds"], bool)
  assert "bar" in capsys.readouterr().out


def test_skips_are_recorded_with_reason():
  flix = feature_config(8192, 8)
  assert "masked" in layer.skip_reason("masked", flix, 8192)
  assert "ragged_dot" in layer.skip_reason("ragged", flix, 8192)
  assert layer.skip_reason("gather", flix, 8192) is None
  assert layer.skip_reason("masked", feature_config(1024, 8), 1024) is None
