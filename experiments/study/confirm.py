r"""`python -m experiments.study.confirm`: the confirmatory result, from archived runs (issue 35).

    python -m experiments.study.confirm --archive docs/study/archive --grid offline2 \
        --flix flix_derived_p0.0 --lora lora --seeds 3-12 --finetune_steps 4000 \
        --flix_learning_rate 3e-3 --lora_learning_rate 1e-3 \
        --out docs/study/confirmatory/study.json

reads, for each of the two methods and each seed, the ONE archived run whose whole key is the
grid's (at the given budget, each method at its own learning rate) with that method and seed
(`experiments.study.runs.archive_path`: a run of any other configuration is never read), and
writes the pre-registered endpoints (docs/study.md, "Pre-registration"):

  {"primary": {"grid", "methods": [FLIX, LORA], "budget": {...}, "seeds": [...],
               "endpoint": "unseen_pair", "split": "test",
               "difference": {"mean", "ci95": [lo, hi], "p_sign_flip", "per_seed", "n_cells"},
               "scores": {method: {"mean", "ci95"}}, "floor": {"at_floor", "cells", "share"},
               "cells": [{"seed", "task", "lang", "n", FLIX, LORA, "difference"}]},
   "secondary": {"seen": {... the same, "p_holm"}, "unseen_lang": {...}},
   "statistics": "...", "archive": [run file names]}

"budget" holds the grid's budget; a field where the two methods differ (the learning rate, when
each was tuned to its own) is `{method: value}`. Intervals: hierarchical bootstrap over seeds,
cells and examples, paired (`experiments.study.stats`); p: exact two-sided sign-flip test over
seeds; the secondary endpoints' p are Holm-adjusted as one family ("p_holm"). A missing run is
an error naming its file. Takes seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Sequence

from experiments.study import grids, methods, runs, stats

PRIMARY = "unseen_pair"
SECONDARY = ("seen", "unseen_lang")
STATISTICS = ("mean over seeds of each seed's macro mean over cells of exact match; 95% interval: "
              "hierarchical bootstrap over seeds, then cells, then examples (paired: the same "
              "draws for both methods), percentile; p_sign_flip: exact two-sided sign-flip "
              "permutation test of the mean per-seed difference (2^seeds patterns); secondary "
              "endpoints: Holm-adjusted over the family " + ", ".join(SECONDARY))


def seed_range(text: str) -> list[int]:
  """'3-12' or '3,4,5' -> the seeds."""
  try:
    if "-" in text:
      lo, hi = (int(v) for v in text.split("-"))
      seeds = list(range(lo, hi + 1))
    else:
      seeds = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected seeds as 3-12 or 3,4,5, got {text!r}") from None
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise argparse.ArgumentTypeError(f"expected distinct seeds >= 0, got {text!r}")
  return seeds


def grid_at(name: str, **budget: Any) -> grids.Grid:
  """The grid `name` at its budget with `budget`'s fields replaced (offline grids: the
  morphology grids need their release files and are built by the study CLI)."""
  factories = {"offline": grids.offline_grid, "offline2": grids.offline2_grid}
  if name not in factories:
    raise ValueError(f"grid {name!r}: expected one of {sorted(factories)}")
  grid = factories[name]()
  return dataclasses.replace(grid, budget=dataclasses.replace(grid.budget, **budget))


def read_run(archive: str, grid: grids.Grid, spec: methods.MethodSpec, seed: int) -> dict:
  path = runs.archive_path(grid, spec, seed, archive)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no archived run of {spec.name} seed {seed} at {grid.budget} "
                            f"(expected {path})")
  read_archived = runs._read_archived  # pylint: disable=protected-access
  return read_archived(path, runs.run_key(grid, spec, seed))  # Refuses another configuration.


def _cells(flix: stats.Scores, lora: stats.Scores, names: Sequence[str], kind: str) -> list:
  out = []
  for seed, cells in stats.paired_cells([flix, lora], kind).items():
    keys = sorted(set(flix[seed][kind]) & set(lora[seed][kind]))
    for (task, lang), (a, b) in zip(keys, cells):
      out.append({"seed": seed, "task": task, "lang": lang, "n": len(a),
                  names[0]: float(a.mean()), names[1]: float(b.mean()),
                  "difference": float(a.mean() - b.mean())})
  return out


def endpoint(flix_runs: Sequence[dict], lora_runs: Sequence[dict], names: Sequence[str],
             kind: str, split: str = "test", n_boot: int = 2000) -> dict:
  """One endpoint's entry: the paired difference FLIX minus LORA on `kind`, both scores, the
  floor share and every cell's difference."""
  flix, lora = stats.kind_scores(flix_runs, split), stats.kind_scores(lora_runs, split)
  difference = stats.estimate([flix, lora], kind, n_boot)
  if difference is None:
    raise ValueError(f"no seed has {kind} cells on {split} for both {list(names)}")
  return {"endpoint": kind, "split": split, "difference": difference,
          "scores": {n: {k: v for k, v in stats.estimate([s], kind, n_boot).items()
                         if k in ("mean", "ci95")} for n, s in zip(names, (flix, lora))},
          "floor": stats.floor_share([flix, lora], kind),
          "cells": _cells(flix, lora, names, kind)}


def build(archive: str, grid_name: str, flix: str, lora: str, seeds: Sequence[int],
          budget: dict[str, Any], per_method: dict[str, dict[str, Any]],
          n_boot: int = 2000) -> dict:
  """The confirmatory study.json dict (module docstring). `per_method[m]`: budget fields where
  method m differs from `budget` (e.g. its own learning rate)."""
  names = [flix, lora]
  loaded, files, budgets = {}, [], {}
  for name in names:
    spec = methods.method(name)
    grid = grid_at(grid_name, **budget, **per_method.get(name, {}))
    budgets[name] = dataclasses.asdict(grid.budget)
    loaded[name] = [read_run(archive, grid, spec, s) for s in seeds]
    files += [os.path.basename(runs.archive_path(grid, spec, s, archive)) for s in seeds]
  shared = {k: v if budgets[flix][k] == budgets[lora][k] else {n: budgets[n][k] for n in names}
            for k, v in budgets[flix].items()}
  head = {"grid": grid_name, "methods": names, "budget": shared, "seeds": list(seeds)}
  primary = {**head, **endpoint(loaded[flix], loaded[lora], names, PRIMARY, n_boot=n_boot)}
  secondary = {k: {**head, **endpoint(loaded[flix], loaded[lora], names, k, n_boot=n_boot)}
               for k in SECONDARY}
  adjusted = stats.holm({k: v["difference"]["p_sign_flip"] for k, v in secondary.items()})
  for k, entry in secondary.items():
    entry["difference"]["p_holm"] = adjusted[k]
  return {"primary": primary, "secondary": secondary, "statistics": STATISTICS,
          "trained_params": {n: loaded[n][0]["trained_params"] for n in names},
          "archive": sorted(files)}


def _budget_value(text: str) -> Any:
  try:
    return json.loads(text)
  except ValueError:
    return text


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.study.confirm",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--archive", required=True, help="the study archive (docs/study/archive)")
  parser.add_argument("--grid", default="offline2")
  parser.add_argument("--flix", required=True, help="the chosen FLix method (first)")
  parser.add_argument("--lora", required=True, help="the best-tuned LoRA method (second)")
  parser.add_argument("--seeds", type=seed_range, required=True, help="e.g. 3-12")
  parser.add_argument("--finetune_steps", type=int, default=None)
  parser.add_argument("--schedule", default=None)
  parser.add_argument("--flix_learning_rate", type=float, default=None)
  parser.add_argument("--lora_learning_rate", type=float, default=None)
  parser.add_argument("--budget", action="append", default=[], metavar="FIELD=VALUE",
                      help="any other budget field both methods share (repeatable)")
  parser.add_argument("--n_boot", type=int, default=2000)
  parser.add_argument("--out", required=True, help="where study.json goes")
  args = parser.parse_args(argv)
  budget = {k: getattr(args, k) for k in ("finetune_steps", "schedule")
            if getattr(args, k) is not None}
  for item in args.budget:
    field, sep, value = item.partition("=")
    if not sep:
      parser.error(f"--budget expects FIELD=VALUE, got {item!r}")
    budget[field] = _budget_value(value)
  per_method = {name: {"finetune_learning_rate": rate} for name, rate in
                ((args.flix, args.flix_learning_rate), (args.lora, args.lora_learning_rate))
                if rate is not None}
  try:
    study = build(args.archive, args.grid, args.flix, args.lora, args.seeds, budget,
                  per_method, args.n_boot)
  except (ValueError, TypeError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(study, f, indent=1, sort_keys=False)
    f.write("\n")
  d = study["primary"]["difference"]
  print(f"primary ({args.flix} - {args.lora}, unseen pairs, test, {len(args.seeds)} seeds): "
        f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], sign-flip p = "
        f"{d['p_sign_flip']:.3g}; wrote {args.out}")
  for kind, entry in study["secondary"].items():
    d = entry["difference"]
    print(f"secondary {kind}: {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], "
          f"p = {d['p_sign_flip']:.3g}, Holm {d['p_holm']:.3g}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
