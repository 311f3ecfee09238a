"""`python -m flix.bench train`: whole train-step time, tokens/s and memory per training method.

The model is the tiny byte-level T5.1.1 of configs/models/tiny.gin (d_model 256, 4 + 4 layers,
d_ff 1024; `--model small`: configs/models/small.gin) on a synthetic batch of 32 x (64 inputs +
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
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from flix.config import FlixConfig
from flix.features import FeatureSpace
from flix.models.model import BaseModel, EncoderDecoderModel, make_model
from flix.models.t5 import T5, T5Config
from flix.trainable import freeze_base, trainable_mask
from flix.training.optimizers import make_optimizer
from flix.training.sparse_step import make_row_sparse_train_step
from flix.training.state import TrainState
from flix.training.step import StepConfig, make_train_step

MODELS = {
    "tiny": dict(vocab_size=384, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024,
                 num_encoder_layers=4, num_decoder_layers=4),
    "small": dict(vocab_size=384, emb_dim=512, num_heads=8, head_dim=64, mlp_dim=1536,
                  num_encoder_layers=6, num_decoder_layers=6),
}
COMMON = dict(mlp_activations=("gelu", "linear"), logits_via_embedding=False, dropout_rate=0.1)
REFERENCE = "lora_r16"
BUDGET_GIB = 24.0
GIB = 2**30


@dataclasses.dataclass
class Case:
  """One configuration: name, F (None for non-FLix), optimizer, and once built its step."""

  method: str
  optimizer: str
  n_features: int | None = None
  run: Callable[[], Any] | None = None
  memory: dict | None = None
  seconds: list[float] = dataclasses.field(default_factory=list)
  loss: float | None = None

  @property
  def name(self) -> str:
    return self.method if self.n_features is None else f"{self.method}@F={self.n_features}"


def model_config(args) -> T5Config:
  sizes = dict(MODELS[args.model], **COMMON)
  for key in ("emb_dim", "mlp_dim", "num_heads", "head_dim"):
    if getattr(args, key) is not None:
      sizes[key] = getattr(args, key)
  if args.layers is not None:
    sizes["num_encoder_layers"] = sizes["num_decoder_layers"] = args.layers
  return T5Config(**sizes)


def feature_config(n_features: int, rank: int) -> FlixConfig:
  """Two types, `task` and `lang`, of n_features / 2 values each, rank `rank` each."""
  if n_features < 2 or n_features % 2:
    raise ValueError(f"F must be an even number >= 2 (two feature types), got {n_features}")
  half = n_features // 2
  return FlixConfig(FeatureSpace.build({"task": [f"t{i}" for i in range(half)],
                                        "lang": [f"l{i}" for i in range(half)]}, ranks=rank))


def flix_config(method: str, n_features: int | None, rank: int) -> FlixConfig | None:
  if method in ("full", "frozen"):
    return None
  if method.startswith("lora_r"):
    return FlixConfig(FeatureSpace.lora(int(method[len("lora_r"):])))
  return feature_config(n_features, rank)


def make_batch(cfg: T5Config, flix: FlixConfig | None, args) -> dict[str, jax.Array]:
  rng = np.random.default_rng(args.seed)
  targets = rng.integers(3, cfg.vocab_size, (args.batch, args.out_len))
  inputs = np.concatenate([np.zeros((args.batch, 1), np.int64), targets[:, :-1]], axis=1)
  types = flix.space.types if flix is not None and flix.space.n_types else ()
  ids = np.stack([rng.integers(0, t.size, args.batch) for t in types], axis=1) if types else (
      np.zeros((args.batch, 0)))
  return {"encoder_input_tokens": jnp.asarray(
              rng.integers(3, cfg.vocab_size, (args.batch, args.in_len)), jnp.int32),
          "decoder_input_tokens": jnp.asarray(inputs, jnp.int32),
          "decoder_target_tokens": jnp.asarray(targets, jnp.int32),
          "decoder_loss_weights": jnp.ones((args.batch, args.out_len), jnp.float32),
          "feature_ids": jnp.asarray(ids, jnp.int32)}


def synthetic_params(model: BaseModel | T5, seed: int) -> dict:
  """Plain float32 params of `model` drawn with numpy (flax's op-by-op init costs seconds per
  model on 2 cores): kernels fan-in scaled normal, norms 1, LoRA A uniform, LoRA B zero."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(
      (model if isinstance(model, BaseModel) else EncoderDecoderModel(model)).abstract_params())
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in leaves:
    name, shape = str(path[-1].key), leaf.shape
    if name == "scale":
      value = np.ones(shape, np.float32)
    elif name.startswith("lora_b"):
      value = np.zeros(shape, np.float32)
    elif name.startswith("lora_a"):  # [..., r, d_in]
      bound = 1.0 / np.sqrt(shape[-1])
      value = rng.uniform(-bound, bound, shape).astype(np.float32)
    else:
      value = rng.standard_normal(shape, np.float32)
      if name != "embedding":
        value /= np.sqrt(shape[-2])
    out.append(jnp.asarray(value))
  return jax.tree_util.tree_unflatten(treedef, out)


def memory_plan(compiled) -> dict:
  stats = compiled.memory_analysis()
  get = lambda k: int(getattr(stats, k, 0) or 0)
  args_, out, alias, temp = (get("argument_size_in_bytes"), get("output_size_in_bytes"),
                             get("alias_size_in_bytes"), get("temp_size_in_bytes"))
  return {"argument_bytes": args_, "output_bytes": out, "alias_bytes": alias, "temp_bytes": temp,
          "peak_bytes": args_ + out - alias + temp}


def build(case: Case, cfg: T5Config, args) -> None:
  """Initialises the state and compiles the donating step; `case.run` then runs one step."""
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
  case.memory = memory_plan(compiled)
  case.memory["state_bytes"] = sum(x.nbytes for x in jax.tree.leaves(state))
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics

  case.run = run


def timed(case: Case) -> float:
  start = time.perf_counter()
  metrics = jax.block_until_ready(case.run())
  case.loss = float(metrics["loss"])
  return time.perf_counter() - start


METHODS = ("full", "frozen", "lora_r8", "lora_r16", "flix_dense", "flix_sparse")


def cases_for(optimizer: str, args) -> list[Case]:
  """The run order: non-FLix methods, then per F the dense and row-sparse FLix paths."""
  cases = [Case(m, optimizer) for m in METHODS[:4] if m in args.methods]
  for n in args.F:
    cases += [Case(m, optimizer, n) for m in METHODS[4:] if m in args.methods]
  return cases


def run_optimizer(optimizer: str, cfg: T5Config, args, log) -> list[dict]:
  cases = cases_for(optimizer, args)
  start = time.perf_counter()
  for c in cases:
    build(c, cfg, args)
    timed(c)  # Warm-up (first run of the compiled step).
  log(f"{optimizer}: built and warmed {len(cases)} configurations in "
      f"{time.perf_counter() - start:.1f} s")
  for i in range(args.repeats):
    start = time.perf_counter()
    for c in cases:
      for _ in range(args.settle):
        timed(c)
      c.seconds.append(timed(c))
    log(f"{optimizer}: round {i + 1}/{args.repeats}: {time.perf_counter() - start:.1f} s")
  tokens = args.batch * (args.in_len + args.out_len)
  records = []
  for c in cases:
    median = statistics.median(c.seconds)
    records.append({"method": c.method, "F": c.n_features, "optimizer": optimizer,
                    "seconds": median, "all_seconds": c.seconds, "tokens_per_s": tokens / median,
                    "loss": c.loss, **c.memory})
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


def format_table(records: list[dict]) -> str:
  lines = [f"{'optimizer':<10} {'method':<12} {'F':>5} {'median ms':>10} {'tokens/s':>9} "
           f"{'x lora_r16':>10} {'peak GiB':>9} {'state GiB':>9}"]
  for r in records:
    f = "-" if r["F"] is None else str(r["F"])
    lines.append(f"{r['optimizer']:<10} {r['method']:<12} {f:>5} {r['seconds'] * 1e3:>10.1f} "
                 f"{r['tokens_per_s']:>9.0f} {r['ratio_vs_lora_r16']:>10.2f} "
                 f"{r['peak_bytes'] / GIB:>9.2f} {r['state_bytes'] / GIB:>9.2f}")
  return "\n".join(lines)


def format_fit(fits: list[dict]) -> str:
  lines = [f"largest F in {BUDGET_GIB:g} GiB (estimate, linear in F from XLA's memory plan):"]
  for f in fits:
    lines.append(f"  {f['optimizer']:<10} {f['method']:<12} {f['bytes_per_feature'] / 2**20:8.2f} "
                 f"MiB/feature -> F ~ {f['largest_F_in_24GiB']}")
  return "\n".join(lines)


def run_train(args: argparse.Namespace) -> dict:
  load = os.getloadavg()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  cfg = model_config(args)
  records = []
  for opt in args.optimizers:
    records += run_optimizer(opt, cfg, args, log)
  fits = largest_f(records)
  print(format_table(records))
  print(format_fit(fits))
  result = {"config": {
      "command": "train", "model": args.model, "t5": dataclasses.asdict(cfg), "batch": args.batch,
      "input_length": args.in_len, "target_length": args.out_len, "rank": args.rank,
      "F": list(args.F), "methods": list(args.methods), "optimizers": list(args.optimizers), "repeats": args.repeats,
      "seed": args.seed, "dtype": "float32", "statistic": "median over interleaved rounds",
      "memory": "compiled.memory_analysis(): arguments + outputs - aliases + temporaries",
      "reference": REFERENCE, "jax": jax.__version__, "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
      "python": platform.python_version(), "loadavg_at_start": load,
      "loadavg_at_end": os.getloadavg()},
      "records": records, "largest_F": fits}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2, default=str)
  return result


def add_train_parser(sub, int_list: Callable[[str], list[int]]) -> None:
  p = sub.add_parser("train", help="train-step time, tokens/s and memory per training method")
  add_size_flags(p)
  p.add_argument("--F", type=int_list, default=[8, 64, 1024],
                 help="comma-separated FLix feature counts (two types of F/2 values)")
  p.add_argument("--optimizers", type=lambda s: [v for v in s.split(",") if v],
                 default=["adamw", "adafactor"])
  p.add_argument("--methods", type=lambda s: [v for v in s.split(",") if v],
                 default=list(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
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
  p.set_defaults(func=run_train)


def add_size_flags(p: argparse.ArgumentParser) -> None:
  """--model and the size overrides of `model_config`."""
  p.add_argument("--model", choices=sorted(MODELS), default="tiny")
  for key in ("emb_dim", "mlp_dim", "num_heads", "head_dim", "layers"):
    p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None,
                   help="override the model size (smoke tests)")


def check_train_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  args.F = sorted(set(args.F))
  if any(n < 2 or n % 2 for n in args.F):
    parser.error(f"--F values must be even numbers >= 2 (two feature types), got {args.F}")
  bad = [o for o in args.optimizers if o not in ("adamw", "adafactor")]
  if bad or not args.optimizers:
    parser.error(f"--optimizers must name adamw and/or adafactor, got {args.optimizers}")
  unknown = [m for m in args.methods if m not in METHODS]
  if unknown or REFERENCE not in args.methods:
    parser.error(f"--methods must be among {METHODS} and include {REFERENCE}, got {args.methods}")
  if args.repeats < 1:
    parser.error("--repeats must be >= 1")
  if args.settle < 0:
    parser.error("--settle must be >= 0")
