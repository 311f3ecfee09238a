"""Aggregation of per-pair metric dicts per task, per language and per split kind.

Input: `{pair: {metric: value}}` where a pair is a `Pair` or a seqio task name
`{prefix}.{task}.{lang}` (e.g. from seqio.Evaluator). Each group reports the unweighted mean of
its pairs' values (macro average; a metric is averaged over the pairs that report it) and
`n_pairs`, the number of pairs in the group. Variants of a cell (`{prefix}.{task}.{lang}:{v}`,
e.g. transliteration's script directions) are pairs of their own here: a task's mean is over
its variants.
"""

from __future__ import annotations

import collections
import numbers
from typing import Mapping

from flix.data.pairs import SPLIT_KINDS, HoldOut, Pair


def as_pair(key: Pair | str) -> Pair:
  """A Pair, or a task name `{prefix}.{task}.{lang}` -> Pair(task, lang)
  (`{prefix}.{task}.{lang}:{variant}` -> Pair(task, lang, variant))."""
  if isinstance(key, Pair):
    return key
  parts = str(key).split(".")
  if len(parts) < 3:
    raise ValueError(f"cannot read a pair from {key!r}; expected a Pair or a task name "
                     "'{prefix}.{task}.{lang}'")
  lang, _, variant = parts[-1].partition(":")
  return Pair(parts[-2], lang, variant)


def _value(v):
  v = getattr(v, "value", v)  # seqio.metrics.Scalar and friends.
  return float(v) if isinstance(v, numbers.Real) and not isinstance(v, bool) else None


def _mean_groups(groups: Mapping[str, list[Mapping[str, float]]]) -> dict[str, dict[str, float]]:
  out = {}
  for name, dicts in sorted(groups.items()):
    sums, counts = collections.defaultdict(float), collections.Counter()
    for d in dicts:
      for metric, raw in d.items():
        v = _value(raw)
        if v is not None:
          sums[metric] += v
          counts[metric] += 1
    out[name] = {m: sums[m] / counts[m] for m in sorted(sums)}
    out[name]["n_pairs"] = len(dicts)
  return out


def aggregate(per_pair: Mapping[Pair | str, Mapping[str, float]],
              holdout: HoldOut | None = None) -> dict[str, dict[str, dict[str, float]]]:
  """Means per task, per language, per split kind and overall.

  Returns:
    `{"by_task": {task: {metric: mean, "n_pairs": n}}, "by_lang": {...},
      "by_kind": {"seen_pair" | "unseen_pair" | "unseen_language": {...}},
      "overall": {"all": {...}}}`; kinds with no pair are left out.
  """
  holdout = holdout or HoldOut()
  by_task, by_lang, by_kind = (collections.defaultdict(list) for _ in range(3))
  everything = []
  for key, metrics in per_pair.items():
    pair = as_pair(key)
    by_task[pair.task].append(metrics)
    by_lang[pair.lang].append(metrics)
    by_kind[holdout.kind(pair)].append(metrics)
    everything.append(metrics)
  kinds = _mean_groups(by_kind)
  return {"by_task": _mean_groups(by_task), "by_lang": _mean_groups(by_lang),
          "by_kind": {k: kinds[k] for k in SPLIT_KINDS if k in kinds},
          "overall": _mean_groups({"all": everything}) if everything else {}}
