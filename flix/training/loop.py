"""The training loop: data -> jit-compiled sharded steps -> checkpoints, metrics, progress.

Data flows one way: a seqio mixture of task-language pairs -> FlixEncDecFeatureConverter
(feature ids `[batch, n_types]` in the batch) -> global arrays sharded over 'data' -> train step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from typing import Any, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax
import seqio

from flix import checkpoints
from flix.config import FlixConfig
from flix.data.converter import FlixEncDecFeatureConverter
from flix.features import FeatureSpace
from flix.models.t5 import T5, T5Config, abstract_params, init_params
from flix.trainable import METHODS, freeze_base, trainable_mask
from flix.training.checkpointer import Checkpointer, latest
from flix.training.optimizers import make_optimizer
from flix.training.partitioning import Partitioner
from flix.training.progress import MetricsLogger
from flix.training.state import TrainState
from flix.training.sparse_step import make_row_sparse_train_step
from flix.training.step import StepConfig, make_train_step


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
  """SIGTERM/SIGINT arrived; a checkpoint was saved."""

  def __init__(self, signum: int, path: str):
    super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint saved at {path}")
    self.signum, self.path = signum, path


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AdapterSettings:
  """The method and its adapters. method: "flix" (feature adapters from the data's feature
  space, plus `shared_rank`), "lora" (one shared adapter of `lora_rank`), "full" (no adapters,
  everything trains)."""

  method: str = "flix"
  feature_ranks: Mapping[str, int] | int = 4
  shared_rank: int = 0
  lora_rank: int = 8
  alpha: float | None = None
  rslora: bool = False
  targets: Sequence[str] = ("*",)
  strategy: str = "auto"
  feature_dropout: float = 0.0

  def flix_config(self, data_space: FeatureSpace) -> FlixConfig | None:
    if self.method not in METHODS:
      raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
    if self.method == "full":
      return None
    space = (FeatureSpace.lora(self.lora_rank) if self.method == "lora" else
             data_space.with_ranks(self.feature_ranks, self.shared_rank))
    return FlixConfig(space, self.alpha, self.rslora, tuple(self.targets), self.strategy)


def check_task(name: str) -> None:
  try:
    seqio.get_mixture_or_task(name)
  except ValueError:
    known = sorted(seqio.MixtureRegistry.names() | seqio.TaskRegistry.names())
    shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
    raise ValueError(f"unknown mixture or task {name!r}; registered: {shown or 'none'}") from None


def train_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                  batch_size: int, n_types: int, seed: int, skip: int):
  """Endless numpy batches of this host's rows, starting after `skip` batches (exact resume).

  Every host reads the same stream of global batches and keeps its contiguous slice of rows
  (host i: rows [i, i + 1) * batch_size / hosts, the rows its devices hold on the 'data' axis).
  So the global batch is the same for any number of hosts: a 2-host run trains on exactly the
  batches of a 1-host run (scripts/multihost_cpu.sh checks it), and resume does not depend on
  the host count. The price is that each host runs the whole input pipeline (cheap for the
  offline benchmarks; sharding the dataset by host would change the batches with the host
  count).
  """
  check_task(mixture_or_task_name)
  hosts, host = jax.process_count(), jax.process_index()
  if batch_size % hosts:
    raise ValueError(f"batch_size {batch_size} is not divisible by {hosts} hosts")
  ds = seqio.get_dataset(
      mixture_or_task_name, dict(task_feature_lengths), dataset_split="train", shuffle=True,
      num_epochs=None, seed=seed, use_cached=False, shard_info=seqio.ShardInfo(0, 1),
      feature_converter=FlixEncDecFeatureConverter(n_types))
  ds = ds.batch(batch_size, drop_remainder=True).skip(skip)
  rows = slice(host * batch_size // hosts, (host + 1) * batch_size // hosts)
  return ({k: v[rows] for k, v in batch.items()} for batch in ds.as_numpy_iterator())


def initial_params(model: T5, rng: jax.Array, initial_checkpoint_path: str | None) -> dict:
  """Fresh params, or the base of `initial_checkpoint_path` with fresh adapters."""
  fresh = init_params(model, rng)
  if not initial_checkpoint_path:
    return fresh
  base_config, _, base = checkpoints.load_model(initial_checkpoint_path)
  if base_config != model.config:
    raise checkpoints.CheckpointError(
        f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} holds {base_config}, but the run's "
        f"model is {model.config}")
  plain = nn.unbox(fresh)
  missing = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
      checkpoints.strip_adapters(plain)) if not _has_path(base, p)]
  if missing:
    raise checkpoints.CheckpointError(
        f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} lacks parameters {missing[:5]}")
  base_only = checkpoints.strip_adapters(base)
  grafted = checkpoints.graft(plain, base_only)
  return jax.tree.map(lambda box, v: box.replace_boxed(jnp.asarray(v)), fresh, grafted,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _has_path(tree, path) -> bool:
  for key in path:
    if not isinstance(tree, Mapping) or key.key not in tree:
      return False
    tree = tree[key.key]
  return True


class _SignalFlag:
  """Records SIGTERM/SIGINT instead of dying, so the loop can save first."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for s in (signal.SIGTERM, signal.SIGINT):
      self._previous[s] = signal.signal(s, self._set)
    return self

  def _set(self, signum, frame):
    self.signum = signum

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


@gin.configurable
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, model_config: T5Config = gin.REQUIRED,
          registration: Any = None, adapters: AdapterSettings = AdapterSettings(),
          optimizer: optax.GradientTransformation | None = None,
          initial_checkpoint_path: str | None = None, adapter_only_checkpoints: bool = True,
          checkpoint_period: int = 1000, keep_checkpoints: int = 3, log_period: int = 50,
          random_seed: int = 0, partitioner: Partitioner | None = None,
          step_config: StepConfig = StepConfig(), gin_config: str = "") -> TrainState:
  """Trains to `train_steps` (resuming from the latest checkpoint in `model_dir`).

  Args:
    registration: what registered the data (e.g. `register_offline()`); its `.space` is the
      data's FeatureSpace. Without it, the model has no feature adapters.
    adapters: the method (flix / lora / full) and adapter settings.
    initial_checkpoint_path: base checkpoint; adapters start fresh (B = 0).
    adapter_only_checkpoints: with a base checkpoint and a frozen base, checkpoints hold only
      adapters and reference the base by path.
  Returns the final TrainState.
  """
  partitioner = partitioner or Partitioner()
  if batch_size % partitioner.data_size:
    raise ValueError(f"BATCH_SIZE {batch_size} is not divisible by the mesh's data axis "
                     f"({partitioner.data_size})")
  data_space = registration.space if registration is not None else None
  if data_space is None and adapters.method == "flix":
    raise ValueError("method 'flix' needs a data registration with a feature space "
                     "(train.registration = @register_offline() or similar)")
  n_types = data_space.n_types if data_space is not None else 0
  flix = adapters.flix_config(data_space) if data_space is not None else (
      adapters.flix_config(FeatureSpace.lora(adapters.lora_rank)))
  model = T5(model_config, flix)
  optimizer = freeze_base(optimizer or make_optimizer(), abstract_params(model),
                          adapters.method)
  step_config = dataclasses.replace(step_config, feature_dropout=adapters.feature_dropout)
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, "config.gin"), "w", encoding="utf-8") as f:
    f.write(gin_config)

  # State: fresh (or base checkpoint + fresh adapters), laid out over the mesh.
  root = jax.random.key(random_seed)
  boxed = initial_params(model, jax.random.fold_in(root, 0), initial_checkpoint_path)
  param_shardings = partitioner.shardings(boxed)
  params = jax.device_put(nn.unbox(boxed), param_shardings)
  replicated = partitioner.replicated()
  state = TrainState(step=jax.device_put(jnp.int32(0), replicated), params=params,
                     opt_state=partitioner.on_mesh(jax.jit(optimizer.init)(params)),
                     rng=jax.device_put(jax.random.key_data(jax.random.fold_in(root, 1)),
                                        replicated))
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  base_ref = (initial_checkpoint_path if initial_checkpoint_path and adapter_only_checkpoints
              and adapters.method != "full" else None)
  checkpointer = Checkpointer(model_dir, model_config, flix, keep=keep_checkpoints,
                              base_checkpoint=base_ref, gin_config=gin_config)
  data_position = 0
  resume_from = latest(model_dir)
  if resume_from:
    state, data_position = checkpointer.restore(resume_from, state)

  mask = trainable_mask(state.params, adapters.method)
  make_step = make_row_sparse_train_step if step_config.row_sparse else make_train_step
  step_fn = jax.jit(make_step(model, optimizer, mask, step_config),
                    in_shardings=(state_shardings, partitioner.batch_sharding()),
                    out_shardings=(state_shardings, replicated), donate_argnums=0)
  batches = train_batches(mixture_or_task_name, task_feature_lengths, batch_size, n_types,
                          random_seed, data_position)
  start = int(jax.device_get(state.step))
  logger = MetricsLogger(model_dir, total_steps=train_steps, start_step=start,
                         tokens_per_step=batch_size * sum(task_feature_lengths.values()))
  last_saved = resume_from
  with _SignalFlag() as flag:
    for step in range(start, train_steps):
      batch = partitioner.global_batch(next(batches))
      new_state, metrics = step_fn(state, batch)
      data_position += 1
      done = step + 1
      should_log = done % log_period == 0 or done == train_steps
      should_save = done % checkpoint_period == 0 or done == train_steps or flag.signum
      if should_log or should_save:
        host = jax.device_get(metrics)
        if not math.isfinite(float(host["loss"])):
          raise NonFiniteLossError(
              f"loss is {float(host['loss'])} at step {done}; stopping without saving this "
              f"state. Last good checkpoint: {last_saved or 'none'}")
        logger.log(done, host)
      state = new_state
      if should_save:
        last_saved = checkpointer.save(state, data_position)
      if flag.signum:
        logger.close()
        raise Interrupted(flag.signum, last_saved)
  logger.close()
  return state

