"""`python -m experiments.bench packing`: real (non-padding) tokens per second, packed vs unpacked rows.

On the embedded offline grid (`flix.data.offline`, generated in memory) and, with
`--morphology_dir`, the morphology grid (`flix.data.morphology_tasks`; TFDS datasets are built
on first use in `--tfds_data_dir`), the training mixture is read exactly as `flix.train` reads
it (`flix.training.batches.TrainBatches`) with the model's converter at pack=False and pack=True
(feature-aware packing, `flix.data.packing`), at the grid's TASK_FEATURE_LENGTHS. The model is
the tiny byte-level T5 (`--model`) with FLix task and language adapters (rank 8) on the grid's
feature space, one jitted state-donating train step (AdamW), float32.

Per grid and mode, `--batches` batches are read first (input seconds reported apart), then the
steps are timed in interleaved rounds (`core.time_rounds`), each step on the next stored batch.
Real tokens are the non-zero encoder inputs plus the non-zero decoder targets of a batch; real
tokens/s = mean real tokens per batch / median step seconds. Rows have the same shapes in both
modes, so a step costs about the same and the ratio is mostly how much more of each row is
real data (`fill`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import core
from experiments.bench.synthetic import add_size_flags, model_config, synthetic_params
from flix.config import FlixConfig
from flix.data.converter import feature_converter
from flix.models.model import make_model
from flix.trainable import freeze_base, trainable_mask
from flix.training.batches import TrainBatches
from flix.training.optimizers import make_optimizer
from flix.training.state import TrainState
from flix.training.step import StepConfig, make_train_step

GRIDS = ("offline", "morphology")
MODES = (False, True)
TOKEN_KEYS = ("encoder_input_tokens", "decoder_target_tokens")


def register(grid: str, args):
  """(registration, task_feature_lengths) of `grid`, as experiments/{offline,morph}_flix.gin."""
  if grid == "offline":
    from flix.data.offline import OfflineConfig  # pylint: disable=import-outside-toplevel
    from flix.data.offline_tasks import register_offline  # pylint: disable=import-outside-toplevel
    reg = register_offline(OfflineConfig(prefix="task_lang"), prefix="bench_pack_offline")
    return reg, {"inputs": 32, "targets": 64}
  from flix.data.morphology_tasks import (  # pylint: disable=import-outside-toplevel
      register_morphology_experiment)
  reg = register_morphology_experiment(args.morphology_dir, langs=args.morphology_langs,
                                       name="bench_pack_morph",
                                       tfds_data_dir=args.tfds_data_dir)
  return reg, {"inputs": 72, "targets": 64}


def real_tokens(batch: dict) -> int:
  """Non-padding tokens of a batch: encoder inputs plus decoder targets."""
  return int(sum(np.count_nonzero(batch[k]) for k in TOKEN_KEYS if k in batch))


def examples_in(batch: dict) -> int:
  """Examples in a batch: segments of packed rows, rows with targets otherwise."""
  if "decoder_segment_ids" in batch:
    seg = batch["decoder_segment_ids"]
    return int(np.count_nonzero((seg > 0) & (np.pad(seg, ((0, 0), (1, 0)))[:, :-1] != seg)))
  return int(np.count_nonzero(batch["decoder_target_tokens"].any(axis=1)))


@dataclasses.dataclass
class Mode:
  """One grid read packed or not: its stored batches and what they hold."""

  grid: str
  pack: bool
  batches: list
  input_seconds: float
  capacity: int
  run: object = None

  def record(self, seconds: list[float]) -> dict:
    real = float(np.mean([real_tokens(b) for b in self.batches]))
    examples = float(np.mean([examples_in(b) for b in self.batches]))
    return {"grid": self.grid, "pack": self.pack, **core.summary(seconds),
            "real_tokens_per_batch": real, "capacity_tokens_per_batch": self.capacity,
            "fill": real / self.capacity, "examples_per_batch": examples,
            "real_tokens_per_s": real / core.summary(seconds)["seconds"],
            "input_seconds_per_batch": self.input_seconds / len(self.batches)}


def read_batches(grid: str, reg, lengths: dict, model, pack: bool, args) -> Mode:
  start = time.perf_counter()
  stream = TrainBatches(reg.train_mixture, lengths, args.batch,
                        feature_converter(model, reg.space.n_types, pack=pack), args.seed,
                        input_threads=None)
  batches = list(itertools.islice(stream, args.batches))
  seconds = time.perf_counter() - start
  capacity = args.batch * sum(lengths.values())
  fill = np.mean([real_tokens(b) for b in batches]) / capacity
  core.log(f"packing {grid} pack={pack}: read {len(batches)} batches in {seconds:.1f} s; fill "
           f"{fill:.3f}, {np.mean([examples_in(b) for b in batches]):.1f} examples per batch")
  return Mode(grid, pack, batches, seconds, capacity)


def build_step(mode: Mode, model, params, optimizer, mask) -> None:
  """Compiles the donating step for the mode's batch shapes; `mode.run` runs one step (blocking)
  on the next stored batch. The mode's state holds its own copy of `params` (donated)."""
  params = jax.tree.map(jnp.array, params)
  state = TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                     rng=jax.random.key_data(jax.random.key(0)))
  step = jax.jit(make_train_step(model, optimizer, mask, StepConfig()), donate_argnums=0)
  device = [jax.tree.map(jnp.asarray, b) for b in mode.batches]
  compiled = step.lower(state, device[0]).compile()
  holder = {"state": state, "next": itertools.cycle(device)}

  def run():
    holder["state"], metrics = compiled(holder["state"], next(holder["next"]))
    return jax.block_until_ready(metrics)

  mode.run = run


def run_grid(grid: str, cfg, args) -> list[dict]:
  reg, lengths = register(grid, args)
  model = make_model(cfg, FlixConfig(reg.space, ranks=args.rank))
  params = synthetic_params(model, args.seed)
  optimizer = freeze_base(make_optimizer("adamw", learning_rate=1e-3, per_row=True), params,
                          "flix")
  mask = trainable_mask(params, "flix")
  modes = [read_batches(grid, reg, lengths, model, pack, args) for pack in MODES]
  for m in modes:
    build_step(m, model, params, optimizer, mask)
  seconds = core.time_rounds([m.run for m in modes], args.repeats, warmup=1, settle=args.settle,
                             label=f"packing {grid}")
  records = [m.record(s) for m, s in zip(modes, seconds)]
  unpacked = records[0]
  for r in records:
    r["real_tokens_per_s_vs_unpacked"] = r["real_tokens_per_s"] / unpacked["real_tokens_per_s"]
    r["step_seconds_vs_unpacked"] = r["seconds"] / unpacked["seconds"]
  return records


COLUMNS = [("grid", lambda r: r["grid"]), ("pack", lambda r: r["pack"]),
           ("median ms", lambda r: f"{r['seconds'] * 1e3:.1f}"),
           ("examples/batch", lambda r: f"{r['examples_per_batch']:.1f}"),
           ("fill", lambda r: f"{r['fill']:.3f}"),
           ("real tokens/s", lambda r: f"{r['real_tokens_per_s']:.0f}"),
           ("x unpacked", lambda r: f"{r['real_tokens_per_s_vs_unpacked']:.2f}"),
           ("input ms/batch", lambda r: f"{r['input_seconds_per_batch'] * 1e3:.0f}")]


def run(args: argparse.Namespace) -> dict:
  load = os.getloadavg()
  cfg = model_config(args)
  grids = [g for g in args.grids if g != "morphology" or args.morphology_dir]
  records = []
  for grid in grids:
    records += run_grid(grid, cfg, args)
    core.log(core.table(COLUMNS, records))
  print(core.table(COLUMNS, records))
  result = {"config": {
      "command": "packing", "model": args.model, "t5": dataclasses.asdict(cfg),
      "batch": args.batch, "batches": args.batches, "rank": args.rank, "grids": grids,
      "morphology_dir": args.morphology_dir, "morphology_langs": args.morphology_langs,
      "repeats": args.repeats, "settle": args.settle,
      "seed": args.seed, "optimizer": "adamw (per_row)", "dtype": "float32",
      "statistic": "median step seconds over interleaved rounds; real tokens = non-zero "
                   "encoder inputs + decoder targets", **core.environment(load)},
      "records": records}
  core.write_json(args.json, result)
  return result


def add_parser(sub) -> None:
  p = sub.add_parser("packing", help="real tokens/s of training rows packed vs unpacked")
  add_size_flags(p)
  p.add_argument("--grids", type=core.str_list, default=list(GRIDS),
                 help="comma-separated subset of offline,morphology (morphology needs "
                      "--morphology_dir)")
  p.add_argument("--morphology_dir", default=None,
                 help="the morphology release (e.g. /work/shared/data/morphology): also bench "
                      "the morphology grid")
  p.add_argument("--morphology_langs", type=core.str_list, default=None,
                 help="comma-separated languages of the morphology grid (default: all)")
  p.add_argument("--tfds_data_dir", default=None,
                 help="where the morphology TFDS datasets are built (default: TFDS's)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--batches", type=int, default=8, help="stored batches per grid and mode")
  p.add_argument("--rank", type=int, default=8, help="rank of every feature adapter")
  p.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds")
  p.add_argument("--settle", type=int, default=1, help="untimed steps before each timed one")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="write the results here")
  p.set_defaults(run=run, check=check_args)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  for name in ("batch", "batches", "rank", "repeats"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.settle < 0:
    parser.error(f"--settle must be >= 0, got {args.settle}")
  unknown = [g for g in args.grids if g not in GRIDS]
  if unknown or not args.grids:
    parser.error(f"--grids must be among {GRIDS}, got {args.grids}")
  if args.morphology_dir and not os.path.isdir(args.morphology_dir):
    parser.error(f"--morphology_dir {args.morphology_dir} is not a directory")
