r"""`python -m experiments.study.sweep`: the sweep table, from archived runs (issue 35).

    python -m experiments.study.sweep --archive docs/study/archive --grid offline2 --seeds 0,1,2

prints, for every configuration of the grid in the archive (a method at a learning rate,
schedule and budget), its VALIDATION means over the given seeds of the three split kinds, one
row each, grouped by method, with the number of configurations per method and per side (LoRA
or FLix), and the choice of each side under the pre-registered rule (docs/study.md): the
highest unseen-pair mean; within 0.005 of it, the higher trained-pair mean. Only
configurations with a run for every seed count. Test numbers are never read.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Sequence

from experiments.study import report, stats

TIE = 0.005
FIELDS = ("finetune_learning_rate", "finetune_steps", "schedule", "pretrain_steps")


def read(archive: str, grid: str) -> list[dict]:
  out = []
  for path in sorted(glob.glob(os.path.join(archive, grid, "*.json"))):
    with open(path, encoding="utf-8") as f:
      out.append(json.load(f))
  return out


def table(runs: Sequence[dict], seeds: Sequence[int]) -> list[dict]:
  """One row per configuration with a run for every seed: method, budget fields, side, the
  validation mean of each kind (None where a kind has no cells)."""
  groups: dict[tuple, dict[int, dict]] = {}
  for r in runs:
    if r["seed"] not in seeds:
      continue
    budget = r["key"]["grid"]["budget"]
    config = (r["method"], *(budget[f] for f in FIELDS))
    groups.setdefault(config, {})[r["seed"]] = r
  rows = []
  for config, by_seed in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
    if set(by_seed) != set(seeds):
      continue
    scores = stats.kind_scores(list(by_seed.values()), "validation")
    row = {"method": config[0], **dict(zip(FIELDS, config[1:])),
           "side": "lora" if by_seed[seeds[0]]["key"]["method"]["method"] == "lora" else "flix"}
    for kind in report.KINDS:
      cells = stats.paired_cells([scores], kind)
      row[kind] = (sum(sum(c[0].mean() for c in seed_cells) / len(seed_cells)
                       for seed_cells in cells.values()) / len(cells)) if cells else None
    rows.append(row)
  return rows


def choose(rows: Sequence[dict], side: str) -> dict | None:
  """The side's configuration under the rule: best unseen pairs, ties to trained pairs."""
  mine = [r for r in rows if r["side"] == side and r["unseen_pair"] is not None]
  if not mine:
    return None
  best = max(r["unseen_pair"] for r in mine)
  return max((r for r in mine if r["unseen_pair"] >= best - TIE),
             key=lambda r: (r["seen"] or 0.0, r["unseen_pair"]))


def markdown(rows: Sequence[dict]) -> str:
  fmt = lambda v: "-" if v is None else f"{v:.3f}"
  lines = ["| side | method | rate | steps | schedule | base steps | "
           + " | ".join(report.KIND_TITLES[k] for k in report.KINDS) + " |",
           "| --- | --- | ---: | ---: | --- | ---: |" + " ---: |" * len(report.KINDS)]
  for r in sorted(rows, key=lambda r: (r["side"], r["method"], r["finetune_learning_rate"],
                                       r["finetune_steps"])):
    lines.append(f"| {r['side']} | {r['method']} | {r['finetune_learning_rate']:g} | "
                 f"{r['finetune_steps']} | {r['schedule']} | {r['pretrain_steps']} | "
                 + " | ".join(fmt(r[k]) for k in report.KINDS) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.study.sweep", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--archive", required=True)
  parser.add_argument("--grid", default="offline2")
  parser.add_argument("--seeds", default="0,1,2", help="the exploratory seeds")
  args = parser.parse_args(argv)
  try:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError:
    parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
  rows = table(read(args.archive, args.grid), seeds)
  if not rows:
    print(f"error: no configuration of grid {args.grid!r} under {args.archive} has runs for "
          f"every seed of {seeds}", file=sys.stderr)
    return 1
  counts = {}
  for r in rows:
    counts.setdefault(r["side"], {}).setdefault(r["method"], 0)
    counts[r["side"]][r["method"]] += 1
  print(f"Validation means over seeds {seeds} ({args.grid}):\n\n{markdown(rows)}\n")
  for side, per_method in sorted(counts.items()):
    chosen = choose(rows, side)
    print(f"{side}: {sum(per_method.values())} configurations ({per_method}); chosen: "
          + ("-" if chosen is None else
             f"{chosen['method']} at rate {chosen['finetune_learning_rate']:g}, "
             f"{chosen['finetune_steps']} steps (unseen pairs {chosen['unseen_pair']:.3f}, "
             f"trained pairs {chosen['seen']:.3f})"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
