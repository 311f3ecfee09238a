"""In-training evaluation (T5X's `eval_period`) and the metric that picks the best checkpoint.

Every `period` steps (and after the last step) the trainer decodes the evaluation pairs with
the current params (`flix.evaluation.PairEvaluator`, built once: each pair's examples are
cached on the first call) and writes

    MODEL_DIR/eval/<split>/step_<n>/   report.json, report.md, predictions/*.jsonl
    MODEL_DIR/eval/                    TensorBoard scalars `<split>/<group>/<metric>`
    MODEL_DIR/metrics.jsonl            {"step": n, "eval/<split>/<group>/<metric>": value, ...}

where <group> is a split kind (seen_pair, unseen_pair, unseen_language) or `overall`. A
checkpoint is saved at every evaluation step, recording these metrics in its
train_state.json, so that `best_metric` (e.g. "seen_pair/sequence_accuracy") can keep the best
checkpoint besides the newest ones (`flix.training.checkpointer`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

import gin
import jax
import tensorflow as tf

from flix.data.converter import converter_class
from flix.data.pairs import SPLIT_KINDS
from flix.data.registration import Registration
from flix.evaluation import PairEvaluator, Report
from flix.models.model import BaseModel

GROUPS = (*SPLIT_KINDS, "overall")
BEST_MODES = ("max", "min")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What the trainer evaluates, how often, and which metric names the best checkpoint.

  Attributes:
    period: evaluate every this many steps and after the last (EVAL_PERIOD); None: never.
    mixture_or_task_name: the pairs to decode; None: the registration's `eval_mixture`.
    split: "validation" (the default) or another split of those tasks.
    num_examples: the first this-many examples of each pair (T5X's eval subset); None: all.
    batch_size: decode batch rows.
    best_metric: "<group>/<metric>", group one of GROUPS (e.g. "seen_pair/sequence_accuracy"); the
      checkpoint with the best value is kept besides the newest `keep_checkpoints`. None: none.
    best_mode: "max" (higher is better) or "min".
  """

  period: int | None = None
  mixture_or_task_name: str | None = None
  split: str = "validation"
  num_examples: int | None = None
  batch_size: int = 32
  best_metric: str | None = None
  best_mode: str = "max"

  def check(self) -> None:
    """Raises ValueError naming the bad setting (before anything runs)."""
    if self.period is not None and (not isinstance(self.period, int) or self.period < 1):
      raise ValueError(f"EVAL_PERIOD must be an int >= 1 or None, got {self.period!r}")
    if self.num_examples is not None and (not isinstance(self.num_examples, int)
                                          or self.num_examples < 1):
      raise ValueError(f"EvalSettings.num_examples must be an int >= 1 or None, got "
                       f"{self.num_examples!r}")
    if self.best_mode not in BEST_MODES:
      raise ValueError(f"EvalSettings.best_mode must be one of {BEST_MODES}, got "
                       f"{self.best_mode!r}")
    if self.best_metric is None:
      return
    if self.period is None:
      raise ValueError(f"EvalSettings.best_metric {self.best_metric!r} needs EVAL_PERIOD: the "
                       "best checkpoint is chosen by in-training evaluation")
    group, _, metric = self.best_metric.partition("/")
    if group not in GROUPS or not metric:
      raise ValueError(f"EvalSettings.best_metric must be '<group>/<metric>' with group one of "
                       f"{GROUPS}, e.g. 'seen_pair/sequence_accuracy'; got {self.best_metric!r}")

  def check_metrics(self, metrics: Mapping[str, float], step: int) -> None:
    """Raises ValueError if `best_metric` is not among an evaluation's metrics (called after
    the step's checkpoint is saved, so nothing is lost)."""
    if self.best_metric is not None and self.best_metric not in metrics:
      raise ValueError(f"EvalSettings.best_metric {self.best_metric!r} is not among the metrics "
                       f"of the evaluation at step {step}: {sorted(metrics)} (its checkpoint "
                       "is saved)")

  def due(self, step: int, last_step: int) -> bool:
    return self.period is not None and (step % self.period == 0 or step == last_step)


def flatten(report: Report) -> dict[str, float]:
  """`{"<group>/<metric>": value}` of a report's split kinds and overall (n_pairs left out)."""
  groups = {**report.by_kind, "overall": report.overall.get("all", {})}
  return {f"{group}/{metric}": float(value) for group, metrics in groups.items()
          for metric, value in metrics.items() if metric != "n_pairs"}


class PeriodicEvaluator:
  """Decodes the evaluation pairs during training and writes the metrics (one process)."""

  def __init__(self, settings: EvalSettings, model: BaseModel, model_dir: str, *,
               registration: Registration | None, task_feature_lengths: Mapping[str, int],
               use_cached: bool = False):
    name = settings.mixture_or_task_name or (registration.eval_mixture
                                             if registration is not None else None)
    if name is None:
      raise ValueError("EVAL_PERIOD needs the pairs to evaluate: set "
                       "EvalSettings.mixture_or_task_name (there is no registration whose "
                       "eval_mixture it could default to)")
    if jax.process_count() > 1:
      raise ValueError("in-training evaluation (EVAL_PERIOD) runs in one process; in a "
                       f"{jax.process_count()}-process run evaluate the checkpoints with "
                       "flix.eval instead")
    self.settings, self.model, self.model_dir = settings, model, model_dir
    self.evaluator = PairEvaluator(
        name, feature_lengths=task_feature_lengths, batch_size=settings.batch_size,
        holdout=registration.holdout if registration is not None else None,
        split=settings.split,
        n_types=model.n_types or None, num_examples=settings.num_examples,
        feature_converter_cls=converter_class(model),
        official=registration.official if registration is not None else None,
        use_cached=use_cached)
    self.decode_kwargs = registration.decode_kwargs if registration is not None else None
    self.writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))

  def __call__(self, params, step: int) -> dict[str, float]:
    """Evaluates `params` at `step`; returns `{"<group>/<metric>": value}`."""
    split = self.settings.split
    out = os.path.join(self.model_dir, "eval", split, f"step_{step}")
    report = self.evaluator.evaluate(self.model, params, out_dir=out, step=step,
                                     task_decode_kwargs=self.decode_kwargs)
    metrics = flatten(report)
    with self.writer.as_default(step=step):
      for name, value in metrics.items():
        tf.summary.scalar(f"{split}/{name}", value)
    self.writer.flush()
    with open(os.path.join(self.model_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": step, **{f"eval/{split}/{k}": v for k, v in metrics.items()}})
              + "\n")
    return metrics

  def close(self) -> None:
    self.writer.close()
