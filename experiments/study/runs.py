"""One study run: fine-tune a method from the grid's cached base, evaluate every cell.

A run lives in `CACHE/runs/{grid}/{method}_s{seed}_{key}/`, key = hash of everything that
decides its numbers (grid data and budget, base model, method, seed; with a split design the
seed's drawn held-out cells). `results.json` is
written last and atomically: a run with it is done and is never retrained; a run without it
resumes training from its latest checkpoint (checkpoints every quarter of the steps,
`checkpoint_period`) and then evaluates. The base is pretrained once per grid in
`CACHE/bases/{grid}_{key}/`.

More steps cost only the new ones: under a constant learning rate (nothing depends on the
number of steps) a run of N steps is a shorter cached run of the same configuration continued,
so a fresh run starts from the latest checkpoint of the longest such run (copied; the optimizer
state and the data iterator come with it) and gives the same numbers as training from step 0.

An archive (`ARCHIVE/{grid}/{method}_s{seed}_{key}.json`) keeps a copy of each finished run's
results, without checkpoints (~30 kB a run): a run found there is not retrained, so a study can
be carried to another machine, or across sessions whose cache is lost, by copying the archive.

Several processes may share one cache: a run (and a base) is trained under an exclusive lock on
`{dir}/lock` (`fcntl.flock`, released when its process dies), so no two train the same one; a
process that finds a run locked either waits for it or, with `wait=False`, gets `RunBusy` and
comes back to it later (the study CLI does that).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any

from flix import files
from experiments.study.grids import Grid
from experiments.study.methods import MethodSpec

RESULTS = "results.json"
LOCK = "lock"
# Schedules that do not depend on the number of fine-tuning steps: a longer run continues a
# shorter one.
CONTINUABLE_SCHEDULES = ("constant",)
KIND_NAMES = {"seen_pair": "seen", "unseen_pair": "unseen_pair",
              "unseen_language": "unseen_lang"}
EVAL_SPLITS = ("validation", "test")


def digest(value: Any) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def base_key(grid: Grid) -> dict[str, Any]:
  """What decides the base model: the grid's data and the pretraining settings."""
  key = grid.key()
  budget = key.pop("budget")
  for name in ("unseen_pairs", "unseen_langs", "design"):
    key.pop(name, None)  # The hold-out is drawn per seed; the base sees every cell's text.
  key["pretrain"] = {k: budget[k] for k in ("pretrain_steps", "pretrain_learning_rate",
                                            "batch_size")}
  return key


def run_key(grid: Grid, method: MethodSpec, seed: int) -> dict[str, Any]:
  """The grid, the method and the seed; with a split design also the seed's drawn held-out
  cells, so a run is never read back for another draw."""
  key = {"grid": grid.key(), "method": method.key(), "seed": seed}
  split = grid.split_holdout(seed)
  if split is not None:
    key["holdout"] = split.to_dict()
  return key


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


class RunBusy(RuntimeError):
  """Another process holds the run's lock (it is training it now)."""


@contextlib.contextmanager
def claimed(directory: str, what: str, wait: bool = True):
  """Holds the exclusive lock of `directory` (created if missing) for the block.

  Raises RunBusy if another process holds it and not `wait`; else waits for it (logged).
  """
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, LOCK), "w", encoding="utf-8") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      if not wait:
        raise RunBusy(f"{what} is being trained by another process ({directory})") from e
      log(f"[study] waiting for another process to finish {what} ({directory})")
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def checkpoint_period(steps: int) -> int:
  """Every quarter of the steps, but not more often than every 100 steps: a run of fewer than
  100 steps (the quick grids) saves only its last step (a save costs seconds there)."""
  return max(steps // 4, min(steps, 100))


def pretrain_base(grid: Grid, cache_dir: str, wait: bool = True) -> str:
  """The grid's base checkpoint: pretrained now (resumable) or found in the cache.

  wait: if another process is pretraining it, wait for it (else raise RunBusy).
  """
  model_dir = os.path.join(cache_dir, "bases", f"{grid.name}_{digest(base_key(grid))}")
  path = os.path.join(model_dir, f"checkpoint_{grid.budget.pretrain_steps}")
  if not os.path.isdir(path):
    with claimed(model_dir, f"the {grid.name} base", wait):
      if not os.path.isdir(path):  # Not pretrained by another process while this one waited.
        _pretrain(grid, model_dir)
  return path


def _pretrain(grid: Grid, model_dir: str) -> None:
  from flix.training import loop, optimizers  # pylint: disable=import-outside-toplevel
  steps = grid.budget.pretrain_steps
  reg = grid.register_pretraining()
  log(f"[study] pretraining the {grid.name} base ({steps} steps) -> {model_dir}")
  files.write_json(os.path.join(model_dir, "key.json"), base_key(grid))
  schedule = optimizers.learning_rate_schedule(grid.budget.pretrain_learning_rate, "constant",
                                               warmup_steps=max(steps // 10, 1))
  loop.train(model_dir=model_dir, mixture_or_task_name=reg.pretrain.name,
             task_feature_lengths=dict(reg.pretrain.feature_lengths),
             train_steps=steps, batch_size=grid.budget.batch_size, model_config=grid.model,
             registration=reg, adapters=loop.AdapterSettings(method="full"),
             optimizer=optimizers.make_optimizer("adamw", schedule),
             checkpoint_period=checkpoint_period(steps), keep_checkpoints=1,
             log_period=max(steps // 10, 1), gin_config=f"# experiments.study base: {base_key(grid)}\n")


def _correct(record: dict) -> bool:
  references = record.get("references") or [record["target"]]
  return record["prediction"] in references


def _cells(report, out_dir: str) -> list[dict]:
  """Per-cell exact match with every example's 0/1 correctness, from the predictions files."""
  from flix import evaluation  # pylint: disable=import-outside-toplevel
  cells = []
  for name in sorted(report.per_pair):
    info = report.pairs[name]
    path = os.path.join(out_dir, evaluation.PREDICTIONS_DIR, f"{name}.jsonl")
    with open(path, encoding="utf-8") as f:
      correct = [int(_correct(json.loads(line))) for line in f]
    cells.append({"task": info["task"], "lang": info["lang"],
                  "split": KIND_NAMES[info["kind"]], "metric": "exact_match",
                  "value": sum(correct) / len(correct), "n": len(correct), "correct": correct})
  return cells


def run_name(grid: Grid, method: MethodSpec, seed: int) -> str:
  """`{method}_s{seed}_{key}`: the run's directory in the cache, its file in an archive."""
  return f"{method.name}_s{seed}_{digest(run_key(grid, method, seed))}"


def run_dir(grid: Grid, method: MethodSpec, seed: int, cache_dir: str) -> str:
  return os.path.join(cache_dir, "runs", grid.name, run_name(grid, method, seed))


def archive_path(grid: Grid, method: MethodSpec, seed: int, archive_dir: str) -> str:
  return os.path.join(archive_dir, grid.name, f"{run_name(grid, method, seed)}.json")


def done(grid: Grid, method: MethodSpec, seed: int, cache_dir: str,
         archive_dir: str | None = None) -> bool:
  """Whether the run's results are in the cache (or in the archive)."""
  return os.path.isfile(os.path.join(run_dir(grid, method, seed, cache_dir), RESULTS)) or bool(
      archive_dir and os.path.isfile(archive_path(grid, method, seed, archive_dir)))


def _read_archived(path: str, key: dict[str, Any]) -> dict:
  """An archived run's results, refused loudly if they belong to another configuration."""
  results = _read_json(path)
  if digest(results.get("key")) != digest(key):
    raise ValueError(f"{path} holds the results of another configuration (key "
                     f"{digest(results.get('key'))}, expected {digest(key)}); move it away")
  return results


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def run(grid: Grid, method: MethodSpec, seed: int, cache_dir: str, base: str | None,
        evaluators: dict | None = None, archive_dir: str | None = None,
        wait: bool = True) -> tuple[dict, str]:
  """(the run's results, where they came from: "trained", "cache", "archive" or "waited").

  Trained and evaluated now, or read from the cache or the archive, or written by another
  process that was training the run while this one waited for it.

  base: the grid's base checkpoint (`pretrain_base`); only read when the run trains.
  archive_dir: where finished runs' results are also kept (see the module docstring); results
    found only in the cache are archived too.
  evaluators: PairEvaluators by (eval mixture, split), built by the first run that needs one
  and reused by the next runs of the same registration (building one is a tf.data pipeline per
  cell: about a minute per split on the offline grid, the same for every method).
  wait: if another process is training this run, wait for it (else raise RunBusy).
  """
  key = run_key(grid, method, seed)
  directory = run_dir(grid, method, seed, cache_dir)
  results_path = os.path.join(directory, RESULTS)
  archived = archive_path(grid, method, seed, archive_dir) if archive_dir else None
  if os.path.isfile(results_path):
    results = _read_json(results_path)
    if archived and not os.path.isfile(archived):
      files.write_json(archived, results, indent=None)  # One line.
    return results, "cache"
  if archived and os.path.isfile(archived):
    return _read_archived(archived, key), "archive"
  if base is None:
    raise ValueError(f"{method.name} seed {seed} on {grid.name} must be trained, but no base "
                     "checkpoint was given (runs.pretrain_base)")
  with claimed(directory, f"{method.name} seed {seed} on {grid.name}", wait):
    if os.path.isfile(results_path):  # Finished by the process this one waited for.
      how = "waited"
      results = _read_json(results_path)
    else:
      how = "trained"
      results = _train_and_evaluate(grid, method, seed, key, directory, base, evaluators)
  if archived:
    files.write_json(archived, results, indent=None)  # One line.
  return results, how


def _train_and_evaluate(grid: Grid, method: MethodSpec, seed: int, key: dict[str, Any],
                        directory: str, base: str, evaluators: dict | None) -> dict:
  """Fine-tunes (resuming from the latest checkpoint) and evaluates; writes results.json.

  key: the run's `run_key`.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from flix import checkpoints, evaluation  # pylint: disable=import-outside-toplevel
  from flix.data.converter import converter_class  # pylint: disable=import-outside-toplevel
  from flix.models.model import make_model  # pylint: disable=import-outside-toplevel
  from flix.training import loop, optimizers  # pylint: disable=import-outside-toplevel
  start = time.time()
  files.write_json(os.path.join(directory, "key.json"), key)
  reg = grid.register(seed, method.derived, method.features, method.inputs)
  split_holdout = grid.split_holdout(seed)
  budget = grid.budget
  steps = budget.finetune_steps
  schedule = optimizers.learning_rate_schedule(budget.finetune_learning_rate, budget.schedule,
                                               decay_steps=steps)
  model_dir = os.path.join(directory, "train")
  start_from_shorter_run(directory, key)
  loop.train(model_dir=model_dir, mixture_or_task_name=reg.train_mixture,
             task_feature_lengths=reg.task_feature_lengths, train_steps=steps,
             batch_size=budget.batch_size, model_config=grid.model, registration=reg,
             adapters=method.adapters(), initial_checkpoint_path=base,
             optimizer=optimizers.make_optimizer("adamw", schedule),
             checkpoint_period=checkpoint_period(steps), keep_checkpoints=1,
             log_period=max(steps // 10, 1), random_seed=seed,
             pack=False,  # Equal examples per step: packing 'auto' would pack LoRA only.
             gin_config=f"# experiments.study run: {key}\n")
  checkpoint = os.path.join(model_dir, f"checkpoint_{steps}")
  model_config, flix, params = checkpoints.load_model(checkpoint)
  model = make_model(model_config, flix)
  results = {"method": method.name, "seed": seed, "key": key,
             "holdout": (split_holdout.to_dict() if split_holdout is not None
                         else reg.holdout.to_dict()),
             "trained_params": int(sum(v.size for v in jax.tree.leaves(
                 checkpoints.adapter_leaves(params))))}
  if method.rank_exempt:
    results["rank_exempt"] = True
  evaluators = {} if evaluators is None else evaluators
  for split in EVAL_SPLITS:
    out_dir = os.path.join(directory, f"eval_{split}")
    cells = []
    for part, (names, num_examples) in _eval_parts(grid, reg, split_holdout, split).items():
      if (reg.eval_mixture, split, part) not in evaluators:
        evaluators[reg.eval_mixture, split, part] = evaluation.PairEvaluator(
            names, feature_lengths=reg.task_feature_lengths,
            batch_size=budget.eval_batch_size, holdout=reg.holdout, split=split,
            num_examples=num_examples, feature_converter_cls=converter_class(model))
      report = evaluators[reg.eval_mixture, split, part].evaluate(model, params,
                                                                  out_dir=out_dir)
      cells += _cells(report, out_dir)
    results[split] = sorted(cells, key=lambda c: (c["task"], c["lang"]))
  results["wall_seconds"] = time.time() - start
  files.write_json(os.path.join(directory, RESULTS), results)
  return results


def _eval_parts(grid: Grid, reg, split_holdout, split: str) -> dict[str, tuple]:
  """`{part: (seqio names, examples per cell)}` evaluated on `split`: the whole eval mixture
  at the budget's `eval_examples` (the first grids), or, with a split design, the seen cells at
  `eval_examples` and the split's own held-out cells at the design's `heldout_examples`."""
  if split_holdout is None:
    return {"all": (reg.eval_mixture, grid.budget.eval_examples)}
  seen = [t.name for t in reg.tasks if t.kind == "seen_pair"]
  mine = [t.name for t in reg.tasks
          if t.kind != "seen_pair" and split_holdout.evaluated(split, t.pair)]
  return {"seen": (seen, grid.budget.eval_examples),
          "heldout": (mine, grid.design.heldout_examples)}


def _steps(key: dict[str, Any]) -> int:
  return key["grid"]["budget"]["finetune_steps"]


def digest_without(key: dict[str, Any], budget_field: str) -> str:
  """The digest of a run key without one budget field: runs that differ only there share it."""
  other = copy.deepcopy(key)
  other["grid"]["budget"].pop(budget_field)
  return digest(other)


def start_from_shorter_run(directory: str, key: dict[str, Any]) -> str | None:
  """Copies into `directory`/train the latest checkpoint of the longest cached run that differs
  from `key` (a `run_key`) only in having fewer fine-tuning steps; returns the copy (None:
  nothing copied).

  Nothing is copied when `directory` already has a checkpoint (it resumes from its own), under
  a schedule that depends on the number of steps (a decay), nor from a shorter run that another
  process is training now.
  """
  from flix import checkpoints  # pylint: disable=import-outside-toplevel
  from flix.training.checkpointer import step_dirs  # pylint: disable=import-outside-toplevel
  model_dir = os.path.join(directory, "train")
  if key["grid"]["budget"]["schedule"] not in CONTINUABLE_SCHEDULES or step_dirs(model_dir):
    return None
  name, seed = key["method"]["name"], key["seed"]
  runs_dir, mine = os.path.dirname(directory), digest_without(key, "finetune_steps")
  found = []  # (step, checkpoint, run directory)
  for other_name in sorted(os.listdir(runs_dir)):
    other = os.path.join(runs_dir, other_name)
    key_file = os.path.join(other, "key.json")
    if (other == directory or not other_name.startswith(f"{name}_s{seed}_")
        or not os.path.isfile(key_file)):
      continue
    theirs = _read_json(key_file)
    if _steps(theirs) < _steps(key) and digest_without(theirs, "finetune_steps") == mine:
      dirs = step_dirs(os.path.join(other, "train"))
      if dirs:
        found.append((*dirs[-1], other))
  for step, checkpoint, other in sorted(found, reverse=True):
    try:
      with claimed(other, f"{name} seed {seed} ({other})", wait=False):
        target = os.path.join(model_dir, os.path.basename(checkpoint))
        with checkpoints.atomic_directory(target) as tmp:
          shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)
        _copy_metrics(os.path.join(other, "train"), model_dir, step)
    except RunBusy:
      continue
    log(f"[study] {name} seed {seed}: starting from step {step} of {other} (a constant "
        f"learning rate: the same run, continued to {_steps(key)} steps)")
    return target
  return None


def _copy_metrics(source_dir: str, target_dir: str, up_to_step: int) -> None:
  """The shorter run's metrics.jsonl lines up to `up_to_step`, so the curve starts at step 1."""
  source = os.path.join(source_dir, "metrics.jsonl")
  if not os.path.isfile(source):
    return
  with open(source, encoding="utf-8") as f:
    lines = [line for line in f if line.strip() and json.loads(line)["step"] <= up_to_step]
  files.write_text(os.path.join(target_dir, "metrics.jsonl"), "".join(lines))
