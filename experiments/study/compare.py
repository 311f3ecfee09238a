r"""`python -m experiments.study.compare`: one lever's paired effect, from archived (or cached) runs.

    python -m experiments.study.compare --archive docs/study/archive --grid offline \
        --methods lora,flix_derived_p0.0 --vary finetune_steps --values 2000,4000

prints, for each method and split, the mean difference (second value minus first) with its
95% paired bootstrap interval over seeds and examples, as docs/study.md's lever tables. The
runs compared differ only in `--vary` (a field of the grid's budget: finetune_steps,
pretrain_steps, schedule, ...); every other part of their configuration is the same, and they
are paired seed by seed (a seed with a run at only one of the two values is left out). Runs
are read from the archive's `{grid}/*.json` (`--archive`) and the cache's
`runs/{grid}/*/results.json` (`--cache_dir`).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from experiments.study import report, runs, stats  # noqa: E402

SPLITS = ("validation", "test")


def read_runs(grid: str, archive: str | None, cache_dir: str | None) -> list[dict]:
  """Every finished run of `grid` in the archive and the cache (each configuration once)."""
  paths = []
  if archive:
    paths += sorted(glob.glob(os.path.join(archive, grid, "*.json")))
  if cache_dir:
    paths += sorted(glob.glob(os.path.join(cache_dir, "runs", grid, "*", runs.RESULTS)))
  found = {}
  for path in paths:
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
    found.setdefault(runs.digest(results["key"]), results)
  return list(found.values())


def pair_groups(method_runs: Sequence[dict], vary: str, values: Sequence[str]
                ) -> tuple[list[dict], list[dict]]:
  """One method's runs at `values[0]` and at `values[1]`, seed by seed, whose configurations
  differ only in the budget field `vary`."""
  wanted = {_parse(text): text for text in values}  # Budget value -> its command-line text.
  groups: dict[str, dict[int, dict[str, dict]]] = {}  # rest of the key -> seed -> value -> run
  for r in method_runs:
    budget = r["key"]["grid"]["budget"]
    if vary not in budget:
      raise ValueError(f"--vary {vary!r} is not a budget field; expected one of {sorted(budget)}")
    if budget[vary] not in wanted:
      continue
    rest = runs.digest_without({**r["key"], "seed": None, "holdout": None}, vary)
    groups.setdefault(rest, {}).setdefault(r["seed"], {})[wanted[budget[vary]]] = r
  complete = [paired for paired in (
      {seed: by_value for seed, by_value in g.items() if len(by_value) == 2}
      for g in groups.values()) if paired]
  if not complete:
    raise ValueError(f"no seed has runs at both {vary} = {values[0]} and {values[1]} with "
                     "otherwise equal configurations")
  if len(complete) > 1:
    raise ValueError(f"{len(complete)} configurations have runs at both values of {vary}; "
                     "give a narrower archive or cache")
  (group,) = complete
  seeds = sorted(group)
  return [group[s][values[0]] for s in seeds], [group[s][values[1]] for s in seeds]


def _parse(text: str) -> Any:
  """A command-line value as the budget stores it: 2000 and 1e-3 as numbers, names as text."""
  try:
    return json.loads(text)
  except ValueError:
    return text


def compare(all_runs: Sequence[dict], methods: Sequence[str], vary: str, values: Sequence[str],
            n_boot: int = 2000) -> dict[str, dict[str, dict]]:
  """`{method: {split: {kind: {"mean", "ci95"}}}}` of `values[1]` minus `values[0]`."""
  out = {}
  for method in methods:
    mine = [r for r in all_runs if r["method"] == method]
    if not mine:
      known = sorted({r["method"] for r in all_runs})
      raise ValueError(f"no runs of method {method!r}; found {known}")
    first, second = pair_groups(mine, vary, values)
    out[method] = {}
    for split in SPLITS:
      scores = {values[0]: stats.kind_scores(first, split),
                values[1]: stats.kind_scores(second, split)}
      _, differences = stats.summarize(scores, list(report.KINDS), baseline=values[0],
                                       n_boot=n_boot)
      out[method][split] = differences[f"{values[1]}-{values[0]}"]
  return out


def table(result: dict[str, dict[str, dict]]) -> str:
  return report.difference_table({f"{method}, {split}": kinds
                                  for method, splits in result.items()
                                  for split, kinds in splits.items()})


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.study.compare", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--grid", required=True, help="offline or morph")
  parser.add_argument("--methods", required=True, help="comma-separated method names")
  parser.add_argument("--vary", required=True, help="the budget field that differs")
  parser.add_argument("--values", required=True, help="two values of it: FIRST,SECOND")
  parser.add_argument("--archive", default=None, help="a study archive (--archive of the study)")
  parser.add_argument("--cache_dir", default=None, help="a study cache (--cache_dir)")
  parser.add_argument("--n_boot", type=int, default=2000)
  args = parser.parse_args(argv)
  values = [v.strip() for v in args.values.split(",") if v.strip()]
  if len(values) != 2 or values[0] == values[1]:
    parser.error(f"--values needs two different values, got {args.values!r}")
  if not (args.archive or args.cache_dir):
    parser.error("give --archive or --cache_dir (where the runs are)")
  all_runs = read_runs(args.grid, args.archive, args.cache_dir)
  if not all_runs:
    where = " or ".join(d for d in (args.archive, args.cache_dir) if d)
    print(f"error: no finished runs of grid {args.grid!r} under {where}", file=sys.stderr)
    return 1
  try:
    result = compare(all_runs, [m.strip() for m in args.methods.split(",") if m.strip()],
                     args.vary, values, args.n_boot)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{args.vary} {values[1]} minus {values[0]}, paired over seeds and examples "
        f"({args.grid} grid):\n\n{table(result)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
