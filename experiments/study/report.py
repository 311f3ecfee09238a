"""A grid's study report: study.json (pinned schema), study.md and two plots.

study.json:
  {"grid": str, "seeds": [int], "methods": [str],
   "runs": [{"method", "seed", "cells": [{"task", "lang", "split", "metric", "value", "n"}]}],
   "summary": {method: {split: {"mean", "ci95": [lo, hi], "n_seeds", "n_cells", "per_seed"}}},
   "differences": {"<method>-lora": {split: {"mean", "ci95": [lo, hi], "n_seeds", "n_cells",
                                             "per_seed", "p_sign_flip",
                                             "floor": {"at_floor", "cells", "share"}}}},
   ...}  plus "eval_split", "validation" (the same summary / differences on validation cells,
  what settings are chosen on), "holdouts" (per seed; with a split design each split's own
  held-out cells), "trained_params" and "rank_exempt" (per method), "budget", "model",
  "wall_seconds" (this command's), "run_seconds" (the runs' own training and evaluation,
  summed, wherever and whenever they ran). Intervals: `stats.estimate` (hierarchical bootstrap
  over seeds, cells and examples; paired for differences); "floor": the unseen (or seen) cells
  at 0 exact match for both methods.
Split kinds: "seen" (trained pairs), "unseen_pair", "unseen_lang"; values are exact match in
[0, 1]. Plots: differences.png (each method minus the baseline, LoRA unless `--baseline` says
otherwise, 95% intervals, per split kind) and heatmap.png (per cell, each method minus the
baseline on test, averaged over the seeds).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from flix import files
from experiments.study import stats

KINDS = ("seen", "unseen_pair", "unseen_lang")
KIND_TITLES = {"seen": "seen pairs", "unseen_pair": "unseen pairs",
               "unseen_lang": "unseen languages"}


def build(grid, methods: Sequence[str], seeds: Sequence[int], results: dict[str, list[dict]],
          wall_seconds: float, n_boot: int = 2000, reference: str | None = None,
          baseline: str = "lora") -> dict[str, Any]:
  """The study.json dict from `results[method] = [run results, one per seed]`.

  baseline: every difference is a method minus it ("none": no differences).
  reference: an ablation's own baseline (e.g. FLix without feature dropout): the study also
  holds every other FLix method minus it, paired, under "reference" (test and validation).
  """
  study: dict[str, Any] = {"grid": grid.name, "seeds": list(seeds), "methods": list(methods),
                           "baseline": baseline, "eval_split": "test"}
  results = {m: sorted(results[m], key=lambda r: r["seed"]) for m in methods}
  study["runs"] = [{"method": m, "seed": r["seed"],
                    "cells": [{k: c[k] for k in ("task", "lang", "split", "metric", "value", "n")}
                              for c in r["test"]]}
                   for m in methods for r in results[m]]
  for split, key in (("test", None), ("validation", "validation")):
    scores = {m: stats.kind_scores(results[m], split) for m in methods}
    summary, differences = stats.summarize(scores, KINDS, baseline=baseline, n_boot=n_boot)
    if key is None:
      study["summary"], study["differences"] = summary, differences
    else:
      study["validation"] = {"summary": summary, "differences": differences}
  if reference is not None:
    if reference not in methods:
      raise ValueError(f"reference {reference!r} is not among the methods {list(methods)}")
    compared = [m for m in methods if m != baseline]
    study["reference"] = {"method": reference}
    for split in ("test", "validation"):
      scores = {m: stats.kind_scores(results[m], split) for m in compared}
      study["reference"][split] = stats.summarize(scores, KINDS, baseline=reference,
                                                  n_boot=n_boot)[1]
  study["holdouts"] = {str(r["seed"]): r["holdout"] for r in results[methods[0]]}
  study["trained_params"] = {m: results[m][0]["trained_params"] for m in methods}
  study["rank_exempt"] = sorted(m for m in methods if results[m][0].get("rank_exempt"))
  study["budget"] = dataclasses.asdict(grid.budget)
  study["model"] = dataclasses.asdict(grid.model)
  study["wall_seconds"] = wall_seconds
  study["run_seconds"] = sum(r.get("wall_seconds", 0.0) for m in methods for r in results[m])
  return study


def _fmt(entry: dict | None, signed: bool = False) -> str:
  if entry is None:
    return "-"
  lo, hi = entry["ci95"]
  sign = "+" if signed else ""
  return f"{entry['mean']:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"


def _fmt_difference(entry: dict | None) -> str:
  text = _fmt(entry, True)
  if entry is not None and "p_sign_flip" in entry:
    text += f" p={entry['p_sign_flip']:.3g}"
  return text


def tables(summary: dict, differences: dict, methods: Sequence[str], params: dict,
           rank_exempt: Sequence[str] = ()) -> str:
  lines = ["| method | trained params | " + " | ".join(KIND_TITLES[k] for k in KINDS) + " |",
           "| --- | ---: |" + " ---: |" * len(KINDS)]
  for m in methods:
    cells = [_fmt(summary.get(m, {}).get(k)) for k in KINDS]
    label = f"{m} (rank-exempt)" if m in rank_exempt else m
    lines.append(f"| {label} | {params.get(m, 0):,} | " + " | ".join(cells) + " |")
  if rank_exempt:
    lines += ["", "rank-exempt: a LoRA rank lever, not held to the per-example rank of 16 "
              "(e.g. the parameter-matched LoRA); its cost per example differs."]
  if differences:
    lines += ["", difference_table(differences), "", floor_table(differences)]
  return "\n".join(lines)


def difference_table(differences: dict) -> str:
  lines = ["| difference (paired) | " + " | ".join(KIND_TITLES[k] for k in KINDS) + " |",
           "| --- |" + " ---: |" * len(KINDS)]
  for name, entry in differences.items():
    lines.append(f"| {name} | " + " | ".join(_fmt_difference(entry.get(k)) for k in KINDS)
                 + " |")
  return "\n".join(lines)


def floor_table(differences: dict) -> str:
  """Per difference: the cells at 0 exact match for both methods, of all cells (seeds x
  cells), per split kind."""
  lines = ["| at the floor for both (cells at 0 / cells) | "
           + " | ".join(KIND_TITLES[k] for k in KINDS) + " |", "| --- |" + " ---: |" * len(KINDS)]
  for name, entry in differences.items():
    cells = []
    for k in KINDS:
      floor = (entry.get(k) or {}).get("floor")
      cells.append("-" if floor is None else
                   f"{floor['at_floor']}/{floor['cells']} ({floor['share']:.0%})")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _reference_table(study: dict, split: str) -> list[str]:
  reference = study.get("reference")
  if not reference or not reference[split]:
    return []
  return ["", f"Against the ablation's reference, {reference['method']} (paired):", "",
          difference_table(reference[split])]


def markdown(study: dict) -> str:
  seeds = ", ".join(str(s) for s in study["seeds"])
  holdouts = []
  for seed, h in study["holdouts"].items():
    for split, cells in (h.get("splits") or {"both splits": h}).items():
      pairs = ", ".join(f"{t}-{l}" for t, l in cells["unseen_pairs"])
      holdouts.append(f"- seed {seed} ({split}): unseen pairs {pairs}; unseen languages "
                      f"{', '.join(cells['unseen_langs']) or 'none'}")
  budget = study["budget"]
  return "\n".join([
      f"# Study: {study['grid']} grid", "",
      f"Seeds {seeds}; exact match per cell, averaged over the cells of each kind (macro), then "
      "over seeds; 95% intervals from a hierarchical bootstrap over seeds, cells and examples "
      "(paired for differences); p: exact sign-flip permutation test over seeds (two-sided). "
      "Budget: "
      f"{budget['finetune_steps']} fine-tuning steps, batch {budget['batch_size']}, AdamW "
      f"{budget['finetune_learning_rate']} ({budget['schedule']}); base pretrained "
      f"{budget['pretrain_steps']} steps. Runs: {study['run_seconds'] / 3600:.1f} h of "
      f"training and evaluation in all (summed); this report's command took "
      f"{study['wall_seconds'] / 60:.1f} min.", "",
      "## Test (reported once)", "",
      tables(study["summary"], study["differences"], study["methods"], study["trained_params"],
             study.get("rank_exempt", ())),
      *_reference_table(study, "test"),
      "", "## Validation (settings are chosen here)", "",
      tables(study["validation"]["summary"], study["validation"]["differences"],
             study["methods"], study["trained_params"], study.get("rank_exempt", ())),
      *_reference_table(study, "validation"),
      "", "## Hold-outs", "", *holdouts, "",
      "Plots: differences.png (each method minus LoRA with 95% intervals), heatmap.png "
      "(per-cell mean difference on test).", ""])


def plot_differences(study: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  names = list(study["differences"])
  fig, ax = plt.subplots(figsize=(1.6 + 2.2 * len(KINDS), 3.2))
  width = 0.8 / max(len(names), 1)
  for i, name in enumerate(names):
    for j, kind in enumerate(KINDS):
      entry = study["differences"][name].get(kind)
      if entry is None:
        continue
      x = j + (i - (len(names) - 1) / 2) * width
      lo, hi = entry["ci95"]
      ax.errorbar(x, entry["mean"], yerr=[[entry["mean"] - lo], [hi - entry["mean"]]],
                  fmt="o", capsize=3, color=f"C{i}", label=name if j == 0 else None)
  ax.axhline(0, color="gray", linewidth=0.8)
  ax.set_xticks(range(len(KINDS)), [KIND_TITLES[k] for k in KINDS])
  baseline = study.get("baseline", "lora")
  ax.set_ylabel(f"exact match minus {baseline}")
  ax.set_title(f"{study['grid']}: difference to {baseline} (test, 95% CI)", fontsize=9)
  if names:
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  files.save_figure(fig, path, dpi=130)
  plt.close(fig)


def plot_heatmap(study: dict, path: str, baseline: str = "lora") -> None:
  """One panel per method: task x language, test exact match minus the baseline's, averaged
  over seeds; cells held out (pair or language) in some seed are outlined."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  values: dict[str, dict[tuple, list[float]]] = {}
  held = set()
  for run in study["runs"]:
    for c in run["cells"]:
      values.setdefault(run["method"], {}).setdefault((c["task"], c["lang"], run["seed"]),
                                                      c["value"])
      if c["split"] != "seen":
        held.add((c["task"], c["lang"]))
  others = [m for m in study["methods"] if m != baseline]
  if baseline not in values or not others:
    return
  keys = list(values[baseline])
  tasks = list(dict.fromkeys(k[0] for k in keys))
  langs = list(dict.fromkeys(k[1] for k in keys))
  fig, axes = plt.subplots(len(others), 1, squeeze=False,
                           figsize=(1.5 + 0.55 * len(langs), 0.9 + (0.9 + 0.42 * len(tasks))
                                    * len(others)))
  for ax, name in zip(axes[:, 0], others):
    grid = np.full((len(tasks), len(langs)), np.nan)
    for t_i, task in enumerate(tasks):
      for l_i, lang in enumerate(langs):
        diffs = [values[name][k] - values[baseline][k] for k in keys
                 if k[:2] == (task, lang) and k in values[name]]
        if diffs:
          grid[t_i, l_i] = np.mean(diffs)
    image = ax.imshow(grid, vmin=-0.5, vmax=0.5, cmap="RdBu", aspect="auto")
    for (t_i, l_i), v in np.ndenumerate(grid):
      if not np.isnan(v):
        ax.text(l_i, t_i, f"{v:+.2f}", ha="center", va="center", fontsize=6)
      if (tasks[t_i], langs[l_i]) in held:
        ax.add_patch(plt.Rectangle((l_i - 0.5, t_i - 0.5), 1, 1, fill=False,
                                   edgecolor="black", linewidth=1.2))
    ax.set_xticks(range(len(langs)), langs, fontsize=7)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    ax.set_title(f"{name} minus {baseline} (test, mean over seeds; outlined: held out in "
                 "some seed)", fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8)
  fig.tight_layout()
  files.save_figure(fig, path, dpi=130)
  plt.close(fig)


def write(study: dict, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  files.write_json(os.path.join(out_dir, "study.json"), study)
  files.write_text(os.path.join(out_dir, "study.md"), markdown(study))
  plot_differences(study, os.path.join(out_dir, "differences.png"))
  plot_heatmap(study, os.path.join(out_dir, "heatmap.png"), study.get("baseline", "lora"))
