"""`python -m experiments.bench peft` (T5 and `--arch decoder`) at tiny sizes: JSON schema, equivalence
checks, missing extra, bad flags."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from experiments.bench import peft
from experiments.bench.__main__ import main, parse_args

SIZES = ["--emb-dim", "32", "--mlp-dim", "48", "--num-heads", "2", "--head-dim", "8",
         "--layers", "2", "--batch", "8", "--in-len", "12", "--out-len", "6", "--F", "8",
         "--rank", "4", "--threads", "1"]
TINY = ["peft"] + SIZES + ["--adapters", "1,2,4", "--repeats", "2", "--infer-repeats", "2",
                           "--warmup", "1"]
KEYS = {"bench", "framework", "method", "F", "adapters", "tokens", "seconds", "min_seconds",
        "all_seconds", "tokens_per_s", "speedup_vs_torch"}


@pytest.mark.bench
def test_peft_bench_writes_schema(tmp_path, capsys):
  out = tmp_path / "peft.json"
  main(TINY + ["--json", str(out)])
  data = json.loads(out.read_text())
  assert set(data) == {"config", "checks", "records", "bars"}
  assert data["config"]["adapters"] == [1, 2, 4] and data["config"]["torch_threads"] == 1
  names = [(r["bench"], r["framework"], r["method"], r["adapters"]) for r in data["records"]]
  assert names == [("train", "torch+peft", "lora", None), ("train", "flix", "lora", None),
                   ("train", "flix", "flix", None),
                   ("infer", "torch+peft", "base", None), ("infer", "torch+peft", "lora", None)
                   ] + [("infer", "torch+peft", "mixed", n) for n in (1, 2, 4)] + [
                   ("infer", "flix", "base", None), ("infer", "flix", "lora", None)] + [
                   ("infer", "flix", "flix", n) for n in (1, 2, 4)]
  tokens = 8 * (12 + 6)
  for r in data["records"]:
    assert KEYS <= set(r), r
    assert len(r["all_seconds"]) == 2 and all(math.isfinite(t) and t > 0 for t in r["all_seconds"])
    assert r["seconds"] >= r["min_seconds"] > 0 and r["tokens"] == tokens
    assert r["tokens_per_s"] == pytest.approx(tokens / r["seconds"])
    assert math.isfinite(r["speedup_vs_torch"]) and r["speedup_vs_torch"] > 0
    assert (r["F"] == 8) == (r["method"] == "flix")
    if r["framework"] == "torch+peft":
      assert r["speedup_vs_torch"] == 1.0
    if r["bench"] == "infer":
      assert r["ratio_vs_base"] > 0
  by = {(r["bench"], r["framework"], r["method"], r["adapters"]): r for r in data["records"]}
  flix4, peft4 = by[("infer", "flix", "flix", 4)], by[("infer", "torch+peft", "mixed", 4)]
  assert flix4["speedup_vs_torch"] == pytest.approx(peft4["seconds"] / flix4["seconds"])
  # The equivalence checks ran and were tight; the adapters changed the logits.
  checks = data["checks"]
  assert checks["lora_logits_max_abs_diff"] < 1e-4 and checks["lora_grad_max_rel_diff"] < 1e-3
  assert checks["lora_trainable_values"] > 0
  for n in (1, 2, 4):
    assert checks[f"mixed_{n}_logits_max_abs_diff"] < 1e-4
    assert checks[f"mixed_{n}_adapter_effect_max_abs"] > 0.01
  bars = data["bars"]
  assert bars["infer_mixed"]["adapters"] == 4 and not bars["infer_mixed"]["is_the_issue_setting"]
  train = bars["train_lora"]
  assert isinstance(train["holds"], bool)
  assert train["flix_vs_peft"] == pytest.approx(
      by[("train", "flix", "lora", None)]["tokens_per_s"] /
      by[("train", "torch+peft", "lora", None)]["tokens_per_s"])
  assert "bar" in capsys.readouterr().out


@pytest.mark.bench
def test_equivalence_check_catches_a_different_adapter():
  """A PEFT model whose adapter differs from flix's fails the check loudly."""
  args = parse_args(TINY)
  s = peft.build(args, torch, *peft.require_hf()[1:])
  peft.check_equivalence(torch, s, [1, 4])  # Passes as built.
  lora_b = dict(s.mixed.named_parameters())[
      "base_model.model.decoder.block.1.layer.2.DenseReluDense.wo.lora_B.c3.weight"]
  with torch.no_grad():
    lora_b.mul_(1.5)
  peft.check_equivalence(torch, s, [1])  # c3 is not used with one adapter.
  with pytest.raises(AssertionError, match="PEFT mixed batch vs FLix batch with 4"):
    peft.check_equivalence(torch, s, [4])
  lora_a = dict(s.peft_lora.named_parameters())[
      "base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.default.weight"]
  with torch.no_grad():
    lora_a.add_(0.1)
  with pytest.raises(AssertionError, match="PEFT LoRA vs flix LoRA logits"):
    peft.check_equivalence(torch, s, [1])


def test_assert_close_tolerance():
  ref = np.array([[10.0, -3.0]])
  assert peft.assert_close(ref + 5e-4, ref, "x") == pytest.approx(5e-4)
  with pytest.raises(AssertionError, match="x: max"):
    peft.assert_close(ref + 2e-3, ref, "x")


def test_missing_hf_extra_is_one_clear_line(monkeypatch):
  monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError.
  with pytest.raises(SystemExit) as e:
    main(TINY)
  message = str(e.value)
  assert "\n" not in message and "hf extra" in message and ".[hf]" in message


# The decoder bench at its cheapest: one layer, one timed round (no timing assertions). The whole
# run is slow (two train steps to compile: ~40 s of CPU); the fast test below builds the same
# models and runs every equivalence check (~25 s of CPU).
DECODER = ["peft", "--arch", "decoder", "--emb-dim", "32", "--mlp-dim", "48", "--num-heads", "2",
           "--num-kv-heads", "1", "--head-dim", "8", "--layers", "1", "--batch", "8", "--in-len",
           "12", "--out-len", "6", "--F", "8", "--rank", "4", "--threads", "1", "--adapters",
           "1,4", "--repeats", "1", "--infer-repeats", "1", "--warmup", "1"]


def assert_decoder_checks(checks: dict) -> None:
  """Every check of the DECODER bench ran and was tight; the adapters changed the logits."""
  # LoRA r 4 on 1 layer: A [4, in] + B [4, out] for each (in, out) of q, k, v, o, gate, up, down.
  in_out = [(32, 16), (32, 8), (32, 8), (16, 32), (32, 48), (32, 48), (48, 32)]
  assert checks["lora_trainable_values"] == sum(4 * (i + o) for i, o in in_out) == 1664
  assert checks["lora_logits_max_abs_diff"] < 1e-4 and checks["lora_loss_abs_diff"] < 1e-4
  assert checks["lora_grad_max_rel_diff"] < 1e-3 and checks["hf_base_logits_max_abs_diff"] < 1e-4
  for n in (1, 4):
    assert checks[f"mixed_{n}_logits_max_abs_diff"] < 1e-4
    assert checks[f"mixed_{n}_adapter_effect_max_abs"] > 0.01


@pytest.mark.bench
def test_decoder_bench_writes_schema_after_passing_checks(tmp_path, capsys):
  out = tmp_path / "peft_decoder.json"
  main(DECODER + ["--json", str(out)])
  data = json.loads(out.read_text())
  assert set(data) == {"config", "checks", "records", "bars"}
  config = data["config"]
  assert config["arch"] == "decoder" and config["hf_architecture"] == "LlamaForCausalLM"
  assert (config["decoder"]["num_heads"], config["decoder"]["num_kv_heads"],
          config["decoder"]["num_layers"]) == (2, 1, 1)
  assert "q_proj" in config["targets"] and "down_proj" in config["targets"]
  names = [(r["bench"], r["framework"], r["method"], r["adapters"]) for r in data["records"]]
  assert names == [("train", "torch+peft", "lora", None), ("train", "flix", "lora", None),
                   ("train", "flix", "flix", None), ("infer", "torch+peft", "base", None),
                   ("infer", "torch+peft", "lora", None), ("infer", "torch+peft", "mixed", 1),
                   ("infer", "torch+peft", "mixed", 4), ("infer", "flix", "base", None),
                   ("infer", "flix", "lora", None), ("infer", "flix", "flix", 1),
                   ("infer", "flix", "flix", 4)]
  for r in data["records"]:
    assert KEYS <= set(r) and len(r["all_seconds"]) == 1 and r["tokens"] == 8 * (12 + 6), r
  assert_decoder_checks(data["checks"])
  bars = data["bars"]
  assert bars["train_lora"]["limit"] == 1.5 and bars["infer_mixed"]["adapters"] == 4
  assert "flix LoRA training" in capsys.readouterr().out


@pytest.mark.bench
def test_decoder_equivalence_checks_pass_and_catch_a_different_adapter():
  """The decoder bench's models pass every check as built; a PEFT adapter that differs from
  flix's (one mixed-batch adapter, the trained LoRA) fails it loudly."""
  s = peft.build(parse_args(DECODER), torch, *peft.require_hf()[1:])
  assert_decoder_checks(peft.check_equivalence(torch, s, [1, 4]))
  lora_b = dict(s.mixed.named_parameters())[
      "base_model.model.model.layers.0.mlp.down_proj.lora_B.c3.weight"]
  with torch.no_grad():
    lora_b.mul_(1.5)
  with pytest.raises(AssertionError, match="PEFT mixed batch vs FLix batch with 4"):
    peft.check_equivalence(torch, s, [4])
  lora_a = dict(s.peft_lora.named_parameters())[
      "base_model.model.model.layers.0.self_attn.k_proj.lora_A.default.weight"]
  with torch.no_grad():
    lora_a.add_(0.1)
  with pytest.raises(AssertionError, match="PEFT LoRA vs flix LoRA logits"):
    peft.check_lora(torch, s.arch, s.peft_lora, s.models["lora"], s.params["lora"], s.cfg,
                    s.tokens)


@pytest.mark.parametrize("flags,error", [
    (["--adapters", "1,16", "--F", "6"], "combinations"),
    (["--adapters", "16", "--batch", "8"], "--batch 8 < 16"),
    (["--rank", "3"], "--rank must be even"),
    (["--num-kv-heads", "2"], "needs --arch decoder"),
    (["--arch", "decoder", "--num-heads", "3"], "not a multiple of num_kv_heads 2")])
def test_bad_arguments(flags, error, capsys):
  with pytest.raises(SystemExit):
    parse_args(["peft"] + flags)
  assert error in capsys.readouterr().err
