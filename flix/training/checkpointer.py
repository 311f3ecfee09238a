"""Periodic train-state checkpoints in MODEL_DIR: keep-N, atomic, adapter-only, exact resume.

MODEL_DIR/checkpoint_<step>/ is a `flix.checkpoints` model checkpoint plus
  train_state/       orbax: {"opt_state": ..., "rng": uint32 [2]}
  train_state.json   {"step": int, "data_position": batches consumed,
                      "data_shards": seqio shards the global batch is read from,
                      "pack": whether the rows were packed,
                      "eval": {"<group>/<metric>": value} of an in-training evaluation at
                      this step (`flix.training.periodic_eval`), when there was one}
  config.gin         the operative gin config
  data_iterator/     the input iterators' state, one tf.train.Checkpoint per data shard
                     (`flix.training.batches`; absent with train.save_data_iterator=False)
Adapter-only checkpoints (when training starts from a base checkpoint and the base is frozen)
hold adapter leaves only and reference the base checkpoint by path.

Which checkpoints stay is orbax's preservation policy, the one orbax's CheckpointManager builds
from max_to_keep and best_fn (`retention_policy`: the newest `keep`, plus the best by the
recorded `best_metric`); writing stays flix's own atomic, self-describing directory (orbax's
CheckpointManager would put every item in its own subdirectory, moving the model.json that
eval, infer, convert and merge read at the top of a checkpoint).

Multi-process: every process calls `save` and `restore` (each writes and reads its shards);
process 0 writes the files, renames the directory into place and deletes old checkpoints.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import shutil

import jax
import numpy as np
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocp_policies

from flix import checkpoints
from flix.config import FlixConfig
from flix.errors import CheckpointError
from flix.models.families import ModelConfig
from flix.training.batches import TrainBatches
from flix.training.state import TrainState

_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
TRAIN_STATE = "train_state"
TRAIN_STATE_JSON = "train_state.json"


def step_dirs(model_dir: str) -> list[tuple[int, str]]:
  """Complete checkpoints in `model_dir`, oldest first (temporary directories never match)."""
  if not os.path.isdir(model_dir):
    return []
  found = []
  for name in os.listdir(model_dir):
    m = _STEP_DIR.match(name)
    path = os.path.join(model_dir, name)
    if m and os.path.isfile(os.path.join(path, TRAIN_STATE_JSON)):
      found.append((int(m.group(1)), path))
  return sorted(found)


def latest(model_dir: str) -> str | None:
  dirs = step_dirs(model_dir)
  return dirs[-1][1] if dirs else None


def latest_everywhere(model_dir: str) -> str | None:
  """`latest` as process 0 sees it, on every process (they must all resume from one step)."""
  if jax.process_count() == 1:
    return latest(model_dir)
  dirs = step_dirs(model_dir)
  step = int(multihost_utils.broadcast_one_to_all(np.int32(dirs[-1][0] if dirs else -1)))
  return None if step < 0 else os.path.join(os.path.abspath(model_dir), f"checkpoint_{step}")


def read_train_state_json(path: str) -> dict:
  """{"step", "data_position", "data_shards", "pack"} of checkpoint `path` (data_shards 1 and
  pack False if absent: checkpoints written before they were recorded)."""
  file = os.path.join(path, TRAIN_STATE_JSON)
  if not os.path.isfile(file):
    raise CheckpointError(f"{path} is not a train checkpoint: {TRAIN_STATE_JSON} "
                                      "is missing")
  with open(file, encoding="utf-8") as f:
    return {"data_shards": 1, "pack": False, **json.load(f)}


class Checkpointer:
  """Saves and restores TrainStates under `model_dir`."""

  def __init__(self, model_dir: str, model_config: ModelConfig, flix: FlixConfig | None, *,
               keep: int = 3, base_checkpoint: str | None = None, gin_config: str = "",
               data_shards: int = 1, pack: bool = False, best_metric: str | None = None,
               best_mode: str = "max"):
    """`keep`: the newest checkpoints kept; with `best_metric` ("<group>/<metric>" recorded
    by in-training evaluation), the checkpoint with its best value ("max" or "min"
    `best_mode`) is kept too."""
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    self.best_metric, self.best_mode = best_metric, best_mode
    self.model_dir = os.path.abspath(model_dir)
    self.model_config, self.flix = model_config, flix
    self.keep, self.base_checkpoint, self.gin_config = keep, base_checkpoint, gin_config
    self.data_shards, self.pack = data_shards, pack

  def save(self, state: TrainState, data_position: int,
           batches: TrainBatches | None = None,
           eval_metrics: dict[str, float] | None = None) -> str:
    """Writes checkpoint_<step> (all processes call it), with `batches`' iterator state and
    the step's evaluation metrics when given; keeps the newest `keep` and the best."""
    step = int(jax.device_get(state.step))
    path = os.path.join(self.model_dir, f"checkpoint_{step}")
    meta = {"step": step, "data_position": int(data_position), "data_shards": self.data_shards,
            "pack": self.pack}
    if eval_metrics:
      meta["eval"] = dict(eval_metrics)
    meta = json.dumps(meta, indent=2)
    checkpoints.save_model(
        path, state.params, self.model_config, self.flix, base_checkpoint=self.base_checkpoint,
        overwrite=True, extra_files={TRAIN_STATE_JSON: meta, "config.gin": self.gin_config},
        extra_trees={TRAIN_STATE: {"opt_state": state.opt_state, "rng": state.rng}},
        writers=[batches.save] if batches is not None else [])
    if checkpoints.is_primary():
      self.prune()
    return path

  def prune(self) -> list[str]:
    """Deletes the checkpoints `retention_policy` does not preserve; returns their paths."""
    dirs = step_dirs(self.model_dir)
    keep = retention_policy(self.keep, self.best_metric, self.best_mode).should_preserve(
        self._infos(dirs), context=ocp_policies.PreservationContext())
    removed = [path for (_, path), kept in zip(dirs, keep) if not kept]
    for path in removed:
      shutil.rmtree(path, ignore_errors=True)
    return removed

  def best(self) -> str | None:
    """The checkpoint with the best recorded `best_metric` (the newest among equals), or None."""
    if self.best_metric is None:
      return None
    dirs = step_dirs(self.model_dir)
    scored = [(path, info) for (_, path), info in zip(dirs, self._infos(dirs)) if info.metrics]
    best = _best_policy(self.best_metric, self.best_mode).should_preserve(
        [info for _, info in scored], context=ocp_policies.PreservationContext())
    return next((path for (path, _), b in zip(scored, best) if b), None)

  def _infos(self, dirs: list[tuple[int, str]]) -> list[CheckpointInfo]:
    """orbax's view of `dirs`: step, time, and {best_metric: value} where recorded and finite."""
    infos = []
    for step, path in dirs:
      value = (read_train_state_json(path).get("eval", {}).get(self.best_metric)
               if self.best_metric else None)
      finite = value is not None and math.isfinite(value)
      infos.append(CheckpointInfo(step, {self.best_metric: value} if finite else None,
                                  datetime.datetime.fromtimestamp(os.path.getmtime(path))))
    return infos

  def restore(self, path: str, target: TrainState) -> tuple[TrainState, int]:
    """The state saved at `path`, laid out (shapes, shardings) like `target`; and data position."""
    model_config, flix = checkpoints.load_configs(path)
    if model_config != self.model_config:
      raise CheckpointError(
          f"{path} holds a model {model_config}, but this run configures {self.model_config}")
    if flix is not None and self.flix is not None:
      checkpoints.check_feature_space(path, flix.space, self.flix.space)
    if flix != self.flix:
      raise CheckpointError(
          f"{path} was trained with adapters {flix}, but this run configures {self.flix} "
          "(feature values, ranks or targets differ)")
    meta = read_train_state_json(path)
    if meta["data_shards"] != self.data_shards:
      raise CheckpointError(
          f"{path} was trained with train.data_shards = {meta['data_shards']}, but this run "
          f"sets {self.data_shards}: its data position would not continue the same batches. "
          "Leave train.data_shards unset to resume with the checkpoint's")
    if meta["pack"] != self.pack:
      raise CheckpointError(
          f"{path} was trained with PACK = {meta['pack']}, but this run sets PACK = "
          f"{self.pack}: packed and unpacked rows are different batches, so its data position "
          "would not continue the same data. Resume with the checkpoint's PACK")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    params = checkpoints.restore_params(path, abstract.params)
    rest = checkpoints.restore_pytree(os.path.join(path, TRAIN_STATE),
                                      {"opt_state": abstract.opt_state, "rng": abstract.rng})
    state = TrainState(step=jax.device_put(jax.numpy.int32(meta["step"]),
                                           target.step.sharding),
                       params=params, opt_state=rest["opt_state"], rng=rest["rng"])
    return state, meta["data_position"]


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  """What orbax's preservation policies read of a checkpoint (its PolicyCheckpointInfo)."""
  step: int
  metrics: dict[str, float] | None
  time: datetime.datetime


def _best_policy(best_metric: str, best_mode: str) -> ocp_policies.BestN:
  # BestN sorts by the metric (stable: equal values stay oldest first) and keeps the last.
  return ocp_policies.BestN(get_metric_fn=lambda metrics: metrics[best_metric],
                            reverse=best_mode == "min", n=1,
                            keep_checkpoints_without_metrics=False)


def retention_policy(keep: int, best_metric: str | None = None,
                     best_mode: str = "max") -> ocp_policies.PreservationPolicy:
  """The checkpoints a run keeps, as an orbax preservation policy (what CheckpointManager
  applies): the newest `keep`, plus the one with the best `best_metric` when given."""
  policies = [ocp_policies.LatestN(n=keep)]
  if best_metric is not None:
    policies.append(_best_policy(best_metric, best_mode))
  return ocp_policies.AnyPreservationPolicy(policies)
