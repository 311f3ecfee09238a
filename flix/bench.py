"""Microbenchmarks: `python -m flix.bench <command> [flags]`.

`train`: whole train steps of the tiny T5 per method, optimizer and path (`flix.bench_train`).

`peft`: transformers + PEFT LoRA (torch) vs flix LoRA and FLix: training tokens/s and
heterogeneous-batch inference with 1, 4 and 16 adapters per batch (`flix.bench_peft`; needs the
`hf` extra).

`decode`: greedy KV-cache decode tokens/s of a heterogeneous FLix batch vs one combination merged
into the base vs the base model alone (`flix.bench_decode`).

`layer`: forward+backward time of one T5-small-like `FlixDense` projection (d_in = d_out = 512,
batch 32 x 128 tokens, float32, rank 8 per feature, two feature types `task` and `lang` with F/2
values each, every example with one task and one language) for every compute strategy and
several feature counts F, against a plain layer (`base`) and plain LoRA (`lora_r8`, `lora_r16`).
Each configuration times `jit(value_and_grad(loss))` with respect to the input x (a layer inside
a network back-propagates to its input) and its trainable adapter parameters; the base kernel is
frozen. `auto` is the path training takes: the batch's rows are gathered into compact tables
(`flix.rows`) inside the jitted step and the layer runs with `row_limit=batch`, so its gradients
are compact; `auto_dense` is `auto` on the full tables.

Everything is compiled first; then every round runs every configuration once in a fixed
interleaved order, and the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flix import bench_decode, bench_peft, bench_train, host_memory
from flix.bench_train import feature_config
from flix.config import FlixConfig
from flix.features import FeatureSpace
from flix.layers import FlixDense
from flix.rows import active_rows, compact_ids, take_rows

DEFAULT_F = (8, 64, 1024, 8192)
STRATEGIES = ("masked", "gather", "ragged")
REFERENCE = "lora_r16"
# Skip thresholds: the dense masked table and XLA:CPU's ragged_dot (a dense loop over all groups).
MASKED_MAX_COLUMNS = 8192
RAGGED_MAX_F = 1024
RAGGED_CPU_NOTE = ("XLA:CPU lowers ragged_dot to a dense loop over all groups, masking every "
                   "token per group ([groups, tokens, d] operands: time and memory linear in F)")
# The project's bar: auto at the largest F against LoRA r16 and against auto at the smallest F.
BAR_VS_LORA = 1.25
BAR_VS_SMALLEST_F = 1.15
KERNEL_AXES = ("embed", "mlp")

Step = Callable[[], Any]


# -- problem set-up -------------------------------------------------------------------------------
def draw_ids(flix: FlixConfig, batch: int, seed: int) -> jax.Array:
  """One uniformly drawn active value per type per example: int32 `[batch, n_types]`."""
  rng = np.random.default_rng(seed)
  cols = [rng.integers(0, t.size, batch) for t in flix.space.types]
  return jnp.asarray(np.stack(cols, axis=1).astype(np.int32))


def init_params(flix: FlixConfig | None, x: jax.Array, ids: jax.Array | None,
                seed: int) -> dict[str, jax.Array]:
  """Random params of a `FlixDense` without running its initialisers (B non-zero: no path is 0)."""
  module = FlixDense(x.shape[-1], KERNEL_AXES, flix)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, ids))["params"]
  params = {}
  for i, (name, leaf) in enumerate(sorted(shapes.items())):
    shape = leaf.unbox().shape if hasattr(leaf, "unbox") else leaf.shape
    key = jax.random.key(seed * 1000 + i)
    if name == "kernel":
      params[name] = jax.random.normal(key, shape) / np.sqrt(shape[0])
    elif name.startswith("lora_a_"):
      bound = 1.0 / np.sqrt(x.shape[-1])
      params[name] = jax.random.uniform(key, shape, minval=-bound, maxval=bound)
    else:
      params[name] = jax.random.normal(key, shape) * 0.01
  return params


def adapters(params: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The trainable (adapter) leaves."""
  return {k: v for k, v in params.items() if k != "kernel"}


# -- jitted steps ---------------------------------------------------------------------------------
def loss_fn(module: FlixDense) -> Callable:
  """loss(x, trainable, kernel, ids) = mean(y ** 2)."""

  def loss(x, trainable, kernel, ids):
    y = module.apply({"params": {"kernel": kernel, **trainable}}, x, ids)
    return jnp.mean(jnp.square(y))

  return loss


def dense_step(flix: FlixConfig | None, d: int) -> Callable:
  """jit(value_and_grad) w.r.t. (x, adapter params) on the tables as given."""
  return jax.jit(jax.value_and_grad(loss_fn(FlixDense(d, KERNEL_AXES, flix)), argnums=(0, 1)))


def compact_step(flix: FlixConfig, d: int, batch: int) -> Callable:
  """The training path: gather the batch's rows, then value_and_grad w.r.t. the compact tables."""
  grad = jax.value_and_grad(
      loss_fn(FlixDense(d, KERNEL_AXES, flix.replace(row_limit=batch, strategy="auto"))),
      argnums=(0, 1))

  def step(x, tables, kernel, ids):
    rows = active_rows(ids, flix)
    return grad(x, take_rows(tables, flix, rows), kernel, compact_ids(ids, rows, flix))

  return jax.jit(step)


def compile_step(fn: Callable, args: tuple, max_temp_gib: float) -> tuple[Step | None, str | None]:
  """Compiles `fn` for `args`; (None, reason) if XLA plans more temporaries than allowed."""
  compiled = fn.lower(*args).compile()
  stats = compiled.memory_analysis()
  temp_gib = (getattr(stats, "temp_size_in_bytes", 0) or 0) / 2**30
  if temp_gib > max_temp_gib:
    return None, (f"compiled step needs {temp_gib:.1f} GiB of temporaries > --max-temp-gib "
                  f"{max_temp_gib:g}")
  return (lambda: compiled(*args)), None


# -- configurations -------------------------------------------------------------------------------
def skip_reason(strategy: str, flix: FlixConfig, n_features: int) -> str | None:
  columns = flix.table_rank
  if strategy == "masked" and columns > MASKED_MAX_COLUMNS:
    return (f"masked table has sum_t F_t*r_t = {columns} columns > {MASKED_MAX_COLUMNS} "
            "(a [tokens, columns] hidden activation per step)")
  if strategy == "ragged" and n_features > RAGGED_MAX_F:
    return f"F = {n_features} > {RAGGED_MAX_F}: {RAGGED_CPU_NOTE}"
  return None


def build_configs(args: argparse.Namespace) -> list[dict]:
  """Every configuration in the fixed run order, compiled: name, F, step or skip reason."""
  x = jax.random.normal(jax.random.key(args.seed), (args.batch, args.length, args.d))
  kernel = init_params(None, x, None, args.seed)["kernel"]
  configs = []

  def add(strategy, n, fn, fn_args, reason=None, **extra):
    step = None
    if reason is None:
      step, reason = compile_step(fn, fn_args, args.max_temp_gib)
      if reason and strategy == "ragged":
        reason += f"; {RAGGED_CPU_NOTE}"
    configs.append({"strategy": strategy, "F": n, **extra, "step": step, "skipped": reason})

  add("base", None, dense_step(None, args.d), (x, {}, kernel, None))
  for r in (8, 16):
    lora = FlixConfig(FeatureSpace.lora(r))
    tables = adapters(init_params(lora, x, None, args.seed))
    add(f"lora_r{r}", None, dense_step(lora, args.d), (x, tables, kernel, None))
  for n in args.F:
    flix = feature_config(n, args.rank)
    ids = draw_ids(flix, args.batch, args.seed)
    tables = adapters(init_params(flix, x, ids, args.seed))  # Shared by all strategies at F=n.
    fn_args = (x, tables, kernel, ids)
    for strategy in STRATEGIES:
      add(strategy, n, dense_step(flix.replace(strategy=strategy), args.d), fn_args,
          skip_reason(strategy, flix, n))
    add("auto_dense", n, dense_step(flix, args.d), fn_args, resolved=flix.resolved_strategy())
    add("auto", n, compact_step(flix, args.d, args.batch), fn_args,
        resolved=flix.replace(row_limit=args.batch).resolved_strategy())
  return configs


# -- timing ---------------------------------------------------------------------------------------
def run_once(step: Step) -> tuple[float, Any]:
  """Seconds of one call, blocked on its whole (loss, grads) tree, and the loss."""
  start = time.perf_counter()
  loss, grads = jax.block_until_ready(step())
  seconds = time.perf_counter() - start
  del grads  # Table-sized at large F: never hold on to it.
  return seconds, loss


def time_configs(configs: list[dict], repeats: int, settle: int,
                 log: Callable[[str], None]) -> None:
  """Warms up every step, then times `repeats` interleaved rounds into `all_seconds`.

  Before each timed call, `settle` untimed calls of the same step absorb what the previous
  configuration left behind (caches evicted and allocator pages released by table-sized
  gradients), so each time is that configuration's own steady-state cost.
  """
  live = [c for c in configs if c["step"] is not None]
  start = time.perf_counter()
  for c in live:
    c["loss"] = float(run_once(c["step"])[1])
    c["all_seconds"] = []
  log(f"warmed up {len(live)} configurations in {time.perf_counter() - start:.1f} s")
  for i in range(repeats):
    start = time.perf_counter()
    for c in live:
      for _ in range(settle):
        run_once(c["step"])
      c["all_seconds"].append(run_once(c["step"])[0])
    log(f"round {i + 1}/{repeats}: {time.perf_counter() - start:.1f} s")


def make_records(configs: list[dict]) -> list[dict]:
  """Medians and ratios (vs lora_r16, vs the same strategy at its smallest timed F)."""
  records = []
  for c in configs:
    rec = {"strategy": c["strategy"], "F": c["F"]}
    if "resolved" in c:
      rec["resolved"] = c["resolved"]
    if c.get("skipped"):
      rec["skipped"] = c["skipped"]
    times = c.get("all_seconds", [])
    rec["seconds"] = statistics.median(times) if times else None
    rec["all_seconds"] = times
    rec["loss"] = c.get("loss")  # Same x and tables: equal across strategies at one F.
    records.append(rec)
  ref = next(r["seconds"] for r in records if r["strategy"] == REFERENCE)
  smallest = {}
  for r in records:
    if r["F"] is not None and r["seconds"] is not None:
      smallest.setdefault(r["strategy"], r["seconds"])  # Records are in increasing F order.
  for r in records:
    timed = r["seconds"] is not None
    r["ratio_vs_lora_r16"] = r["seconds"] / ref if timed else None
    own = r["F"] is not None and timed
    r["ratio_vs_own_smallest_F"] = r["seconds"] / smallest[r["strategy"]] if own else None
  return records


def check_bar(records: list[dict]) -> dict:
  """Whether auto at the largest F is within the bar against lora_r16 and auto at the smallest F."""
  auto = [r for r in records if r["strategy"] == "auto" and r["seconds"] is not None]
  largest, smallest = auto[-1], auto[0]
  vs_lora, vs_small = largest["ratio_vs_lora_r16"], largest["ratio_vs_own_smallest_F"]
  return {"largest_F": largest["F"], "smallest_F": smallest["F"],
          "auto_vs_lora_r16": vs_lora, "limit_vs_lora_r16": BAR_VS_LORA,
          "auto_vs_auto_smallest_F": vs_small, "limit_vs_auto_smallest_F": BAR_VS_SMALLEST_F,
          "holds": vs_lora <= BAR_VS_LORA and vs_small <= BAR_VS_SMALLEST_F}


def format_table(records: list[dict]) -> str:
  def num(v, fmt):
    return "-" if v is None else format(v, fmt)

  lines = [f"{'strategy':<11} {'F':>6} {'resolved':<9} {'median ms':>10} "
           f"{'x lora_r16':>10} {'x own@minF':>10}"]
  for r in records:
    head = f"{r['strategy']:<11} {num(r['F'], 'd'):>6} {r.get('resolved', ''):<9} "
    if r.get("skipped"):
      lines.append(head + f"skipped: {r['skipped']}")
      continue
    lines.append(head + f"{r['seconds'] * 1e3:>10.2f} {r['ratio_vs_lora_r16']:>10.3f} "
                 f"{num(r['ratio_vs_own_smallest_F'], '.3f'):>10}")
  return "\n".join(lines)


def format_bar(bar: dict) -> str:
  verdict = "HOLDS" if bar["holds"] else "DOES NOT HOLD"
  return (f"bar {verdict}: auto@F={bar['largest_F']} = {bar['auto_vs_lora_r16']:.3f}x lora_r16 "
          f"(limit {bar['limit_vs_lora_r16']}), {bar['auto_vs_auto_smallest_F']:.3f}x "
          f"auto@F={bar['smallest_F']} (limit {bar['limit_vs_auto_smallest_F']})")


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# -- commands -------------------------------------------------------------------------------------
def run_layer(args: argparse.Namespace) -> dict:
  load = os.getloadavg()  # Other work on the machine skews every time.
  start = time.perf_counter()
  configs = build_configs(args)
  log(f"compiled {len(configs)} configurations in {time.perf_counter() - start:.1f} s")
  time_configs(configs, args.repeats, args.settle, log)
  records = make_records(configs)
  bar = check_bar(records)
  print(format_table(records))
  print(format_bar(bar))
  result = {"config": {
      "command": "layer", "d_in": args.d, "d_out": args.d, "batch": args.batch,
      "length": args.length, "dtype": "float32", "rank": args.rank, "F": list(args.F),
      "feature_types": ["task", "lang"], "repeats": args.repeats, "seed": args.seed,
      "loss": "mean(y**2); grads w.r.t. x and adapter params, base kernel frozen",
      "statistic": "median over interleaved rounds", "settle": args.settle,
      "reference": REFERENCE,
      "masked_max_columns": MASKED_MAX_COLUMNS, "ragged_max_F": RAGGED_MAX_F,
      "max_temp_gib": args.max_temp_gib,
      "jax": jax.__version__, "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
      "python": platform.python_version(), "loadavg_at_start": load},
      "records": records, "bar": bar}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return result


def int_list(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v.strip()]


def add_layer_parser(sub) -> None:
  p = sub.add_parser("layer", help="forward+backward time of one FlixDense per strategy and F")
  p.add_argument("--F", type=int_list, default=list(DEFAULT_F),
                 help="comma-separated total feature counts (split evenly over task and lang)")
  p.add_argument("--repeats", type=int, default=7, help="timed rounds")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--d", type=int, default=512, help="d_in = d_out")
  p.add_argument("--rank", type=int, default=8, help="rank of every feature adapter")
  p.add_argument("--settle", type=int, default=3,
                 help="untimed calls of a configuration right before each of its timed calls")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-temp-gib", type=float, default=4.0,
                 help="skip a configuration whose compiled step plans more temporaries than this")
  p.add_argument("--json", help="write the results here")
  p.set_defaults(func=run_layer)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m flix.bench", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  add_layer_parser(sub)
  bench_train.add_train_parser(sub, int_list)
  bench_peft.add_peft_parser(sub, int_list)
  bench_decode.add_decode_parser(sub)
  args = parser.parse_args(argv)
  if args.command == "train":
    bench_train.check_train_args(parser, args)
  if args.command == "peft":
    bench_peft.check_peft_args(parser, args)
  if args.command == "decode":
    bench_decode.check_decode_args(parser, args)
  if args.command == "layer":
    args.F = sorted(set(args.F))
    if args.repeats < 1 or args.settle < 0:
      parser.error("--repeats must be >= 1 and --settle >= 0")
  return args


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  host_memory.retain_freed_memory()  # Before JAX starts its backend.
  return args.func(args)


if __name__ == "__main__":
  main()
