"""`Registration`: what training and evaluation read from a benchmark's registration.

A benchmark's `register_*` function (`register_offline`, `register_morphology_experiment`,
`register_xtreme_up_experiment`, or a user's own) puts seqio Tasks and Mixtures in the
registries and returns an object with these attributes; `flix.data.pairs.PairRegistration` is
the one flix's benchmarks return. `flix.training.loop.train`, `flix.evaluation` and the
periodic evaluator take a `Registration | None` (None: a run on a user's tasks without one).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import seqio

from flix.data.pairs import HoldOut
from flix.features import FeatureSpace


@runtime_checkable
class Registration(Protocol):
  """The data side of a run.

  Attributes:
    space: the training FeatureSpace (the feature types and values that own adapters; the
      method's FlixConfig adds the ranks).
    holdout: unseen pairs and languages, for the report's split kinds.
    train_mixture: the seqio mixture of the trained pairs.
    eval_mixture: the seqio mixture of every pair (validation / test).
    task_feature_lengths: `{"inputs": ..., "targets": ...}` that fit every example.
    decode_kwargs: `{seqio task name: flix.decoding options}` for tasks decoded their own way.
    official: the benchmark's own aggregate of per-pair metrics, or None.
    vocabulary: the VOCABULARY every task tokenizes with.
  """

  @property
  def space(self) -> FeatureSpace: ...

  @property
  def holdout(self) -> HoldOut: ...

  @property
  def train_mixture(self) -> str: ...

  @property
  def eval_mixture(self) -> str: ...

  @property
  def task_feature_lengths(self) -> Mapping[str, int]: ...

  @property
  def decode_kwargs(self) -> Mapping[str, Mapping[str, Any]]: ...

  @property
  def official(self) -> Callable[[Mapping[str, Mapping[str, float]]], dict] | None: ...

  @property
  def vocabulary(self) -> seqio.Vocabulary: ...
