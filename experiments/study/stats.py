"""Means, 95% intervals and p-values over seeds, cells and examples.

A split kind's score in one run is the mean over its cells of the cell's exact match (macro
average). Its study value is the mean over seeds. The interval is a hierarchical bootstrap over
the three levels the data were drawn at (issue 35; runs 1-12's reports resampled seeds and
examples only): each replicate draws the seeds with replacement, within each drawn seed its
cells with replacement, within each drawn cell its examples with replacement, and every drawn
copy of a seed or cell is resampled on its own. For a difference between two methods the
resampled seeds, cells and examples are the same for both (the runs of one seed share their
hold-out and evaluation examples), so the interval is paired: the bootstrap runs on per-example
differences. The sign-flip permutation test asks whether the per-seed differences could have
either sign: under "no difference" each seed's difference is as likely negated, so the p-value
is the share of the 2^seeds sign patterns (all of them: exact) whose mean is at least as
extreme as the observed one. `holm` adjusts a family of p-values (secondary endpoints).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# {seed: {kind: {(task, lang): correctness array}}}
Scores = Mapping[int, Mapping[str, Mapping[tuple, np.ndarray]]]
ALTERNATIVES = ("two-sided", "greater", "less")


def kind_scores(runs: Sequence[dict], split_key: str = "test") -> dict[int, dict[str, dict]]:
  """`{seed: {kind: {(task, lang): correctness float array}}}` of one method's runs."""
  out: dict[int, dict[str, dict]] = {}
  for run in runs:
    for cell in run[split_key]:
      kinds = out.setdefault(run["seed"], {}).setdefault(cell["split"], {})
      kinds[(cell["task"], cell["lang"])] = np.asarray(cell["correct"], np.float64)
  return out


def _seed_replicates(cells: Sequence[np.ndarray], n: int, rng: np.random.Generator
                     ) -> np.ndarray:
  """`[n]` independent replicates of one seed's macro mean: cells drawn with replacement, each
  drawn cell's examples drawn with replacement."""
  n_cells = len(cells)
  drawn = rng.integers(0, n_cells, (n, n_cells))
  means = np.empty((n, n_cells))
  for c, values in enumerate(cells):
    where = drawn == c
    k = int(where.sum())
    if k:
      means[where] = values[rng.integers(0, len(values), (k, len(values)))].mean(axis=1)
  return means.mean(axis=1)


def hierarchical_bootstrap(seeds: Sequence[Sequence[np.ndarray]], n_boot: int = 2000,
                           rng: np.random.Generator | int = 0) -> np.ndarray:
  """`[n_boot]` replicates of the mean over seeds of each seed's macro mean over cells.

  seeds: per seed, its cells' per-example values (0/1 correctness, or paired differences of
    two methods' correctness in [-1, 1]); every seed needs a cell, every cell an example.
  """
  if not seeds or any(len(cells) == 0 for cells in seeds) or any(
      len(v) == 0 for cells in seeds for v in cells):
    raise ValueError("every seed needs at least one cell and every cell an example")
  rng = np.random.default_rng(rng)
  n_seeds = len(seeds)
  drawn = rng.integers(0, n_seeds, (n_boot, n_seeds))
  values = np.empty((n_boot, n_seeds))
  for s, cells in enumerate(seeds):
    where = drawn == s
    values[where] = _seed_replicates([np.asarray(v, np.float64) for v in cells],
                                     int(where.sum()), rng)
  return values.mean(axis=1)


def sign_flip_p(per_seed: Sequence[float], alternative: str = "two-sided") -> float:
  """The exact sign-flip permutation p-value of the mean of `per_seed` differences (every one
  of the 2^n sign patterns, the observed one included, enumerated; what
  scipy.stats.permutation_test(permutation_type="samples") gives for n >= 2, and defined for
  n = 1 too).

  alternative: "two-sided" (|mean| at least as large), "greater" (mean at least as large) or
  "less". A difference of the same sign in all n seeds gives 1 / 2^n one-sided and 2 / 2^n
  two-sided; all-zero differences give 1.
  """
  if alternative not in ALTERNATIVES:
    raise ValueError(f"alternative {alternative!r} unknown; expected one of {ALTERNATIVES}")
  d = np.asarray(per_seed, np.float64)
  if d.ndim != 1 or len(d) == 0:
    raise ValueError(f"expected a non-empty 1-d array of per-seed differences, got {d.shape}")
  if len(d) > 20:
    raise ValueError(f"{len(d)} seeds: the exact test enumerates 2^n sign patterns; at most 20")
  if not np.any(d):
    return 1.0
  n = len(d)
  signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)  # [2^n, n] of +-1.
  means, observed = (signs * d).mean(axis=1), d.mean()
  tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))  # Float ties count as ties.
  if alternative == "greater":
    extreme = means >= observed - tolerance
  elif alternative == "less":
    extreme = means <= observed + tolerance
  else:
    extreme = np.abs(means) >= abs(observed) - tolerance
  return float(extreme.mean())


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
  """Holm's step-down adjusted p-values of a family: the i-th smallest of m is multiplied by
  (m - i + 1), kept at least as large as the one before it and at most 1."""
  names = sorted(p_values, key=lambda k: p_values[k])
  m, running, out = len(names), 0.0, {}
  for i, name in enumerate(names):
    running = max(running, min(1.0, (m - i) * p_values[name]))
    out[name] = running
  return out


def interval(values: np.ndarray) -> list[float]:
  lo, hi = np.percentile(values, [2.5, 97.5])
  return [float(lo), float(hi)]


def paired_cells(methods: Sequence[Scores], kind: str) -> dict[int, list[list[np.ndarray]]]:
  """`{seed: [[method m's correctness of cell c] for each cell c] ...}` over the seeds where
  every method has cells of `kind`, and only the cells all of them have (sorted).

  Returns `{seed: cells}` with `cells[c][m]`; a cell whose methods decoded different numbers
  of examples is an error (paired differences need the same examples).
  """
  seeds = sorted(set.intersection(*(set(m) for m in methods)))
  out = {}
  for s in seeds:
    if not all(m[s].get(kind) for m in methods):
      continue
    keys = sorted(set.intersection(*(set(m[s][kind]) for m in methods)))
    cells = [[m[s][kind][k] for m in methods] for k in keys]
    for k, cell in zip(keys, cells):
      if len({len(v) for v in cell}) != 1:
        raise ValueError(f"seed {s} cell {k}: the methods decoded {[len(v) for v in cell]} "
                         "examples; paired differences need the same examples")
    if cells:
      out[s] = cells
  return out


def estimate(methods: Sequence[Scores], kind: str, n_boot: int = 2000, seed: int = 0,
             alternative: str = "two-sided") -> dict | None:
  """One method's score (one Scores) or the paired difference of two (methods[0] minus
  methods[1]) on `kind`: `{"mean", "ci95", "n_seeds", "n_cells", "per_seed"}`, plus
  `"p_sign_flip"` for a difference. None if no seed has cells of `kind` for every method."""
  if len(methods) not in (1, 2):
    raise ValueError(f"expected one method or two (a difference), got {len(methods)}")
  cells = paired_cells(methods, kind)
  if not cells:
    return None
  values = [[c[0] - c[1] if len(c) == 2 else c[0] for c in seed_cells]
            for seed_cells in cells.values()]
  per_seed = [float(np.mean([v.mean() for v in seed_values])) for seed_values in values]
  boot = hierarchical_bootstrap(values, n_boot, seed)
  out = {"mean": float(np.mean(per_seed)), "ci95": interval(boot), "n_seeds": len(per_seed),
         "n_cells": sum(len(v) for v in values),
         "per_seed": {str(s): p for s, p in zip(cells, per_seed)}}
  if len(methods) == 2:
    out["p_sign_flip"] = sign_flip_p(per_seed, alternative)
  return out


def floor_share(methods: Sequence[Scores], kind: str) -> dict | None:
  """How many of `kind`'s cells (over seeds) are at 0 exact match for every one of `methods`:
  `{"at_floor", "cells", "share"}`; None without such cells."""
  cells = paired_cells(methods, kind)
  if not cells:
    return None
  flags = [all(not v.any() for v in cell) for seed_cells in cells.values() for cell in seed_cells]
  return {"at_floor": int(sum(flags)), "cells": len(flags), "share": sum(flags) / len(flags)}


def summarize(scores: Mapping[str, Scores], kinds: Sequence[str], baseline: str = "lora",
              n_boot: int = 2000) -> tuple[dict, dict]:
  """(summary, differences) in the study.json schema.

  summary: `{method: {kind: {"mean", "ci95", "n_seeds", "n_cells", "per_seed"}}}`;
  differences: `{"<method>-<baseline>": {kind: {..., "p_sign_flip", "floor"}}}` (paired;
  "floor": `floor_share` of the two methods).
  """
  summary, differences = {}, {}
  for name, method_scores in scores.items():
    for kind in kinds:
      result = estimate([method_scores], kind, n_boot)
      if result is not None:
        summary.setdefault(name, {})[kind] = result
  if baseline in scores:
    for name, method_scores in scores.items():
      if name == baseline:
        continue
      for kind in kinds:
        result = estimate([method_scores, scores[baseline]], kind, n_boot)
        if result is not None:
          result["floor"] = floor_share([method_scores, scores[baseline]], kind)
          differences.setdefault(f"{name}-{baseline}", {})[kind] = result
  return summary, differences
