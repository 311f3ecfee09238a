"""Evaluation over task-language pairs: seqio.Evaluator, flix.decoding, per-pair and aggregates.

Each pair is a seqio Task (`flix.data.pairs`), so `seqio.Evaluator` with the
`FlixEncDecFeatureConverter` gives the metrics per pair: it caches each pair's examples once,
hands our predict function the converted (`feature_ids`-carrying) batches, detokenises the
predicted ids with the targets' vocabulary, applies the task's postprocessor and metric_fns.

The predict function runs fixed-size batches: the last, short batch of a pair is padded with
empty rows (PAD tokens, INACTIVE feature ids) whose outputs are dropped, so one compiled decode
serves every batch. Predictions come from the model object's `predict_batch` (greedy by default)
or from any `BatchPredictor` (e.g. `target_predictor`, an oracle that checks the metric path).
A task may be decoded its own way (`task_decode_kwargs`, e.g. a registration's
`decode_kwargs`: XTREME-UP's autocomplete returns 3 beams for accuracy@3); the others keep the
default, so their metrics see one string per example.

Written under `out_dir`:
  predictions/{seqio task name}.jsonl   one line per example: index, inputs, target, prediction
                                        (as the metrics see it), features, feature_ids, score,
                                        `truncated` (the features trimmed to feature_lengths:
                                        [], ["inputs"], ...), and `references` where a task
                                        accepts several answers.
  report.json                           per-pair metrics and pair info (n_examples, feature_ids,
                                        truncated_inputs, truncated_targets), and the aggregates
                                        by_task / by_lang / by_kind / overall (flix.data.aggregate),
                                        plus `official` where the benchmark defines its own
                                        aggregate (e.g. XTREME-UP's score_system).
  report.md                             the same as markdown tables.

Use `PairEvaluator` to evaluate repeatedly (each pair's examples are cached once) and
`evaluate` for a one-off.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import gin
import jax
import numpy as np
import seqio
from seqio import metrics as seqio_metrics

from flix import decoding, files
from flix.data.aggregation import aggregate, as_pair
from flix.data.converter import FlixEncDecFeatureConverter, converter_class, data_n_types
from flix.data.pairs import SPLIT_KINDS, HoldOut, check_registered, import_task_modules
from flix.data.registration import Registration
from flix.data.vocab import BYTE_VOCAB, FEATURE_IDS, check_run_vocabulary, describe
from flix.features import INACTIVE
from flix.models.model import BaseModel, make_model

PREDICTIONS_DIR = "predictions"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

# A model batch (fixed `batch_size` rows: encoder_input_tokens, decoder_target_tokens,
# feature_ids, ...) -> predicted ids `[batch_size, (n,) length]`, or a DecodeResult (its scores
# are written to the predictions file).
BatchPredictor = Callable[[Mapping[str, np.ndarray]], "np.ndarray | decoding.DecodeResult"]


# -- reports ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Report:
  """Metrics of one evaluation.

  Attributes:
    split: the evaluated split.
    step: training step, if given.
    per_pair: `{seqio task name: {metric: value}}`.
    pairs: `{seqio task name: {"task", "lang", "kind", "n_examples", "feature_ids",
      "truncated_inputs", "truncated_targets"}}` (examples trimmed to the feature lengths).
    by_task, by_lang, by_kind, overall: `flix.data.aggregate` groups
      (`{group: {metric: mean, "n_pairs": n}}`); by_kind keys are SPLIT_KINDS present.
    official: the benchmark's own aggregate of `per_pair` computed as its official scorer does
      (`{group: {metric: value, ...}}`, e.g. per XTREME-UP task and "overall"); empty if none.
  """

  split: str
  step: int | None
  per_pair: dict[str, dict[str, float]]
  pairs: dict[str, dict[str, Any]]
  by_task: dict[str, dict[str, float]]
  by_lang: dict[str, dict[str, float]]
  by_kind: dict[str, dict[str, float]]
  overall: dict[str, dict[str, float]]
  official: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False)

  def to_markdown(self) -> str:
    title = f"# Evaluation on `{self.split}`" + (f" at step {self.step}" if self.step is not None
                                                 else "")
    metrics = sorted({m for d in self.per_pair.values() for m in d})
    parts = [title, "",
             _table("By split kind", "kind", self.by_kind, metrics, ("n_pairs",)),
             _table("By task", "task", self.by_task, metrics, ("n_pairs",)),
             _table("By language", "lang", self.by_lang, metrics, ("n_pairs",)),
             _table("Overall", "", self.overall, metrics, ("n_pairs",))]
    if self.official:
      columns = sorted({m for d in self.official.values() for m in d} - {"n_pairs"})
      parts.append(_table("Official aggregate", "group", self.official, columns, ("n_pairs",)))
    info = ("kind", "n_examples", "truncated_inputs", "truncated_targets")
    per_pair = {name: {**m, **{k: self.pairs[name].get(k, "") for k in info}}
                for name, m in self.per_pair.items()}
    parts.append(_table("Per pair", "pair", per_pair, metrics, info))
    return "\n".join(parts)

  def write(self, out_dir: str) -> None:
    """Writes report.json and report.md into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    files.write_text(os.path.join(out_dir, REPORT_JSON), self.to_json() + "\n")
    files.write_text(os.path.join(out_dir, REPORT_MD), self.to_markdown())


def _cell(v) -> str:
  if isinstance(v, float):
    return f"{v:.2f}"
  return str(v)


def _table(title: str, key: str, rows: Mapping[str, Mapping[str, Any]], metrics: Sequence[str],
           info: Sequence[str]) -> str:
  columns = [*info, *metrics]
  lines = [f"## {title}", "", "| " + " | ".join([key, *columns]) + " |",
           "|" + "---|" * (len(columns) + 1)]
  for name, row in rows.items():
    lines.append("| " + " | ".join([name, *(_cell(row.get(c, "")) for c in columns)]) + " |")
  return "\n".join(lines) + "\n"


def _plain(value) -> float:
  value = getattr(value, "value", value)  # seqio.metrics.Scalar
  if isinstance(value, (np.generic, np.ndarray)):
    value = value.item()
  return value


def build_report(per_pair: Mapping[str, Mapping[str, Any]], holdout: HoldOut | None = None, *,
                 split: str, step: int | None = None,
                 pairs: Mapping[str, Mapping[str, Any]] | None = None,
                 official: Callable[[Mapping[str, Mapping[str, Any]]], dict] | None = None
                 ) -> Report:
  """A Report from per-pair metrics keyed by seqio task name `{prefix}.{task}.{lang}`.

  Args:
    per_pair: `{task name: {metric: value}}` (seqio Scalars are unwrapped).
    holdout: which pairs/languages are unseen (decides the split kinds); None: all seen.
    split, step: recorded in the report.
    pairs: extra per-pair info (n_examples, feature_ids), merged into `Report.pairs`.
    official: the benchmark's aggregate of the (unwrapped) per-pair metrics (`Report.official`),
      e.g. a registration's `official`; None: none.
  """
  holdout = holdout or HoldOut()
  if not per_pair:
    raise ValueError("no per-pair metrics to report: did every task lack the split or metrics?")
  plain = {name: {m: _plain(v) for m, v in sorted(metrics.items())}
           for name, metrics in sorted(per_pair.items())}
  info = {}
  for name in plain:
    pair = as_pair(name)
    info[name] = {"task": pair.task, "lang": pair.lang, "kind": holdout.kind(pair),
                  **dict((pairs or {}).get(name, {}))}
  groups = aggregate(plain, holdout)
  return Report(split=split, step=step, per_pair=plain, pairs=info, by_task=groups["by_task"],
                by_lang=groups["by_lang"], by_kind=groups["by_kind"], overall=groups["overall"],
                official=dict(official(plain)) if official is not None else {})


# -- predictors ---------------------------------------------------------------------------------
def model_predictor(model: BaseModel, params, *, max_length: int,
                    decode_kwargs: Mapping[str, Any] | None = None,
                    eos_id: int = decoding.EOS_ID) -> BatchPredictor:
  """Decodes a model batch with `model.predict_batch` (greedy unless decode_kwargs say else),
  stopping at `eos_id` (the targets vocabulary's; decode_kwargs' own `eos_id` wins).

  A sampling `rng` in decode_kwargs is folded with a running batch counter, so batches get
  different (but reproducible) samples.
  """
  kwargs = dict(decode_kwargs or {})
  if "max_length" in kwargs:
    raise ValueError("pass max_length through feature_lengths['targets'] (or max_length=), not "
                     "decode_kwargs")
  rng = kwargs.pop("rng", None)
  options = decoding.DecodeOptions(**{"max_length": max_length, "eos_id": eos_id, **kwargs})
  if options.method == "sample" and rng is None:
    raise ValueError("decode_kwargs method='sample' needs rng=jax.random.key(seed)")
  counter = [0]

  def predict(batch: Mapping[str, np.ndarray]) -> decoding.DecodeResult:
    key = None if rng is None else jax.random.fold_in(rng, counter[0])
    counter[0] += 1
    return model.predict_batch(params, batch, options, key)
  return predict


def target_predictor(batch: Mapping[str, np.ndarray]) -> np.ndarray:
  """Oracle: predicts each example's target ids (metrics then report perfect scores)."""
  return batch["decoder_target_tokens"]


# -- evaluation ---------------------------------------------------------------------------------
def _pad_batch(batch: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Pads every feature to `size` rows: PAD (0) tokens and INACTIVE feature ids."""
  out = {}
  for key, value in batch.items():
    missing = size - value.shape[0]
    fill = INACTIVE if key == FEATURE_IDS else 0
    pad = np.full((missing,) + value.shape[1:], fill, value.dtype)
    out[key] = np.concatenate([value, pad]) if missing else value
  return out


def _truncated(task: seqio.Task, split: str, lengths: Mapping[str, int],
               num_examples: int | None, use_cached: bool = False) -> list[list[str]]:
  """Per example (dataset order): the features ("inputs", "targets") longer than `lengths`,
  EOS included, which seqio trims before the model sees them."""
  ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                        use_cached=use_cached)
  if num_examples is not None:
    ds = ds.take(num_examples)
  return [[k for k in ("inputs", "targets") if len(ex[k]) > lengths[k]]
          for ex in ds.as_numpy_iterator()]


class PairEvaluator:
  """Evaluates models on every task-language pair of seqio tasks/mixtures, repeatedly.

  Construction resolves the tasks, builds one seqio.Evaluator per given name (which caches the
  split's examples) and fixes the batch shape; `evaluate` decodes, scores and writes reports.
  """

  def __init__(self, tasks: str | Sequence[str], *, feature_lengths: Mapping[str, int],
               batch_size: int, holdout: HoldOut | None = None, split: str = "validation",
               n_types: int | None = None, num_examples: int | None = None,
               feature_converter_cls: type = FlixEncDecFeatureConverter,
               official: Callable[[Mapping[str, Mapping[str, Any]]], dict] | None = None,
               use_cached: bool = False):
    """
    Args:
      tasks: seqio mixture and/or task names (pair tasks named `{prefix}.{task}.{lang}`).
      feature_lengths: `{"inputs": ..., "targets": ...}` token lengths incl. EOS; examples are
        trimmed to them, and `targets` is the decoded length.
      batch_size: rows per decode call (short batches are padded to it).
      holdout: unseen pairs/languages, for the split kinds of the report; None: all seen.
      split: the split to evaluate ("validation" or "test").
      n_types: feature types per example; default: read from the first task's dataset.
      num_examples: evaluate only the first this-many examples of each pair.
      feature_converter_cls: the model family's converter (`flix.data.converter.converter_class`).
      official: the benchmark's own aggregate for `Report.official` (a registration's
        `official`); None: none.
      use_cached: read seqio's offline cache of the tasks (T5X's USE_CACHED_TASKS).
    """
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
      raise ValueError("no tasks to evaluate: pass a seqio mixture or task name (or a list)")
    for key in ("inputs", "targets"):
      if not isinstance(feature_lengths.get(key), int) or feature_lengths[key] < 1:
        raise ValueError(f"feature_lengths needs an int {key!r} >= 1, got {dict(feature_lengths)}")
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    self.split = split
    self.batch_size = batch_size
    self.official = official
    self.holdout = holdout or HoldOut()
    self.feature_lengths = {"inputs": feature_lengths["inputs"],
                            "targets": feature_lengths["targets"]}
    subtasks = []
    for name in names:
      subtasks.extend(seqio.get_subtasks(seqio.get_mixture_or_task(name)))
    seen = [t.name for t in subtasks]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
      raise ValueError(f"tasks {dupes} are reached more than once through {names}; pass each "
                       "pair once")
    valid = seqio.evaluation.get_valid_eval_tasks(subtasks, split)
    if not valid:
      raise ValueError(f"none of the {len(subtasks)} tasks of {names} has a {split!r} split and "
                       "metric_fns")
    skipped = sorted(set(seen) - {t.name for t in valid})
    if skipped:
      logging.warning("not evaluated on %r (no such split or no metrics): %s", split, skipped)
    for task in valid:
      others = [m for m in task.metric_objs
                if m.model_output_type != seqio_metrics.ModelOutputType.PREDICTION]
      if others:
        raise ValueError(f"task {task.name!r} has metrics needing "
                         f"{sorted({m.model_output_type.name for m in others})}; only "
                         "prediction metrics are supported")
      as_pair(task.name)  # Loud now, not after decoding, if a name is not a pair name.
    vocabularies = {describe(t.output_features["targets"].vocabulary) for t in valid}
    if len(vocabularies) > 1:
      raise ValueError(f"the tasks of {names} tokenize targets with different vocabularies "
                       f"{sorted(vocabularies)}; evaluate each VOCABULARY's tasks on their own")
    self.vocabulary = valid[0].output_features["targets"].vocabulary
    self.n_types = n_types
    if n_types is None:
      self.n_types = data_n_types(valid[0], use_cached, split=split)
      if not self.n_types:
        raise ValueError(f"task {valid[0].name!r} has no {FEATURE_IDS!r} feature; register it "
                         "with flix.data.register_pair_task (or register_offline)")
    self.truncated = {t.name: _truncated(t, split, self.feature_lengths, num_examples,
                                         use_cached) for t in valid}
    total = sum(bool(flags) for per_task in self.truncated.values() for flags in per_task)
    if total:
      logging.warning("%d examples are longer than feature_lengths %s and are trimmed (counts "
                      "per pair: truncated_inputs / truncated_targets in the report)", total,
                      self.feature_lengths)
    # No length check in the converter: seqio trims the evaluator's examples to
    # feature_lengths (the truncation is counted above), so its two asserting passes per pair
    # (about a fifth of an evaluation of a small model on XLA:CPU) could never fail.
    converter = feature_converter_cls(self.n_types, apply_length_check=False)
    self._evaluators = []
    for name in names:
      self._evaluators.append(seqio.Evaluator(
          name, converter, eval_split=split, sequence_length=self.feature_lengths,
          use_cached=use_cached,
          num_examples=num_examples, shuffle=False, use_memory_cache=True,
          async_compute_metrics=False))
    self.task_names = tuple(t.name for e in self._evaluators for t in e.eval_tasks)

  def evaluate(self, model: BaseModel, params, *, out_dir: str | None, step: int | None = None,
               decode_kwargs: Mapping[str, Any] | None = None,
               task_decode_kwargs: Mapping[str, Mapping[str, Any]] | None = None) -> Report:
    """Decodes every pair with `model` (greedy by default; a task in `task_decode_kwargs` with
    exactly its own options) and reports; see `evaluate`."""
    n_model = model.n_types
    if n_model and n_model != self.n_types:
      raise ValueError(f"the model's FeatureSpace has {n_model} feature types "
                       f"{list(model.flix.space.names)} but the tasks carry {self.n_types} "
                       "feature ids per example; evaluate with the space the tasks were "
                       "registered with")
    length = self.feature_lengths["targets"]
    eos_id = self.vocabulary.eos_id
    predictor = model_predictor(model, params, max_length=length, decode_kwargs=decode_kwargs,
                                eos_id=eos_id)
    own = {name: model_predictor(model, params, max_length=length, decode_kwargs=kwargs,
                                 eos_id=eos_id)
           for name, kwargs in (task_decode_kwargs or {}).items() if name in self.task_names}
    return self.evaluate_predictor(predictor, out_dir=out_dir, step=step, task_predictors=own)

  def evaluate_predictor(self, predictor: BatchPredictor, *, out_dir: str | None,
                         step: int | None = None,
                         task_predictors: Mapping[str, BatchPredictor] | None = None) -> Report:
    """Runs `predictor` over every pair, computes seqio metrics, writes and returns the report.

    Args:
      predictor: model batch `[batch_size, ...]` -> ids `[batch_size, (n,) length]` or a
        DecodeResult.
      out_dir: where predictions and reports go; None writes nothing.
      step: recorded in the report.
      task_predictors: `{seqio task name: predictor}` for tasks decoded otherwise (e.g. with
        3 returned decodes); names not evaluated here are ignored.
    """
    task_predictors = dict(task_predictors or {})
    per_pair, info = {}, {}
    for evaluator in self._evaluators:
      names = {id(ds): name for name, ds in evaluator.cached_model_datasets.items()}
      scores: dict[str, dict[int, Any]] = {}

      def predict_fn(ds, names=names, scores=scores):
        name = names[id(ds)]
        out, scores[name] = self._predict(ds, task_predictors.get(name, predictor))
        return out

      metrics, outputs = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)
      metrics = metrics.result()
      for task in evaluator.eval_tasks:
        per_pair[task.name] = metrics[task.name]
        tokens = outputs[task.name][seqio_metrics.ModelOutputType.PREDICTION]
        records = self._records(task, evaluator.cached_task_datasets[task.name], tokens,
                                scores.get(task.name, {}))
        flags = self.truncated.get(task.name, [])
        info[task.name] = {"n_examples": len(records),
                           "feature_ids": records[0]["feature_ids"] if records else None,
                           "truncated_inputs": sum("inputs" in f for f in flags),
                           "truncated_targets": sum("targets" in f for f in flags)}
        for record, trimmed in zip(records, flags):
          record["truncated"] = trimmed
        if out_dir is not None:
          files.write_jsonl(os.path.join(out_dir, PREDICTIONS_DIR, f"{task.name}.jsonl"), records,
                            default=_json_default)
    report = build_report(per_pair, self.holdout, split=self.split, step=step, pairs=info,
                          official=self.official)
    if out_dir is not None:
      report.write(out_dir)
    return report

  def _predict(self, ds, predictor: BatchPredictor):
    """[(index, ids)] for an enumerated model dataset, and {index: score} when available."""
    out, scores = [], {}
    for indices, batch in ds.batch(self.batch_size).as_numpy_iterator():
      n = len(indices)
      result = predictor(_pad_batch(batch, self.batch_size))
      tokens, batch_scores = (result.tokens, result.scores) if isinstance(
          result, decoding.DecodeResult) else (result, None)
      tokens = np.asarray(tokens)
      if tokens.ndim not in (2, 3) or tokens.shape[0] != self.batch_size:
        raise ValueError(f"the predictor must return ids [batch_size={self.batch_size}, (n,) "
                         f"length], got shape {tokens.shape}")
      for j in range(n):
        out.append((int(indices[j]), tokens[j].tolist()))
        if batch_scores is not None:
          scores[int(indices[j])] = np.asarray(batch_scores[j]).tolist()
    return out, scores

  def _records(self, task: seqio.Task, task_ds, tokens, scores: Mapping[int, Any]) -> list[dict]:
    """One JSON-ready dict per example, in dataset order (= seqio's index order)."""
    vocab = task.output_features["targets"].vocabulary
    pair = as_pair(task.name)
    records = []
    for i, ex in enumerate(task_ds.as_numpy_iterator()):
      ids = np.asarray(tokens[i])
      text = ([vocab.decode(row.tolist()) for row in ids] if ids.ndim == 2
              else vocab.decode(ids.tolist()))
      if task.postprocess_fn is not None:
        text = task.postprocess_fn(text, example=ex, is_target=False)
      target = _text(ex.get("targets_pretokenized"))
      record = {"index": i, "inputs": _text(ex.get("inputs_pretokenized")),
                "target": target, "prediction": text, "features": pair.features,
                "feature_ids": np.asarray(ex[FEATURE_IDS]).tolist()}
      if task.postprocess_fn is not None and target is not None:
        references = task.postprocess_fn(target, example=ex, is_target=True)
        if isinstance(references, list):  # Every accepted answer, as the metrics see them.
          record["references"] = references
      if i in scores:
        record["score"] = scores[i]
      records.append(record)
    if len(records) != len(tokens):
      raise ValueError(f"task {task.name!r}: {len(tokens)} predictions for {len(records)} "
                       "examples")
    return records


def _text(value) -> str | None:
  if value is None:
    return None
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _json_default(value):
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return str(value)


def evaluate(model: BaseModel, params, tasks: str | Sequence[str], *, out_dir: str | None,
             feature_lengths: Mapping[str, int], batch_size: int,
             holdout: HoldOut | None = None, split: str = "validation",
             decode_kwargs: Mapping[str, Any] | None = None, step: int | None = None,
             num_examples: int | None = None,
             task_decode_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
             official: Callable[[Mapping[str, Mapping[str, Any]]], dict] | None = None,
             use_cached: bool = False) -> Report:
  """Evaluates `model` on every pair of `tasks` once (build a PairEvaluator to repeat).

  Args:
    model, params: a model object (`flix.models.model`) and its params.
    tasks: seqio mixture/task names of pair tasks, e.g. `reg.eval_mixture`.
    out_dir: predictions/*.jsonl, report.json and report.md go here (None: nothing written).
    feature_lengths: `{"inputs": ..., "targets": ...}`, e.g. `reg.task_feature_lengths`.
    batch_size: decode batch rows (short batches padded).
    holdout: e.g. `reg.holdout`, for seen pair / unseen pair / unseen language kinds.
    split: "validation" or "test".
    decode_kwargs: `flix.decoding.DecodeOptions` fields (method, num_beams, alpha, temperature,
      top_k, rng, num_samples); default greedy.
    step, num_examples: see PairEvaluator.
    task_decode_kwargs: `{seqio task name: options}` replacing `decode_kwargs` for those tasks,
      e.g. `reg.decode_kwargs`.
    official: the benchmark's own aggregate, e.g. `reg.official` (`Report.official`).
    use_cached: read seqio's offline cache of the tasks (T5X's USE_CACHED_TASKS).

  Returns:
    The Report (per_pair, by_task, by_lang, by_kind, overall, official).
  """
  evaluator = PairEvaluator(tasks, feature_lengths=feature_lengths, batch_size=batch_size,
                            holdout=holdout, split=split, num_examples=num_examples,
                            feature_converter_cls=converter_class(model), official=official,
                            use_cached=use_cached)
  return evaluator.evaluate(model, params, out_dir=out_dir, step=step,
                            decode_kwargs=decode_kwargs, task_decode_kwargs=task_decode_kwargs)


@gin.configurable
def evaluate_checkpoint(*, checkpoint_path: str = gin.REQUIRED, output_dir: str = gin.REQUIRED,
                        mixture_or_task_name: str = gin.REQUIRED,
                        task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
                        registration: Registration | None = None, batch_size: int = 32,
                        split: str = "validation",
                        decode_kwargs: Mapping[str, Any] | None = None,
                        task_decode_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                        num_examples: int | None = None,
                        mixture_or_task_module: str | Sequence[str] | None = None,
                        use_cached_tasks: bool = False,
                        vocabulary: seqio.Vocabulary = BYTE_VOCAB):
  """Evaluates `checkpoint_path` on `mixture_or_task_name` (the first `num_examples` of each
  pair; None: all); returns the Report.

  Tasks the registration decodes its own way (`registration.decode_kwargs`, unless
  `task_decode_kwargs` is given) keep their options; `decode_kwargs` is everyone else's.
  The registration's `official` aggregate, if any, is reported as `Report.official`.
  `mixture_or_task_module` (T5X's MIXTURE_OR_TASK_MODULE): module name(s) imported first, so
  that they register their seqio tasks; `use_cached_tasks` (USE_CACHED_TASKS): read seqio's
  offline cache of the tasks. `vocabulary` (VOCABULARY): what the checkpoint was trained with;
  the model must cover it and the tasks must tokenize with it (checked before decoding).
  """
  from flix import checkpoints
  import_task_modules(mixture_or_task_module)
  check_registered(mixture_or_task_name)
  model_config, flix, params = checkpoints.load_model(checkpoint_path)
  check_run_vocabulary(vocabulary, model_config, mixture_or_task_name)
  model = make_model(model_config, flix)
  if model.n_types and registration is not None:
    checkpoints.check_feature_space(checkpoint_path, flix.space, registration.space)
  if task_decode_kwargs is None and registration is not None:
    task_decode_kwargs = registration.decode_kwargs
  report = evaluate(model, params, mixture_or_task_name, out_dir=output_dir,
                    feature_lengths=task_feature_lengths, batch_size=batch_size,
                    holdout=registration.holdout if registration is not None else None,
                    split=split, decode_kwargs=decode_kwargs,
                    task_decode_kwargs=task_decode_kwargs,
                    official=registration.official if registration is not None else None,
                    num_examples=num_examples, use_cached=use_cached_tasks)
  print(report.to_markdown())
  return report


__all__ = ["BatchPredictor", "PairEvaluator", "Report", "SPLIT_KINDS", "build_report",
           "evaluate", "evaluate_checkpoint", "model_predictor", "target_predictor"]
