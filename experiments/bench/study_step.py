"""`python -m experiments.bench study`: the study's fine-tuning step, per method and FLix strategy.

Times the step `python -m experiments.study` fine-tunes with (`flix.training.step.make_train_step`:
lazy dense rows, row-separable AdamW at a constant 1e-3 after global-norm clipping, base frozen)
for each study method (`experiments.study.methods`), at the offline grid's sizes: its model
(`SMALL_T5`; `--quick`: the quick study's `TINY_T5` grid), batch, input and target lengths and
feature space (its tasks, languages, and the languages' families and scripts where a method
derives them). Tokens are synthetic and feature ids uniform per type; methods with feature
dropout drop as in training.

Every FLix method runs under each `--strategies` entry (`flix.layers`; "auto" resolves as the
trainer does, `FlixConfig.resolved_strategy`); `--optimizers sgd` swaps
AdamW for plain SGD, which shows the optimizer's share of the step. Rounds interleave every
case (`core.time_rounds`). Each record has the median and minimum seconds, the ratio to LoRA's
median, the compile seconds, the lines of lowered StableHLO, and the loss after every step the
case ran: all cases run the same number of steps on the same batch, so the strategies of one
method agree to float rounding (a check that they compute the same thing).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.bench import core
from experiments.bench.synthetic import random_tokens, synthetic_params, trainer_batch, uniform_ids
from flix.config import STRATEGIES
from flix.models.model import make_model
from flix.trainable import freeze_base, trainable_mask
from flix.training.optimizers import make_optimizer
from flix.training.state import TrainState
from flix.training.step import make_train_step

OPTIMIZERS = ("adamw", "sgd")
REFERENCE = "lora"


@dataclasses.dataclass
class Case:
  """One configuration and, once built, its blocking `run` (one step on the held state)."""

  method: str
  strategy: str | None  # None: LoRA (no feature tables).
  optimizer: str
  resolved: str | None = None
  compile_seconds: float = 0.0
  hlo_lines: int = 0
  run: Callable[[], Any] | None = None
  loss: float | None = None


def grid_of(args: argparse.Namespace):
  from experiments.study import grids  # pylint: disable=import-outside-toplevel
  return grids.offline_grid(quick=args.quick)


def flix_config(grid, method, strategy: str | None):
  """The method's adapters over the grid's feature space (seed 0's hold-out: same sizes)."""
  from flix.data import offline  # pylint: disable=import-outside-toplevel
  data = offline.generate(grid.config(0)).feature_space(derived=method.derived)
  adapters = method.adapters()
  if strategy is not None:
    adapters = dataclasses.replace(adapters, strategy=strategy)
  return adapters.flix_config(data)


def build(case: Case, grid, args: argparse.Namespace) -> None:
  """Initialises the state, lowers and compiles the donating step; `case.run` runs one step."""
  from experiments.study import methods  # pylint: disable=import-outside-toplevel
  method = methods.method(case.method)
  flix = flix_config(grid, method, case.strategy)
  case.resolved = flix.resolved_strategy() if flix.space.n_types else None
  model = make_model(grid.model, flix, feature_dropout=method.feature_dropout)
  params = synthetic_params(model, args.seed)
  opt = (make_optimizer("adamw", learning_rate=grid.budget.finetune_learning_rate)
         if case.optimizer == "adamw" else optax.sgd(grid.budget.finetune_learning_rate))
  opt = freeze_base(opt, params, method.method)
  state = TrainState(step=jnp.int32(0), params=params, opt_state=opt.init(params),
                     rng=jax.random.key_data(jax.random.key(args.seed)))
  rng = np.random.default_rng(args.seed)
  lengths = (grid.offline.input_length, grid.offline.target_length)
  batch_size = grid.budget.batch_size
  batch = trainer_batch(random_tokens(rng, grid.model.vocab_size, (batch_size, lengths[0])),
                        random_tokens(rng, grid.model.vocab_size, (batch_size, lengths[1])),
                        uniform_ids(flix, batch_size, rng))
  step = jax.jit(make_train_step(model, opt, trainable_mask(params, method.method)),
                 donate_argnums=0)
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  case.hlo_lines = len(lowered.as_text().splitlines())
  compiled = lowered.compile()
  case.compile_seconds = time.perf_counter() - start
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    case.loss = float(jax.block_until_ready(metrics)["loss"])
    return metrics

  case.run = run


def cases_for(args: argparse.Namespace) -> list[Case]:
  """LoRA once per optimizer, every FLix method once per strategy and optimizer."""
  from experiments.study import methods  # pylint: disable=import-outside-toplevel
  cases = []
  for opt in args.optimizers:
    for name in args.methods:
      lora = methods.method(name).method == "lora"
      cases += [Case(name, None if lora else s, opt) for s in ([None] if lora else args.strategies)]
  return cases


COLUMNS = [("optimizer", lambda r: r["optimizer"]), ("method", lambda r: r["method"]),
           ("strategy", lambda r: core.dash(r["strategy"]) + (
               f" ({r['resolved']})" if r["strategy"] == "auto" else "")),
           ("median ms", lambda r: f"{r['seconds'] * 1e3:.1f}"),
           ("min ms", lambda r: f"{r['min_seconds'] * 1e3:.1f}"),
           ("x lora", lambda r: f"{r['ratio_vs_lora']:.2f}"),
           ("compile s", lambda r: f"{r['compile_seconds']:.1f}"),
           ("HLO lines", lambda r: str(r["hlo_lines"])),
           ("loss", lambda r: f"{r['loss']:.6f}")]


def run(args: argparse.Namespace) -> dict:
  load = os.getloadavg()
  grid = grid_of(args)
  cases = cases_for(args)
  for c in cases:
    build(c, grid, args)
    core.log(f"study step: built {c.method} {c.strategy or ''} {c.optimizer} "
             f"({c.compile_seconds:.1f} s)")
  seconds = core.time_rounds([c.run for c in cases], args.repeats, warmup=1, settle=args.settle,
                             label="study step")
  tokens = grid.budget.batch_size * (grid.offline.input_length + grid.offline.target_length)
  records = [{"method": c.method, "strategy": c.strategy, "resolved": c.resolved,
              "optimizer": c.optimizer, **core.summary(s, tokens), "loss": c.loss,
              "compile_seconds": c.compile_seconds, "hlo_lines": c.hlo_lines}
             for c, s in zip(cases, seconds)]
  for opt in args.optimizers:
    ref = next(r for r in records if r["optimizer"] == opt and r["method"] == REFERENCE)
    for r in records:
      if r["optimizer"] == opt:
        r["ratio_vs_lora"] = r["seconds"] / ref["seconds"]
  print(core.table(COLUMNS, records))
  result = {"config": {
      "command": "study", "grid": grid.name, "quick": args.quick,
      "model": dataclasses.asdict(grid.model), "batch": grid.budget.batch_size,
      "input_length": grid.offline.input_length, "target_length": grid.offline.target_length,
      "methods": list(args.methods), "strategies": list(args.strategies),
      "optimizers": list(args.optimizers), "repeats": args.repeats, "settle": args.settle,
      "seed": args.seed, "statistic": "median over interleaved rounds",
      "reference": REFERENCE, **core.environment(load)},
      "records": records}
  core.write_json(args.json, result)
  return result


def add_parser(sub) -> None:
  p = sub.add_parser("study", help="the study's fine-tuning step per method and FLix strategy")
  p.add_argument("--methods", type=core.str_list, default=["lora", "flix_derived_p0.0"],
                 help="comma-separated study methods (experiments.study.methods); must include lora")
  p.add_argument("--strategies", type=core.str_list, default=["auto", "masked", "gather"],
                 help=f"FLix strategies, a subset of {','.join(STRATEGIES)}")
  p.add_argument("--optimizers", type=core.str_list, default=["adamw"],
                 help=f"comma-separated subset of {','.join(OPTIMIZERS)}")
  p.add_argument("--quick", action="store_true",
                 help="the quick study's tiny grid (TINY_T5, 3 tasks x 4 languages): smoke tests")
  p.add_argument("--repeats", type=int, default=20, help="timed interleaved rounds")
  p.add_argument("--settle", type=int, default=1, help="untimed steps before each timed one")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="write the results here")
  p.set_defaults(run=run, check=check_args)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  from experiments.study import methods  # pylint: disable=import-outside-toplevel
  unknown = []
  for m in args.methods:
    try:
      methods.method(m)  # One of METHODS, or lora_r{N}.
    except ValueError:
      unknown.append(m)
  if unknown:
    parser.error(f"unknown study methods {unknown}; known: {sorted(methods.METHODS)}")
  if REFERENCE not in args.methods:
    parser.error(f"--methods must include {REFERENCE!r} (every ratio is against it), got "
                 f"{args.methods}")
  for flag, allowed in (("strategies", STRATEGIES), ("optimizers", OPTIMIZERS)):
    values = getattr(args, flag)
    if not values or any(v not in allowed for v in values):
      parser.error(f"--{flag} must be a non-empty subset of {list(allowed)}, got {values}")
  if args.repeats < 1 or args.settle < 0:
    parser.error(f"--repeats must be >= 1 and --settle >= 0, got {args.repeats}, {args.settle}")
