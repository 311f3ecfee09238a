"""`python -m experiments.bench decode`: greedy decode throughput with the KV cache.

The tiny byte-level T5.1.1 of `experiments.bench.train` (d_model 256, 4 + 4 layers, d_ff 1024;
`--model small` and size flags as there) with FLix on every projection: two feature types
(task, lang) of F/2 values each (default F = 64), rank 8 each, random non-zero adapters. A batch
of B = 32 examples x 64 random input bytes is decoded greedily by `EncoderDecoderModel.decode`
(one jitted encode + `while_loop` over cached decoder steps) for exactly `--max-length` = 64
positions: EOS is disabled (eos_id = -1) so that every configuration runs the same number of
steps.
  base                the base model alone: T5(config) without adapters;
  merged              one combination merged into the base kernels (`flix.merge.merge_params`)
                      and run as the same plain T5(config): a homogeneous batch;
  flix_homogeneous    the FLix model (adapter path), every example with that combination;
  flix_heterogeneous  the FLix model, every example with its own combination (B distinct).
tokens/s = B x max_length / seconds (the encoder pass included).

Before timing, the bench checks that the merged model decodes the same tokens as the adapter
path (`flix_homogeneous`) and gives the same teacher-forced logits, and that `--check-rows` rows
of the heterogeneous batch decode as the merged model of their own combination does. A token
mismatch is allowed only where the two paths' argmax is a float32 near-tie (logit gap <= 1e-3 x
max |logit|); any other mismatch raises AssertionError.

Everything is compiled and warmed up first; then every round runs every configuration once in a
fixed interleaved order; medians over rounds are reported. The bar (issue #7): merged decode
takes <= 1.05 x the base model's time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Callable

import jax.numpy as jnp
import numpy as np

from experiments.bench import core
from experiments.bench.synthetic import (add_size_flags, batch_ids, combinations, feature_config,
                                         forward, model_config, random_params, random_tokens,
                                         shift_right)
from flix.checkpoints import strip_adapters
from flix.decoding import DecodeOptions
from flix.merge import merge_params
from flix.models.model import EncoderDecoderModel
from flix.models.t5 import T5

BAR_MERGED_VS_BASE = 1.05
NO_EOS = -1  # An id argmax never returns: every decode runs max_length steps.
TIE_TOLERANCE = 1e-3  # Relative to max |logit|: an argmax flip below this is float32 rounding.
LOGITS_TOLERANCE = 1e-4  # Relative to max |logit|: teacher-forced logits of equivalent models.


# -- checks ---------------------------------------------------------------------------------------
def forced_logits(model: T5, params, enc, tokens, ids) -> np.ndarray:
  """Teacher-forced logits `[B, L, V]` of decodes `tokens` `[B, L]` (start token prepended)."""
  dec = jnp.asarray(shift_right(tokens))
  return np.asarray(forward(model, params, jnp.asarray(enc), dec, ids))


def check_same_decodes(got: np.ndarray, ref: np.ndarray, ref_logits: Callable[[], np.ndarray],
                       what: str) -> int:
  """Asserts that decodes `got` equal `ref` (`[B, L]`) up to float32 near-ties of the reference.

  For a row that differs, the first differing position must be a near-tie of the reference
  model's teacher-forced logits (`ref_logits()`, computed only if needed): logit gap between the
  two tokens <= TIE_TOLERANCE x max |logit|. Returns the number of such rows.
  """
  rows = np.flatnonzero((got != ref).any(axis=1))
  if not rows.size:
    return 0
  logits = ref_logits()
  bound = TIE_TOLERANCE * max(1.0, float(np.abs(logits).max()))
  for r in rows:
    p = int(np.argmax(got[r] != ref[r]))
    gap = float(logits[r, p, ref[r, p]] - logits[r, p, got[r, p]])
    if gap > bound:
      raise AssertionError(
          f"{what}: row {r} differs at position {p} (token {got[r, p]} vs {ref[r, p]}) and the "
          f"reference's logit gap there is {gap:.3g} > {bound:.3g}: not a float32 near-tie, the "
          "two paths compute different models")
  return int(rows.size)


# -- command --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
  load = os.getloadavg()
  cfg = model_config(args)
  flix = feature_config(args.F, args.rank)
  combos = combinations(flix, args.batch, args.seed)  # One per example: all distinct.
  model, base_model = T5(cfg, flix), T5(cfg)
  params = random_params(model, args.seed)
  base = strip_adapters(params)
  merged = merge_params(params, flix, combos[0])
  rng = np.random.default_rng(args.seed)
  enc = jnp.asarray(random_tokens(rng, cfg.vocab_size, (args.batch, args.in_len)))
  hetero_ids = jnp.asarray(batch_ids(combos, args.batch))
  homo_ids = jnp.asarray(batch_ids(combos[:1], args.batch))

  options = DecodeOptions(max_length=args.max_length, method="greedy", eos_id=NO_EOS)

  def decoder(m, p, ids):
    net = EncoderDecoderModel(m)
    return lambda: np.asarray(net.decode(p, enc, ids, options=options).tokens)

  cases_spec = [("base", base_model, base, None, 0),
                ("merged", base_model, merged, None, 1),
                ("flix_homogeneous", model, params, homo_ids, 1),
                ("flix_heterogeneous", model, params, hetero_ids, args.batch)]
  tokens = args.batch * args.max_length
  cases = [core.Case("decode", "flix", name, {"F": args.F if p is params else None,
                                              "combinations": n}, tokens, decoder(m, p, ids))
           for name, m, p, ids, n in cases_spec]

  start = time.perf_counter()
  out = {c.method: c.run() for c in cases}  # Compiles (merged reuses base's program).
  core.log(f"decode: compiled and ran {len(cases)} configurations in "
           f"{time.perf_counter() - start:.1f} s")
  checks = {"merged_vs_adapter_path_near_tie_rows": check_same_decodes(
      out["merged"], out["flix_homogeneous"],
      lambda: forced_logits(model, params, enc, out["flix_homogeneous"], homo_ids),
      "merged decode vs the adapter path")}
  check_rows = list(range(min(args.check_rows, args.batch)))
  tie_rows = 0
  for r in check_rows:  # Each heterogeneous row against its own combination merged.
    own_params = merge_params(params, flix, combos[r])
    own = decoder(base_model, own_params, None)()
    tie_rows += check_same_decodes(
        out["flix_heterogeneous"][r:r + 1], own[r:r + 1],
        lambda: forced_logits(base_model, own_params, enc, own, None)[r:r + 1],
        f"heterogeneous row {r} vs its merged combination")
  # Teacher-forced on the same tokens, the merged and adapter paths give the same logits.
  adapter_logits = forced_logits(model, params, enc, out["flix_homogeneous"], homo_ids)
  merged_logits = forced_logits(base_model, merged, enc, out["flix_homogeneous"], None)
  diff = float(np.abs(merged_logits - adapter_logits).max())
  bound = LOGITS_TOLERANCE * max(1.0, float(np.abs(adapter_logits).max()))
  if not diff <= bound:
    raise AssertionError(f"merged vs adapter-path logits: max |difference| {diff:.3g} > "
                         f"{bound:.3g}: the merged model is not the adapter path's model")
  if not (out["merged"] != out["base"]).any():
    raise AssertionError("the merged combination decodes exactly like the base model: the "
                         "adapters do nothing and the equivalence checks are vacuous")
  checks.update({"merged_vs_adapter_logits_max_abs_diff": diff,
                 "heterogeneous_rows_checked": check_rows,
                 "heterogeneous_near_tie_rows": tie_rows,
                 "merged_differs_from_base": True})
  core.log(f"decode: equivalence checks passed: {checks}")

  core.time_cases(cases, args.repeats, args.warmup, "decode")
  records = [c.record() for c in cases]
  by = {r["method"]: r for r in records}
  for r in records:
    r["ratio_vs_base"] = r["seconds"] / by["base"]["seconds"]
    r["ratio_vs_merged"] = r["seconds"] / by["merged"]["seconds"]
  bar = {"merged_vs_base": by["merged"]["ratio_vs_base"], "limit": BAR_MERGED_VS_BASE,
         "holds": by["merged"]["ratio_vs_base"] <= BAR_MERGED_VS_BASE}
  print(core.table(COLUMNS, records))
  print(core.bar_line(bar["holds"], f"merged decode = {bar['merged_vs_base']:.3f}x the base "
                                    f"model's time (limit {BAR_MERGED_VS_BASE})"))
  result = {"config": {
      "command": "decode", "model": args.model, "t5": dataclasses.asdict(cfg),
      "batch": args.batch, "input_length": args.in_len, "max_length": args.max_length,
      "method": "greedy with the KV cache (EncoderDecoderModel.decode), EOS disabled",
      "F": args.F, "rank": args.rank, "feature_types": ["task", "lang"],
      "strategy": flix.resolved_strategy(), "merged_combination": combos[0].tolist(),
      "repeats": args.repeats, "warmup": args.warmup, "seed": args.seed, "dtype": "float32",
      "statistic": "median over interleaved rounds", "tokens": "batch x max_length",
      **core.environment(load)},
      "checks": checks, "records": records, "bar": bar}
  core.write_json(args.json, result)
  return result


COLUMNS = [("method", lambda r: r["method"]), ("F", lambda r: core.dash(r["F"])),
           ("combos", lambda r: r["combinations"]),
           ("median ms", lambda r: f"{r['seconds'] * 1e3:.1f}"),
           ("min ms", lambda r: f"{r['min_seconds'] * 1e3:.1f}"),
           ("tokens/s", lambda r: f"{r['tokens_per_s']:.0f}"),
           ("x base", lambda r: f"{r['ratio_vs_base']:.3f}"),
           ("x merged", lambda r: f"{r['ratio_vs_merged']:.3f}")]


def add_parser(sub) -> None:
  p = sub.add_parser("decode", help="greedy decode tokens/s: heterogeneous FLix vs merged vs base")
  add_size_flags(p)
  p.add_argument("--F", type=int, default=64,
                 help="FLix feature count (two types of F/2 values); (F/2)^2 >= --batch")
  p.add_argument("--rank", type=int, default=8, help="rank of every FLix feature adapter")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--in-len", type=int, default=64)
  p.add_argument("--max-length", type=int, default=64, help="decoded positions")
  p.add_argument("--repeats", type=int, default=9, help="timed interleaved rounds")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls per configuration")
  p.add_argument("--check-rows", type=int, default=2,
                 help="heterogeneous rows checked against their own merged combination")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="write the results here")
  p.set_defaults(run=run, check=check_args)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if args.F < 2 or args.F % 2:
    parser.error(f"--F must be an even number >= 2 (two feature types), got {args.F}")
  if (args.F // 2) ** 2 < args.batch:
    parser.error(f"--F {args.F} gives {(args.F // 2) ** 2} combinations, fewer than --batch "
                 f"{args.batch} (every example of the heterogeneous batch needs its own)")
  if min(args.batch, args.in_len, args.max_length, args.repeats, args.rank) < 1:
    parser.error("--batch, --in-len, --max-length, --repeats and --rank must be >= 1")
  if args.warmup < 1 or args.check_rows < 0:
    parser.error("--warmup must be >= 1 and --check-rows >= 0")
