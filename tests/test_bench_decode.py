"""`python -m experiments.bench decode` at tiny sizes: JSON schema, merged == adapter-path decodes."""

import json
import math

import numpy as np
import pytest

from experiments.bench import decode, synthetic
from experiments.bench.__main__ import main, parse_args

TINY = ["decode", "--emb-dim", "32", "--mlp-dim", "48", "--num-heads", "2", "--head-dim", "8",
        "--layers", "2", "--batch", "6", "--in-len", "10", "--max-length", "5", "--F", "8",
        "--repeats", "2", "--check-rows", "3"]
METHODS = ["base", "merged", "flix_homogeneous", "flix_heterogeneous"]


@pytest.mark.bench
def test_decode_bench_writes_schema(tmp_path, capsys):
  out = tmp_path / "decode.json"
  main(TINY + ["--json", str(out)])
  data = json.loads(out.read_text())
  assert set(data) == {"config", "checks", "records", "bar"}
  records = data["records"]
  assert [r["method"] for r in records] == METHODS
  assert [r["combinations"] for r in records] == [0, 1, 1, 6]
  assert [r["F"] for r in records] == [None, None, 8, 8]
  by = {r["method"]: r for r in records}
  for r in records:
    assert r["bench"] == "decode" and r["framework"] == "flix" and r["tokens"] == 6 * 5
    assert len(r["all_seconds"]) == 2 and all(math.isfinite(t) and t > 0 for t in r["all_seconds"])
    assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
    assert r["ratio_vs_base"] == pytest.approx(r["seconds"] / by["base"]["seconds"])
    assert r["ratio_vs_merged"] == pytest.approx(r["seconds"] / by["merged"]["seconds"])
  checks = data["checks"]
  assert checks["heterogeneous_rows_checked"] == [0, 1, 2]
  assert checks["merged_vs_adapter_logits_max_abs_diff"] < 1e-4
  assert checks["merged_differs_from_base"]  # The adapters change what is decoded.
  bar = data["bar"]
  assert bar["merged_vs_base"] == by["merged"]["ratio_vs_base"]
  assert isinstance(bar["holds"], bool)
  assert "bar" in capsys.readouterr().out


@pytest.mark.bench
def test_merged_decode_equals_adapter_path():
  """The bench's own check, directly: every combination merged decodes like its adapter path."""
  import jax.numpy as jnp

  from flix.decoding import DecodeOptions
  from flix.merge import merge_params
  from flix.models.model import EncoderDecoderModel
  from flix.models.t5 import T5

  cfg = synthetic.model_config(parse_args(TINY))
  flix = synthetic.feature_config(8, 4)
  model = T5(cfg, flix)
  params = synthetic.random_params(model, 0)
  combos = synthetic.combinations(flix, 6, 0)
  assert len({tuple(c) for c in combos}) == 6
  enc = jnp.asarray(synthetic.random_tokens(np.random.default_rng(0), cfg.vocab_size, (6, 9)))
  options = DecodeOptions(max_length=7, eos_id=decode.NO_EOS)
  hetero = np.asarray(EncoderDecoderModel(model).decode(params, enc, jnp.asarray(combos),
                                                        options=options).tokens)
  assert hetero.shape == (6, 7)
  for r in range(6):
    merged = np.asarray(EncoderDecoderModel(T5(cfg)).decode(
        merge_params(params, flix, combos[r]), enc, options=options).tokens)
    np.testing.assert_array_equal(merged[r], hetero[r])


def test_check_same_decodes_allows_only_near_ties():
  ref = np.array([[5, 6, 7], [5, 6, 7]])
  logits = np.zeros((2, 3, 10), np.float32)
  logits[:, :, 9] = 100.0  # max |logit| = 100: near-tie bound 0.1.
  logits[0, 1, 6], logits[0, 1, 2] = 3.0, 2.95  # Row 0, position 1: a near tie 6 vs 2.
  logits[1, 2, 7], logits[1, 2, 4] = 3.0, 1.0  # Row 1, position 2: a clear preference.
  never = lambda: pytest.fail("logits computed although the decodes agree")
  assert decode.check_same_decodes(ref.copy(), ref, never, "same") == 0
  near = ref.copy()
  near[0, 1:] = [2, 3]  # Differs from position 1 on (later positions may follow).
  assert decode.check_same_decodes(near, ref, lambda: logits, "near") == 1
  far = ref.copy()
  far[1, 2] = 4
  with pytest.raises(AssertionError, match="far: row 1 differs at position 2"):
    decode.check_same_decodes(far, ref, lambda: logits, "far")


def test_too_few_combinations_for_the_batch(capsys):
  with pytest.raises(SystemExit):
    parse_args(["decode", "--F", "8", "--batch", "32"])
  assert "fewer than --batch 32" in capsys.readouterr().err
