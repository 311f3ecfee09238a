"""`python -m experiments.bench layer`: forward+backward time of one T5-small-like `FlixDense`
projection (d_in = d_out = 512, batch 32 x 128 tokens, float32, rank 8 per feature, two feature
types `task` and `lang` with F/2 values each, every example with one task and one language) for
every compute strategy and several feature counts F, against a plain layer (`base`) and plain
LoRA (`lora_r8`, `lora_r16`).
Each configuration times `jit(value_and_grad(loss))` with respect to the input x (a layer inside
a network back-propagates to its input) and its trainable adapter parameters; the base kernel is
frozen. `auto` is the path training takes: the batch's rows are gathered into compact tables
(`flix.rows`) inside the jitted step and the layer runs with `row_limit=batch`, so its gradients
are compact; `auto_dense` is `auto` on the full tables.

Everything is compiled and run once first; then every round runs every configuration in a fixed
interleaved order (`--settle` untimed calls, one timed), and the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import core
from experiments.bench.synthetic import feature_config, uniform_ids
from flix.config import FlixConfig
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
  temp_gib = core.memory_plan(compiled)["temp_bytes"] / 2**30
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
    lora = FlixConfig.lora(r)
    tables = adapters(init_params(lora, x, None, args.seed))
    add(f"lora_r{r}", None, dense_step(lora, args.d), (x, tables, kernel, None))
  for n in args.F:
    flix = feature_config(n, args.rank)
    ids = jnp.asarray(uniform_ids(flix, args.batch, np.random.default_rng(args.seed)))
    tables = adapters(init_params(flix, x, ids, args.seed))  # Shared by all strategies at F=n.
    fn_args = (x, tables, kernel, ids)
    for strategy in STRATEGIES:
      add(strategy, n, dense_step(flix.replace(strategy=strategy), args.d), fn_args,
          skip_reason(strategy, flix, n))
    add("auto_dense", n, dense_step(flix, args.d), fn_args, resolved=flix.resolved_strategy())
    add("auto", n, compact_step(flix, args.d, args.batch), fn_args,
        resolved=flix.replace(row_limit=args.batch).resolved_strategy())
  return configs


# -- measurement ----------------------------------------------------------------------------------
def time_configs(configs: list[dict], repeats: int, settle: int) -> None:
  """Runs every compiled step once (its loss), then times `repeats` interleaved rounds, `settle`
  untimed calls before each timed one, into `all_seconds`. A call blocks on its whole (loss,
  grads) tree; the table-sized gradients are dropped after the clock stops."""
  live = [c for c in configs if c["step"] is not None]
  for c in live:
    c["loss"] = float(jax.block_until_ready(c["step"]())[0])
  calls = [lambda step=c["step"]: jax.block_until_ready(step()) for c in live]
  for c, seconds in zip(live, core.time_rounds(calls, repeats, warmup=0, settle=settle,
                                               label="layer")):
    c["all_seconds"] = seconds


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
    rec["seconds"] = core.summary(times)["seconds"] if times else None
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


COLUMNS = [("strategy", lambda r: r["strategy"]), ("F", lambda r: core.dash(r["F"])),
           ("resolved", lambda r: r.get("resolved", "")),
           ("median ms", lambda r: core.dash(r["seconds"] and r["seconds"] * 1e3, ".2f")),
           ("x lora_r16", lambda r: core.dash(r["ratio_vs_lora_r16"], ".3f")),
           ("x own@minF", lambda r: core.dash(r["ratio_vs_own_smallest_F"], ".3f")),
           ("skipped", lambda r: r.get("skipped", ""))]


def format_bar(bar: dict) -> str:
  return core.bar_line(
      bar["holds"], f"auto@F={bar['largest_F']} = {bar['auto_vs_lora_r16']:.3f}x lora_r16 "
      f"(limit {bar['limit_vs_lora_r16']}), {bar['auto_vs_auto_smallest_F']:.3f}x "
      f"auto@F={bar['smallest_F']} (limit {bar['limit_vs_auto_smallest_F']})")


# -- command --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
  load = os.getloadavg()
  start = time.perf_counter()
  configs = build_configs(args)
  core.log(f"layer: compiled {len(configs)} configurations in {time.perf_counter() - start:.1f} s")
  time_configs(configs, args.repeats, args.settle)
  records = make_records(configs)
  bar = check_bar(records)
  print(core.table(COLUMNS, records))
  print(format_bar(bar))
  result = {"config": {
      "command": "layer", "d_in": args.d, "d_out": args.d, "batch": args.batch,
      "length": args.length, "dtype": "float32", "rank": args.rank, "F": list(args.F),
      "feature_types": ["task", "lang"], "repeats": args.repeats, "seed": args.seed,
      "loss": "mean(y**2); grads w.r.t. x and adapter params, base kernel frozen",
      "statistic": "median over interleaved rounds", "settle": args.settle,
      "reference": REFERENCE,
      "masked_max_columns": MASKED_MAX_COLUMNS, "ragged_max_F": RAGGED_MAX_F,
      "max_temp_gib": args.max_temp_gib, **core.environment(load)},
      "records": records, "bar": bar}
  core.write_json(args.json, result)
  return result


def add_parser(sub) -> None:
  p = sub.add_parser("layer", help="forward+backward time of one FlixDense per strategy and F")
  p.add_argument("--F", type=core.int_list, default=list(DEFAULT_F),
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
  p.set_defaults(run=run, check=check_args)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  args.F = sorted(set(args.F))
  if args.repeats < 1 or args.settle < 0:
    parser.error("--repeats must be >= 1 and --settle >= 0")
