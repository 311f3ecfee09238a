"""`python -m experiments.bench train`: whole train-step time, tokens/s and memory per training method.

The model is the tiny byte-level T5.1.1 of models/tiny.gin (d_model 256, 4 + 4 layers,
d_ff 1024; `--model small`: models/small.gin) on a synthetic batch of 32 x (64 inputs +
32 targets) bytes, float32, dropout 0.1. One jitted, state-donating step of the trainer
(`flix.training.step` / `sparse_step`) is timed per configuration:
  full          every parameter trains (no adapters);
  frozen        nothing trains (no adapters, base frozen): forward + loss only, since XLA drops a
                backward pass nothing reads. The floor under every method;
  lora_r8/16    one shared LoRA adapter on every projection, base frozen;
  flix_dense    FLix, two feature types (task, lang) of F/2 values, rank 8, on every projection,
                base frozen, dense step: F-sized gradients and optimizer updates;
  flix_sparse   the same with `StepConfig.row_sparse` and a row-separable optimizer
                (`make_optimizer.per_row`): compact gradients, lazy updates of the batch's rows.
for each optimizer (AdamW; Adafactor as in T5X fine-tuning: decay 0.8, no momentum), both in
the trainer's default row-separable form (`make_optimizer(per_row=True)`); the dense FLix step is
the trainer's default lazy one (rows absent from the batch keep params and state).

Per optimizer, everything is compiled and warmed up first; then every round runs every
configuration in a fixed interleaved order, `--settle` untimed steps and one timed step each;
medians over rounds are reported. Memory is
XLA's plan for the compiled step (`compiled.memory_analysis()`: arguments + outputs - donated
aliases + temporaries), i.e. the step's peak live bytes, not the process RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import core
from experiments.bench.synthetic import (add_size_flags, feature_config, model_config, random_tokens,
                                  synthetic_params, trainer_batch, uniform_ids)
from flix.config import FlixConfig
from flix.models.model import make_model
from flix.models.t5 import T5Config
from flix.trainable import freeze_base, trainable_mask
from flix.training.optimizers import make_optimizer
from flix.training.sparse_step import make_row_sparse_train_step
from flix.training.state import TrainState
from flix.training.step import StepConfig, make_train_step

METHODS = ("full", "frozen", "lora_r8", "lora_r16", "flix_dense", "flix_sparse")
OPTIMIZERS = ("adamw", "adafactor")
REFERENCE = "lora_r16"
BUDGET_GIB = 24.0
GIB = 2**30


@dataclasses.dataclass
class Case:
  """One configuration: method, optimizer, F (None for non-FLix), and once built its step."""

  method: str
  optimizer: str
  n_features: int | None = None
  run: Callable[[], Any] | None = None
  memory: dict | None = None
  loss: float | None = None


def flix_config(method: str, n_features: int | None, rank: int) -> FlixConfig | None:
  if method in ("full", "frozen"):
    return None
  if method.startswith("lora_r"):
    return FlixConfig.lora(int(method[len("lora_r"):]))
  return feature_config(n_features, rank)


def make_batch(cfg: T5Config, flix: FlixConfig | None, args) -> dict[str, jax.Array]:
  rng = np.random.default_rng(args.seed)
  targets = random_tokens(rng, cfg.vocab_size, (args.batch, args.out_len))
  ids = uniform_ids(flix, args.batch, rng)
  return trainer_batch(random_tokens(rng, cfg.vocab_size, (args.batch, args.in_len)), targets, ids)


def build(case: Case, cfg: T5Config, args) -> None:
  """Initialises the state and compiles the donating step; `case.run` then runs one step
  (blocking) and records its loss."""
  flix = flix_config(case.method, case.n_features, args.rank)
  model = make_model(cfg, flix)
  params = synthetic_params(model, args.seed)
  method = {"full": "full", "frozen": "flix"}.get(case.method, "lora")
  sparse = case.method == "flix_sparse"
  optimizer = freeze_base(make_optimizer(case.optimizer, learning_rate=1e-3),
                          params, method)
  mask = trainable_mask(params, method)
  if case.method == "frozen":
    mask = jax.tree.map(lambda _: False, mask)
  state = TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                     rng=jax.random.key_data(jax.random.key(args.seed)))
  make = make_row_sparse_train_step if sparse else make_train_step
  step = jax.jit(make(model, optimizer, mask, StepConfig()), donate_argnums=0)
  batch = make_batch(cfg, flix, args)
  compiled = step.lower(state, batch).compile()
  case.memory = core.memory_plan(compiled)
  case.memory["state_bytes"] = sum(x.nbytes for x in jax.tree.leaves(state))
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    metrics = jax.block_until_ready(metrics)
    case.loss = float(metrics["loss"])
    return metrics

  case.run = run


def cases_for(optimizer: str, args) -> list[Case]:
  """The run order: non-FLix methods, then per F the dense and row-sparse FLix paths."""
  cases = [Case(m, optimizer) for m in METHODS[:4] if m in args.methods]
  for n in args.F:
    cases += [Case(m, optimizer, n) for m in METHODS[4:] if m in args.methods]
  return cases


def run_optimizer(optimizer: str, cfg: T5Config, args) -> list[dict]:
  cases = cases_for(optimizer, args)
  for c in cases:
    build(c, cfg, args)
  seconds = core.time_rounds([c.run for c in cases], args.repeats, warmup=1, settle=args.settle,
                             label=f"train {optimizer}")
  tokens = args.batch * (args.in_len + args.out_len)
  records = [{"method": c.method, "F": c.n_features, "optimizer": optimizer,
              **core.summary(s, tokens), "loss": c.loss, **c.memory}
             for c, s in zip(cases, seconds)]
  ref = next(r for r in records if r["method"] == REFERENCE)
  for r in records:
    r["ratio_vs_lora_r16"] = r["seconds"] / ref["seconds"]
    r["memory_ratio_vs_lora_r16"] = r["peak_bytes"] / ref["peak_bytes"]
  for c in cases:
    c.run = None
  gc.collect()
  return records


def largest_f(records: list[dict]) -> list[dict]:
  """Per optimizer and FLix path: F that fits BUDGET_GIB, linear in F between the two largest F
  measured (peak = fixed + F * bytes_per_feature). An estimate: XLA's plan, not measured RSS."""
  out = []
  for opt in sorted({r["optimizer"] for r in records}):
    for method in ("flix_dense", "flix_sparse"):
      rs = sorted((r for r in records if r["optimizer"] == opt and r["method"] == method),
                  key=lambda r: r["F"])
      if len(rs) < 2:
        continue
      lo, hi = rs[-2], rs[-1]
      per_f = (hi["peak_bytes"] - lo["peak_bytes"]) / (hi["F"] - lo["F"])
      fixed = hi["peak_bytes"] - per_f * hi["F"]
      f_max = int((BUDGET_GIB * GIB - fixed) / per_f) if per_f > 0 else None
      out.append({"optimizer": opt, "method": method, "bytes_per_feature": per_f,
                  "fixed_bytes": fixed, "largest_F_in_24GiB": f_max,
                  "from_F": [lo["F"], hi["F"]]})
  return out


COLUMNS = [("optimizer", lambda r: r["optimizer"]), ("method", lambda r: r["method"]),
           ("F", lambda r: core.dash(r["F"])),
           ("median ms", lambda r: f"{r['seconds'] * 1e3:.1f}"),
           ("tokens/s", lambda r: f"{r['tokens_per_s']:.0f}"),
           ("x lora_r16", lambda r: f"{r['ratio_vs_lora_r16']:.2f}"),
           ("peak GiB", lambda r: f"{r['peak_bytes'] / GIB:.2f}"),
           ("state GiB", lambda r: f"{r['state_bytes'] / GIB:.2f}")]


def format_fit(fits: list[dict]) -> str:
  lines = [f"largest F in {BUDGET_GIB:g} GiB (estimate, linear in F from XLA's memory plan):"]
  for f in fits:
    lines.append(f"  {f['optimizer']:<10} {f['method']:<12} {f['bytes_per_feature'] / 2**20:8.2f} "
                 f"MiB/feature -> F ~ {f['largest_F_in_24GiB']}")
  return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
  load = os.getloadavg()
  cfg = model_config(args)
  records = []
  for opt in args.optimizers:
    records += run_optimizer(opt, cfg, args)
  fits = largest_f(records)
  print(core.table(COLUMNS, records))
  print(format_fit(fits))
  result = {"config": {
      "command": "train", "model": args.model, "t5": dataclasses.asdict(cfg), "batch": args.batch,
      "input_length": args.in_len, "target_length": args.out_len, "rank": args.rank,
      "F": list(args.F), "methods": list(args.methods), "optimizers": list(args.optimizers),
      "repeats": args.repeats, "settle": args.settle, "seed": args.seed, "dtype": "float32",
      "statistic": "median over interleaved rounds",
      "memory": "compiled.memory_analysis(): arguments + outputs - aliases + temporaries",
      "reference": REFERENCE, **core.environment(load)},
      "records": records, "largest_F": fits}
  core.write_json(args.json, result)
  return result


def add_parser(sub) -> None:
  p = sub.add_parser("train", help="train-step time, tokens/s and memory per training method")
  add_size_flags(p)
  p.add_argument("--F", type=core.int_list, default=[8, 64, 1024],
                 help="comma-separated FLix feature counts (two types of F/2 values)")
  p.add_argument("--optimizers", type=core.str_list, default=list(OPTIMIZERS))
  p.add_argument("--methods", type=core.str_list, default=list(METHODS),
                 help=f"comma-separated subset of {','.join(METHODS)}")
  p.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds")
  p.add_argument("--settle", type=int, default=1,
                 help="untimed steps of a configuration before each timed one: they absorb what "
                      "the previous configuration left behind (a dense F=1024 step's GiB-sized "
                      "temporaries evict caches and allocator pages)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--in-len", type=int, default=64)
  p.add_argument("--out-len", type=int, default=32)
  p.add_argument("--rank", type=int, default=8, help="rank of every FLix feature adapter")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="write the results here")
  p.set_defaults(run=run, check=check_args)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  args.F = sorted(set(args.F))
  if any(n < 2 or n % 2 for n in args.F):
    parser.error(f"--F values must be even numbers >= 2 (two feature types), got {args.F}")
  bad = [o for o in args.optimizers if o not in OPTIMIZERS]
  if bad or not args.optimizers:
    parser.error(f"--optimizers must name adamw and/or adafactor, got {args.optimizers}")
  unknown = [m for m in args.methods if m not in METHODS]
  if unknown or REFERENCE not in args.methods:
    parser.error(f"--methods must be among {METHODS} and include {REFERENCE}, got {args.methods}")
  if args.repeats < 1:
    parser.error("--repeats must be >= 1")
  if args.settle < 0:
    parser.error("--settle must be >= 0")
