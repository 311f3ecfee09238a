"""`python -m experiments.study [--grids offline,morph] [--seeds 0,1,2] [--methods ...] --out DIR`.

Runs every (grid, method, seed), each cached (`experiments.study.runs`), then writes
`DIR/{grid}/study.json`, `study.md`, `differences.png`, `heatmap.png`. A rerun trains only what
is new (another seed, another method); `--archive DIR` also keeps every finished run's results
in DIR, and a run found there is not retrained. Processes may share a cache: a run another one
is training, or whose grid's base it is pretraining, is taken last (`experiments.study.runs`). One
progress line per finished run gives the count, where the run came from, the elapsed time and
the ETA from the mean run time so far.
Grids: `offline` and `morph` (runs 1-12), `offline2` and `morph2` (distinct validation and test
held-out cells, issue 35; `experiments.study.grids`). The morphology grids are skipped with a
message when the release files are absent. `--ablation NAME` runs a lever's methods instead
(read its validation numbers). `--finetune_learning_rate`, `--finetune_steps`, `--schedule` and
`--pretrain_steps` override every grid's budget (levers).
`--quick`: a smoke test (the tests run it; at most 2 minutes on 2 cores): by default ONE grid
(offline2's quick version: a 2 + 2 layer d_model 64 T5, 2 tasks x 6 languages, base 40 steps,
20 fine-tuning steps of batch 16, 4 examples per seen cell and 8 per held-out cell), ONE seed
(0) and TWO methods (lora, flix): 2 runs. `--grids`, `--seeds` and `--methods` still choose
others (each grid's quick version).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from flix import host_memory  # noqa: E402

DEFAULT_MORPH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), os.pardir, "shared", "data", "morphology")
# LoRA, the paper's design (task + language adapters, feature dropout 0.3) and the setting the
# offline grid's validation cells chose (docs/study.md run 6).
DEFAULT_METHODS = ("lora", "flix", "flix_derived_p0.0")
DEFAULT_GRIDS = ("offline", "morph")
QUICK = {"grids": ["offline2"], "seeds": [0], "methods": ["lora", "flix"]}  # --quick's defaults.
BUDGET_LEVERS = ("finetune_steps", "finetune_learning_rate", "schedule", "pretrain_steps")


def int_list(text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
  if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
    raise argparse.ArgumentTypeError(f"expected distinct integers >= 0, got {text!r}")
  return values


def name_list(text: str) -> list[str]:
  values = [v.strip() for v in text.split(",") if v.strip()]
  if not values:
    raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
  return values


def parse_args(argv=None) -> argparse.Namespace:
  from experiments.study import grids as grid_lib  # pylint: disable=import-outside-toplevel
  from experiments.study import methods  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="python -m experiments.study", description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="report directory")
  parser.add_argument("--grids", type=name_list, default=None,
                      help=f"from {list(grid_lib.GRIDS)} (default {','.join(DEFAULT_GRIDS)}; "
                           "--quick: offline2)")
  parser.add_argument("--seeds", type=int_list, default=None,
                      help="default 0,1,2 (--quick: 0)")
  parser.add_argument("--methods", type=name_list, default=None,
                      help=f"from {sorted(methods.METHODS)} and lora_r{{N}} (default "
                           f"{','.join(DEFAULT_METHODS)}; --quick: lora,flix)")
  parser.add_argument("--baseline", default="lora",
                      help="the method every difference is against, added to the methods if "
                           "missing (default lora); 'none': only the given methods, no "
                           "differences (e.g. one side of the comparison at its own rate)")
  parser.add_argument("--ablation", choices=sorted(methods.ABLATIONS), default=None,
                      help="run a lever's methods (plus lora) instead of --methods")
  parser.add_argument("--morph_dir", default=os.path.normpath(DEFAULT_MORPH_DIR),
                      help="the release files (sigmorphon2023/, wikipron/)")
  parser.add_argument("--cache_dir", default=os.path.join(os.path.expanduser("~"), ".cache",
                                                          "flix", "study"))
  parser.add_argument("--archive", default=None,
                      help="also keep each finished run's results here (no checkpoints, ~30 kB a "
                           "run); runs found here are not retrained: copy or commit it to carry a "
                           "study across machines whose caches are not shared")
  parser.add_argument("--tfds_data_dir", default=None, help="TFDS data dir (default TFDS's)")
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: tiny model, one small grid, one seed, two methods "
                           "(at most 2 min)")
  parser.add_argument("--finetune_steps", type=int, default=None,
                      help="override every grid's fine-tuning steps (a lever)")
  parser.add_argument("--finetune_learning_rate", type=float, default=None,
                      help="override every grid's fine-tuning learning rate (a lever; the "
                           "grids' default is 1e-3)")
  parser.add_argument("--schedule", choices=("constant", "linear", "cosine"), default=None,
                      help="override the fine-tuning learning-rate schedule (a lever)")
  parser.add_argument("--pretrain_steps", type=int, default=None,
                      help="override the base's pretraining steps (a lever: another base)")
  parser.add_argument("--n_boot", type=int, default=2000, help="bootstrap replicates")
  args = parser.parse_args(argv)
  defaults = QUICK if args.quick else {"grids": list(DEFAULT_GRIDS), "seeds": [0, 1, 2],
                                       "methods": list(DEFAULT_METHODS)}
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  unknown = [g for g in args.grids if g not in grid_lib.GRIDS]
  if unknown:
    parser.error(f"unknown grids {unknown}; expected some of {list(grid_lib.GRIDS)}")
  chosen = list(methods.ABLATIONS[args.ablation]) if args.ablation else list(args.methods)
  if args.baseline != "none" and args.baseline not in chosen:
    chosen.insert(0, args.baseline)  # Every difference is against the baseline.
  try:
    args.specs = [methods.method(m) for m in chosen]
    methods.check_budget(args.specs)
    for grid in args.grids:
      for spec in args.specs:
        try:
          grid_lib.check_method_data(grid, spec.derived, spec.features, spec.inputs)
        except ValueError as e:
          raise ValueError(f"method {spec.name}: {e}") from None
  except ValueError as e:
    parser.error(str(e))
  if args.n_boot < 100:
    parser.error(f"--n_boot must be >= 100, got {args.n_boot}")
  for name in ("finetune_steps", "pretrain_steps"):
    value = getattr(args, name)
    if value is not None and value < 1:
      parser.error(f"--{name} must be >= 1, got {value}")
  rate = args.finetune_learning_rate
  if rate is not None and not 0 < rate < 1:
    parser.error(f"--finetune_learning_rate must be in (0, 1), got {rate}")
  return args


def grids(args: argparse.Namespace) -> list:
  from experiments.study import grids as grid_lib  # pylint: disable=import-outside-toplevel
  out = []
  for name in args.grids:
    if name == "offline":
      out.append(grid_lib.offline_grid(args.quick))
    elif name == "offline2":
      out.append(grid_lib.offline2_grid(args.quick))
    elif not os.path.isdir(os.path.join(args.morph_dir, "sigmorphon2023")):
      print(f"[study] skipping the {name} grid: no release files under {args.morph_dir} "
            "(pass --morph_dir)", file=sys.stderr)
    elif name == "morph":
      out.append(grid_lib.morph_grid(args.morph_dir, args.quick, args.tfds_data_dir))
    else:
      if args.quick:
        print("[study] the morph2 grid has no quick version: running it in full",
              file=sys.stderr)
      out.append(grid_lib.morph2_grid(args.morph_dir, args.tfds_data_dir))
  overrides = {k: getattr(args, k) for k in BUDGET_LEVERS if getattr(args, k) is not None}
  return [dataclasses.replace(g, budget=dataclasses.replace(g.budget, **overrides))
          for g in out]


def duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else (
      f"{seconds // 60}m{seconds % 60:02d}s")


def main(argv=None) -> int:
  args = parse_args(argv)
  host_memory.retain_freed_memory()  # Before JAX starts its backend.
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.ERROR)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()
  from experiments.study import methods, report, runs  # pylint: disable=import-outside-toplevel
  if args.quick and args.cache_dir == parse_args(["--out", "x"]).cache_dir:
    # Not the default cache: the quick grids' runs are smoke tests.
    args.cache_dir = os.path.join(args.out, "cache")
  chosen = grids(args)
  if not chosen:
    print("error: no grid to run", file=sys.stderr)
    return 1
  total = len(chosen) * len(args.specs) * len(args.seeds)
  start, done, trained, run_seconds = time.time(), 0, 0, 0.0
  bases: dict[str, str] = {}  # Pretrained when a run of the grid first needs training.
  results: dict[str, dict[str, list]] = {grid.name: {} for grid in chosen}

  def one_run(seed, grid, spec, evaluators, wait: bool, deferred: bool = False) -> bool:
    """Runs (or reads) one run and prints progress; False if another process has it (said
    once: not again for a run already `deferred`)."""
    nonlocal done, trained, run_seconds
    run_start = time.time()
    try:
      if not runs.done(grid, spec, seed, args.cache_dir, args.archive) and grid.name not in bases:
        bases[grid.name] = runs.pretrain_base(grid, args.cache_dir, wait)
      record, how = runs.run(grid, spec, seed, args.cache_dir, bases.get(grid.name),
                            evaluators, args.archive, wait=wait)
    except runs.RunBusy as e:
      if not deferred:
        print(f"[study] {e}; coming back to it after the others", file=sys.stderr, flush=True)
      return False
    results[grid.name].setdefault(spec.name, []).append(record)
    done += 1
    if how == "trained":
      trained += 1
      run_seconds += time.time() - run_start
    elapsed = time.time() - start
    eta = run_seconds / max(trained, 1) * (total - done)  # Mean trained run; cache is free.
    print(f"[study] {done}/{total} runs ({grid.name} {spec.name} seed {seed}: {how}, "
          f"{duration(time.time() - run_start)}) | elapsed {duration(elapsed)} | "
          f"ETA {duration(eta)}", file=sys.stderr, flush=True)
    return True

  # Seed-major, grids interleaved: a partial study holds complete paired comparisons. Runs that
  # another process sharing the cache is training, or whose base it is pretraining, are taken
  # last: two processes pretrain two grids' bases side by side. Of those, any that has become
  # free is taken before waiting for one that has not.
  deferred = []
  for seed in args.seeds:
    evaluators: dict = {}  # Shared by the runs of this seed's registrations.
    for grid in chosen:
      for spec in args.specs:
        if not one_run(seed, grid, spec, evaluators, wait=False):
          deferred.append((seed, grid, spec))
  while deferred:
    busy = [run for run in deferred if not one_run(*run, {}, wait=False, deferred=True)]
    if len(busy) == len(deferred):  # All still busy elsewhere: wait for the first.
      one_run(*busy.pop(0), {}, wait=True, deferred=True)
    deferred = busy
  for grid in chosen:
    study = report.build(grid, [s.name for s in args.specs], args.seeds, results[grid.name],
                         time.time() - start, args.n_boot, baseline=args.baseline,
                         reference=methods.ABLATION_REFERENCES.get(args.ablation))
    report.write(study, os.path.join(args.out, grid.name))
    print(f"{grid.name}:\n" + report.tables(study["summary"], study["differences"],
                                            study["methods"], study["trained_params"],
                                            study["rank_exempt"]))
    if "reference" in study:
      print(report.difference_table(study["reference"]["test"]))
  print(f"wrote {args.out} in {duration(time.time() - start)} ({trained} runs trained, "
        f"{total - trained} from the cache, the archive or another process)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
