"""Means and 95% intervals over seeds and examples: a paired hierarchical bootstrap.

A split kind's score in one run is the mean over its cells of the cell's exact match (macro
average). Its study value is the mean over seeds. The interval resamples both levels: seeds
with replacement, then, within each drawn seed, each cell's examples with replacement. For a
difference between two methods the resampled examples are the same for both (the runs of one
seed share their hold-out and evaluation examples), so the interval is paired.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# {seed: {kind: [correctness arrays per cell, in the same cell order for every method]}}
Scores = Mapping[int, Mapping[str, Sequence[np.ndarray]]]


def kind_scores(runs: Sequence[dict], split_key: str = "test") -> dict[int, dict[str, dict]]:
  """`{seed: {kind: {(task, lang): correctness int array}}}` of one method's runs."""
  out: dict[int, dict[str, dict]] = {}
  for run in runs:
    for cell in run[split_key]:
      kinds = out.setdefault(run["seed"], {}).setdefault(cell["split"], {})
      kinds[(cell["task"], cell["lang"])] = np.asarray(cell["correct"], np.float64)
  return out


def _replicates(cells: Sequence[Sequence[np.ndarray]], rng: np.random.Generator,
                n_boot: int) -> np.ndarray:
  """`[n_methods, n_boot]`: the macro mean over cells of resampled cell means, with the same
  resampled example indices for every method (`cells[m][c]` = method m's cell c)."""
  n_methods, n_cells = len(cells), len(cells[0])
  out = np.zeros((n_methods, n_boot))
  for c in range(n_cells):
    n = len(cells[0][c])
    index = rng.integers(0, n, (n_boot, n))
    for m in range(n_methods):
      out[m] += cells[m][c][index].mean(axis=1)
  return out / n_cells


def bootstrap(methods: Sequence[Mapping[int, Mapping[str, Mapping]]], kind: str,
              n_boot: int = 2000, seed: int = 0) -> dict[str, np.ndarray] | None:
  """Point estimates `[n_methods]` and bootstrap replicates `[n_methods, n_boot]` of `kind`.

  `methods[m]` is `kind_scores` of method m; only seeds where every method has cells of `kind`
  count, and only the cells all of them have. None if no seed qualifies.
  """
  seeds = sorted(set.intersection(*(set(m) for m in methods)))
  seeds = [s for s in seeds if all(m[s].get(kind) for m in methods)]
  if not seeds:
    return None
  rng = np.random.default_rng(seed)
  points, replicates = [], []
  for s in seeds:
    keys = sorted(set.intersection(*(set(m[s][kind]) for m in methods)))
    cells = [[m[s][kind][k] for k in keys] for m in methods]
    points.append([np.mean([c.mean() for c in mc]) for mc in cells])
    replicates.append(_replicates(cells, rng, n_boot))
  points, replicates = np.asarray(points), np.stack(replicates)  # [S, M], [S, M, B]
  draws = rng.integers(0, len(seeds), (n_boot, len(seeds)))  # Seeds resampled per replicate.
  boot = replicates[draws, :, np.arange(n_boot)[:, None]].mean(axis=1).T  # [M, B]
  return {"point": points.mean(axis=0), "boot": boot, "n_seeds": len(seeds)}


def interval(values: np.ndarray) -> list[float]:
  lo, hi = np.percentile(values, [2.5, 97.5])
  return [float(lo), float(hi)]


def summarize(scores: Mapping[str, Mapping], kinds: Sequence[str], baseline: str = "lora",
              n_boot: int = 2000) -> tuple[dict, dict]:
  """(summary, differences) in the study.json schema.

  summary: `{method: {kind: {"mean", "ci95", "n_seeds"}}}`;
  differences: `{"<method>-<baseline>": {kind: {"mean", "ci95"}}}` (paired).
  """
  summary, differences = {}, {}
  for name, method_scores in scores.items():
    for kind in kinds:
      result = bootstrap([method_scores], kind, n_boot)
      if result is not None:
        summary.setdefault(name, {})[kind] = {
            "mean": float(result["point"][0]), "ci95": interval(result["boot"][0]),
            "n_seeds": result["n_seeds"]}
  if baseline in scores:
    for name, method_scores in scores.items():
      if name == baseline:
        continue
      for kind in kinds:
        result = bootstrap([method_scores, scores[baseline]], kind, n_boot)
        if result is not None:
          differences.setdefault(f"{name}-{baseline}", {})[kind] = {
              "mean": float(result["point"][0] - result["point"][1]),
              "ci95": interval(result["boot"][0] - result["boot"][1]),
              "n_seeds": result["n_seeds"]}
  return summary, differences
