"""The training loop: data -> jit-compiled sharded steps -> checkpoints, metrics, progress.

Data flows one way: a seqio mixture of task-language pairs -> the model family's feature
converter (feature ids `[batch, n_types]` in the batch; with `pack`, several examples of one
feature combination per row) -> global arrays sharded over 'data' -> train step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax
import seqio
from jax.experimental import multihost_utils

from flix import checkpoints, files, host_memory
from flix.checks import check_counts
from flix.config import FlixConfig
from flix.data.converter import data_n_types, feature_converter
from flix.data.pairs import check_registered, import_task_modules
from flix.data.registration import Registration
from flix.data.vocab import BYTE_VOCAB, check_run_vocabulary
from flix.errors import CheckpointError, DamagedCheckpointError, Interrupted, NonFiniteLossError
from flix.features import FeatureSpace
from flix.models.model import BaseModel
from flix.trainable import METHODS
from flix.training import aot, auto_strategy, topology
from flix.training.batches import TrainBatches, check_data_shards, has_iterator_state
from flix.training.checkpointer import (Checkpointer, latest_everywhere, read_train_state_json,
                                        step_dirs)
from flix.training.optimizers import make_optimizer
from flix.training.partitioning import Partitioner
from flix.training.periodic_eval import EvalSettings, PeriodicEvaluator
from flix.training.progress import MetricsLogger
from flix.training.program import TrainProgram, build_program, initial_state
from flix.training.state import TrainState
from flix.training.step import StepConfig


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AdapterSettings:
  """The method and its adapters. method: "flix" (feature adapters over the data's feature
  space at `feature_ranks`, plus `shared_rank`), "lora" (one shared adapter of `lora_rank`),
  "full" (no adapters, everything trains). `feature_ranks` is one int for every type or a rank
  for exactly each type of the data's space (gin FEATURE_RANKS, e.g. {'task': 8, 'lang': 4}).
  `feature_dropout` (flix only) is the one feature dropout knob; the model object applies it
  (`flix.models.model`)."""

  method: str = "flix"
  feature_ranks: Mapping[str, int] | int = 4
  shared_rank: int = 0
  lora_rank: int = 8
  alpha: float | None = None
  rslora: bool = False
  targets: Sequence[str] = ("*",)
  strategy: str = "auto"
  feature_dropout: float = 0.0

  def flix_config(self, data_space: FeatureSpace | None) -> FlixConfig | None:
    """The run's FlixConfig: the data's space with this method's ranks (flix), the shared
    adapter alone (lora: the space is not used), or None (full)."""
    if self.method not in METHODS:
      raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
    if self.method == "full":
      return None
    options = dict(alpha=self.alpha, rslora=self.rslora, targets=tuple(self.targets),
                   strategy=self.strategy)
    if self.method == "lora":
      return FlixConfig.lora(self.lora_rank, **options)
    if data_space is None:
      raise ValueError("method 'flix' needs a data registration with a feature space "
                       "(train.registration = @register_offline() or similar)")
    return FlixConfig(data_space, ranks=self.feature_ranks, shared_rank=self.shared_rank,
                      **options)


def check_settings(*, train_steps, batch_size, checkpoint_period, log_period, keep_checkpoints,
                   task_feature_lengths, data_shards, input_threads) -> None:
  """Step counts, periods, sizes and lengths that make sense, before anything is written."""
  check_counts(TRAIN_STEPS=train_steps, BATCH_SIZE=batch_size,
               CHECKPOINT_PERIOD=checkpoint_period, LOG_PERIOD=log_period,
               **{"train.keep_checkpoints": keep_checkpoints})
  if not isinstance(task_feature_lengths, Mapping) or not task_feature_lengths:
    raise ValueError("TASK_FEATURE_LENGTHS must be a dict like {'inputs': 32, 'targets': 64}, "
                     f"got {task_feature_lengths!r}")
  check_counts(**{f"TASK_FEATURE_LENGTHS[{k!r}]": v for k, v in task_feature_lengths.items()})
  if data_shards is not None:
    check_counts(**{"train.data_shards": data_shards})
  if input_threads is not None:
    check_counts(**{"train.input_threads": input_threads})


PACK_AUTO = "auto"


def check_pack(pack: bool | str) -> None:
  if not (isinstance(pack, bool) or pack == PACK_AUTO):
    raise ValueError(f"PACK (train.pack) must be True, False or {PACK_AUTO!r}, got {pack!r}")


def resolve_pack(pack: bool | str, adapters: AdapterSettings,
                 resume_from: str | None) -> tuple[bool, str]:
  """(whether this run packs its rows, why). True / False: as given. 'auto' (the gin runs'
  default, as T5X packs by default): a resumed run keeps its checkpoint's value; a fresh run
  packs exactly where a packed example computes as it would alone, i.e. without feature
  dropout (LoRA, full training, FLix at FEATURE_DROPOUT = 0). Feature dropout is drawn per
  row, so the examples packed into one row would share one draw: FLix with dropout stays
  unpacked."""
  check_pack(pack)
  if isinstance(pack, bool):
    return pack, "as configured"
  if resume_from is not None:
    return read_train_state_json(resume_from)["pack"], f"'auto': as {resume_from} was trained"
  if adapters.method == "flix" and adapters.feature_dropout:
    return False, (f"'auto': FEATURE_DROPOUT {adapters.feature_dropout} is drawn per row, so "
                   "the examples of a packed row would share one draw")
  return True, (f"'auto': method {adapters.method!r} without feature dropout, every packed "
                "example computes as it would alone")


def initial_params(model: BaseModel, rng: jax.Array, initial_checkpoint_path: str | None) -> dict:
  """Fresh params, or the base of `initial_checkpoint_path` with fresh adapters."""
  fresh = model.init_params(rng)
  if not initial_checkpoint_path:
    return fresh
  base_config, _, base = checkpoints.load_model(initial_checkpoint_path)
  if base_config != model.module.config:
    raise CheckpointError(
        f"INITIAL_CHECKPOINT_PATH {initial_checkpoint_path} holds {base_config}, but the run's "
        f"model is {model.module.config}")
  plain = nn.unbox(fresh)
  missing = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(
      checkpoints.strip_adapters(plain)) if not _has_path(base, p)]
  if missing:
    raise CheckpointError(
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


def set_aside(path: str) -> str:
  """Renames checkpoint `path` to `path.damaged` (or `.damaged-N`): kept, no longer resumed."""
  aside, n = f"{path}.damaged", 1
  while os.path.exists(aside):
    aside, n = f"{path}.damaged-{n}", n + 1
  os.rename(path, aside)
  return aside


def restore_latest(checkpointer: Checkpointer, model_dir: str, target: TrainState,
                   skip_damaged: bool = False) -> tuple[TrainState, int, str | None]:
  """(state, data position, checkpoint) of the newest checkpoint of `model_dir`; `(target, 0,
  None)` without one. A damaged checkpoint is an error that names it, the array and the way
  back; with `skip_damaged` (one process) it is renamed `*.damaged` (nothing is deleted) and
  the previous checkpoint is tried."""
  while True:
    path = latest_everywhere(model_dir)
    if path is None:
      return target, 0, None
    try:
      state, position = checkpointer.restore(path, target)
      return state, position, path
    except DamagedCheckpointError as e:
      if os.path.abspath(e.checkpoint) != os.path.abspath(path):
        raise  # Its base checkpoint: an earlier step would not help.
      if not skip_damaged or jax.process_count() > 1:
        raise DamagedCheckpointError(
            e.checkpoint, e.arrays, advice=_resume_advice(model_dir, path)) from None
      aside = set_aside(path)
      print(f"warning: {e}; moved it to {aside} and trying the previous checkpoint",
            file=sys.stderr, flush=True)


def _resume_advice(model_dir: str, damaged: str) -> str:
  earlier = [p for _, p in step_dirs(model_dir)
             if os.path.abspath(p) != os.path.abspath(damaged)]
  keep = "Nothing was deleted. "
  if not earlier:
    return (keep + f"There is no earlier checkpoint in {model_dir}: move {damaged} aside to "
            "train from the start")
  if jax.process_count() > 1:  # Renaming needs every process to agree: done by hand.
    return (keep + f"To resume from the previous checkpoint {earlier[-1]}, move {damaged} "
            "aside (e.g. to a name not matching checkpoint_<step>) and rerun")
  return (keep + f"To resume from the previous checkpoint {earlier[-1]}, rerun with "
          f"--gin.train.skip_damaged_checkpoints=True (renames {damaged} to "
          f"{os.path.basename(damaged)}.damaged), or move {damaged} aside yourself")


class _StopFlag:
  """Turns SIGTERM/SIGINT into a stop after a step, so the loop can save first.

  One process: the signal is recorded by a Python handler; `stop(step)` returns it. Several
  processes must stop after the same step (saving needs all of them): jax.distributed's
  preemption service catches SIGTERM (its own handler, left in place) and tells every process;
  `stop(step)` is true on all of them at the same step (`reached_preemption_sync_point`, called
  every step). SIGINT is passed on to that service as a SIGTERM. So a signal to one process or
  to all of them saves one checkpoint and stops every process.
  """

  def __init__(self):
    self.signum = None
    self._previous = {}
    self._multi = jax.process_count() > 1

  def __enter__(self):
    for s in (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT):
      self._previous[s] = signal.signal(s, self._set)
    return self

  def _set(self, signum, frame):
    self.signum = signum
    if self._multi:
      signal.raise_signal(signal.SIGTERM)  # To the preemption service.

  def stop(self, step: int) -> int | None:
    """The signal to stop for after `step` (all processes agree), or None."""
    if not self._multi:
      return self.signum
    if multihost_utils.reached_preemption_sync_point(step):
      return self.signum or signal.SIGTERM
    return None

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def data_features(registration: Registration | None, mixture_or_task_name: str,
                  use_cached_tasks: bool = False) -> tuple[FeatureSpace | None, int]:
  """(the data's FeatureSpace, the length of its feature ids): `registration.space` and its
  n_types; without a registration, None and the length of the data's feature ids."""
  if registration is not None:
    return registration.space, registration.space.n_types
  return None, data_n_types(mixture_or_task_name, use_cached_tasks)


def build_step_program(model_config: Any, data_space: FeatureSpace | None, n_types: int,
                       adapters: AdapterSettings, optimizer: optax.GradientTransformation | None,
                       step_config: StepConfig, partitioner: Partitioner) -> TrainProgram:
  """The run's program (`flix.training.program`): the model of `model_config` with the
  adapters of `adapters` over `data_space`, `optimizer` (default `make_optimizer()`) on its
  trained leaves, the state's layout and step. `flix.train` and `flix.compile` both build it."""
  return build_program(model_config, adapters.flix_config(data_space), n_types,
                       method=adapters.method, feature_dropout=adapters.feature_dropout,
                       optimizer=optimizer or make_optimizer(), step_config=step_config,
                       partitioner=partitioner)


def choose_strategy_on_tpu(program: TrainProgram, build: Callable[[str], TrainProgram],
                           batch: dict) -> TrainProgram:
  """`program`, or on a TPU backend with FLix strategy 'auto', the program with the strategy
  whose train step compiles cheapest on these chips for `batch`'s shapes
  (`flix.training.auto_strategy`; `build(s)`: the program with strategy `s`). Elsewhere
  (CPU, GPU, a set strategy) `auto` resolves as `FlixConfig.resolved_strategy` says."""
  if jax.default_backend() != "tpu":
    return program
  chip = topology.TPU_CHIPS.get(jax.devices()[0].device_kind)
  if chip is None or not auto_strategy.applies(program.flix, chip):
    return program
  devices = list(program.partitioner.mesh.devices.flat)
  target = aot.Target(f"{chip.name} x{len(devices)}", devices, chip)
  key = repr((program.model.module.config, program.flix, program.method, program.step_config,
              tuple(program.partitioner.mesh.shape.items()), program.partitioner.param_rules,
              program.partitioner.feature_shard_rows, id(program.optimizer),
              sorted((k, v.shape) for k, v in batch.items())))
  result = aot.compile_choosing(lambda s: program if s is None else build(s),
                                lambda p: aot.compile_train_step(p, batch, target), target, key)
  return build(result.report["strategy"])


def fresh_state(program: TrainProgram, random_seed: int,
                initial_checkpoint_path: str | None) -> TrainState:
  """Step 0: fresh params (or the base of `initial_checkpoint_path` with fresh adapters) and
  their optimizer state, laid out as `program.state`."""
  root = jax.random.key(random_seed)
  boxed = initial_params(program.model, jax.random.fold_in(root, 0), initial_checkpoint_path)
  return initial_state(program, nn.unbox(boxed), random_seed)


@dataclasses.dataclass
class TrainRun:
  """A built run (`build_run`), ready for `run_loop`, which advances its state, data position
  and last checkpoint. A context manager: leaving it, on errors too, closes (`closing`) the
  metrics logger, the periodic evaluator and the input pipeline. The checkpointer saves
  synchronously: it holds nothing open."""

  state: TrainState
  step_fn: Callable[[TrainState, dict], tuple[TrainState, dict]]  # Donates the state.
  partitioner: Partitioner
  batches: TrainBatches
  data_position: int  # Batches consumed so far, recorded in each checkpoint.
  checkpointer: Checkpointer
  last_saved: str | None  # The newest checkpoint: the resumed one until the first save.
  evaluation: EvalSettings
  evaluator: PeriodicEvaluator | None  # None without EVAL_PERIOD.
  logger: MetricsLogger
  closing: contextlib.ExitStack

  def __enter__(self) -> TrainRun:
    return self

  def __exit__(self, *exc) -> None:
    self.closing.close()


def build_run(*, model_dir: str, mixture_or_task_name: str,
              task_feature_lengths: Mapping[str, int], train_steps: int, batch_size: int,
              model_config: Any, registration: Registration | None, adapters: AdapterSettings,
              optimizer: optax.GradientTransformation | None,
              initial_checkpoint_path: str | None, adapter_only_checkpoints: bool,
              keep_checkpoints: int, random_seed: int, partitioner: Partitioner | None,
              step_config: StepConfig, gin_config: str, data_shards: int | None,
              input_threads: int | None, use_cached_tasks: bool,
              skip_damaged_checkpoints: bool, restore_data_iterator: bool,
              evaluation: EvalSettings, pack: bool | str) -> TrainRun:
  """Builds `train`'s run (its arguments, checked): the model and optimizer, the state restored
  from the newest checkpoint of `model_dir` (else fresh), the compiled step, the input batches
  continuing where that checkpoint stopped, the checkpointer, the periodic evaluator and the
  metrics logger. Writes model_dir/config.gin."""
  partitioner = partitioner or Partitioner()
  if batch_size % partitioner.data_size:
    raise ValueError(f"BATCH_SIZE {batch_size} is not divisible by the mesh's data axis "
                     f"({partitioner.data_size})")
  data_space, n_types = data_features(registration, mixture_or_task_name, use_cached_tasks)
  program = build_step_program(model_config, data_space, n_types, adapters, optimizer,
                               step_config, partitioner)
  flix = program.flix  # As configured (strategy 'auto' stays 'auto' in checkpoints).
  os.makedirs(model_dir, exist_ok=True)
  if checkpoints.is_primary():
    files.write_text(os.path.join(model_dir, "config.gin"),
                     f"# host malloc: {host_memory.describe()}\n{gin_config}")
    print(f"host malloc: {host_memory.describe()}", file=sys.stderr, flush=True)
  resume_from = latest_everywhere(model_dir)
  inherited = data_shards is None and resume_from is not None
  if data_shards is None:
    data_shards = (read_train_state_json(resume_from)["data_shards"] if resume_from
                   else jax.process_count())
  check_data_shards(batch_size, data_shards, resume_from if inherited else None)
  pack, pack_reason = resolve_pack(pack, adapters, resume_from)
  if checkpoints.is_primary():
    print(f"PACK = {pack} ({pack_reason})", file=sys.stderr, flush=True)
  program = choose_strategy_on_tpu(
      program, lambda strategy: build_step_program(
          model_config, data_space, n_types, dataclasses.replace(adapters, strategy=strategy),
          optimizer, step_config, partitioner),
      program.batch(task_feature_lengths, batch_size, pack))
  model = program.model

  state = fresh_state(program, random_seed, initial_checkpoint_path)
  step_fn = program.step_fn()
  base_ref = (initial_checkpoint_path if initial_checkpoint_path and adapter_only_checkpoints
              and adapters.method != "full" else None)
  checkpointer = Checkpointer(model_dir, model_config, flix, keep=keep_checkpoints,
                              base_checkpoint=base_ref, gin_config=gin_config,
                              data_shards=data_shards, pack=pack,
                              best_metric=evaluation.best_metric, best_mode=evaluation.best_mode)
  state, data_position, resume_from = restore_latest(checkpointer, model_dir, state,
                                                     skip_damaged_checkpoints)
  restore_iterator = (resume_from is not None and restore_data_iterator
                      and has_iterator_state(resume_from))
  start = int(jax.device_get(state.step))
  with contextlib.ExitStack() as opened:  # Closes what opened if a later part fails.
    batches = TrainBatches(mixture_or_task_name, task_feature_lengths, batch_size,
                           feature_converter(model, n_types, pack=pack), random_seed,
                           skip=0 if restore_iterator else data_position,
                           data_shards=data_shards, input_threads=input_threads,
                           use_cached=use_cached_tasks)
    opened.callback(batches.close)
    if restore_iterator:
      batches.restore(resume_from)
    if resume_from is not None and checkpoints.is_primary():
      how = ("input iterator restored from its state" if restore_iterator else
             f"skipping {data_position} batches through the input pipeline")
      print(f"resuming from {resume_from} at step {start} ({how})",
            file=sys.stderr, flush=True)
    evaluator = None
    if evaluation.period is not None:
      evaluator = PeriodicEvaluator(evaluation, model, model_dir, registration=registration,
                                    task_feature_lengths=task_feature_lengths,
                                    use_cached=use_cached_tasks)
      opened.callback(evaluator.close)
    logger = MetricsLogger(model_dir, total_steps=train_steps, start_step=start,
                           tokens_per_step=batch_size * sum(task_feature_lengths.values()),
                           write_files=checkpoints.is_primary())
    opened.callback(logger.close)
    return TrainRun(state=state, step_fn=step_fn, partitioner=partitioner, batches=batches,
                    data_position=data_position, checkpointer=checkpointer,
                    last_saved=resume_from, evaluation=evaluation, evaluator=evaluator,
                    logger=logger, closing=opened.pop_all())


def run_loop(run: TrainRun, *, train_steps: int, log_period: int, checkpoint_period: int,
             save_data_iterator: bool = True) -> TrainState:
  """Steps `run` from its state's step to `train_steps`; returns the final state.

  Logs every `log_period` steps; saves every `checkpoint_period` steps, at the end, at each
  evaluation (`run.evaluation`'s period) and before stopping for SIGTERM/SIGINT (`_StopFlag`,
  then `Interrupted`). A NaN or infinite loss at a logged or saved step raises
  NonFiniteLossError without saving that state."""
  start = int(jax.device_get(run.state.step))
  evaluation = run.evaluation
  with _StopFlag() as flag:
    for step in range(start, train_steps):
      batch = run.partitioner.global_batch(next(run.batches))
      new_state, metrics = run.step_fn(run.state, batch)
      run.data_position += 1
      done = step + 1
      should_log = done % log_period == 0 or done == train_steps
      stop = flag.stop(done)
      should_eval = evaluation.due(done, train_steps)
      should_save = (done % checkpoint_period == 0 or done == train_steps or stop
                     or should_eval)
      if should_log or should_save:
        host = jax.device_get(metrics)
        if not math.isfinite(float(host["loss"])):
          raise NonFiniteLossError(
              f"loss is {float(host['loss'])} at step {done}; stopping without saving this "
              f"state. Last good checkpoint: {run.last_saved or 'none'}")
        run.logger.log(done, host)
      run.state = new_state
      eval_metrics = run.evaluator(run.state.params, done) if should_eval else None
      if should_save:
        run.last_saved = run.checkpointer.save(
            run.state, run.data_position, run.batches if save_data_iterator else None,
            eval_metrics)
      if eval_metrics is not None:
        evaluation.check_metrics(eval_metrics, done)
      if stop:
        raise Interrupted(stop, run.last_saved)
  return run.state


@gin.configurable
def train(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, model_config: Any = gin.REQUIRED,
          registration: Registration | None = None,
          adapters: AdapterSettings = AdapterSettings(),
          optimizer: optax.GradientTransformation | None = None,
          initial_checkpoint_path: str | None = None, adapter_only_checkpoints: bool = True,
          checkpoint_period: int = 1000, keep_checkpoints: int = 3, log_period: int = 50,
          random_seed: int = 0, partitioner: Partitioner | None = None,
          step_config: StepConfig = StepConfig(), gin_config: str = "",
          data_shards: int | None = None, input_threads: int | None = 1,
          mixture_or_task_module: str | Sequence[str] | None = None,
          use_cached_tasks: bool = False,
          skip_damaged_checkpoints: bool = False,
          save_data_iterator: bool = True, restore_data_iterator: bool = True,
          evaluation: EvalSettings = EvalSettings(),
          vocabulary: seqio.Vocabulary = BYTE_VOCAB, pack: bool | str = False) -> TrainState:
  """Trains to `train_steps` (resuming from the latest checkpoint in `model_dir`).

  Multi-process (jax.distributed): every process runs this with the same `model_dir`; each
  reads its shards of the data and writes its shards of the checkpoints; process 0 alone writes
  metrics.jsonl, TensorBoard events and config.gin. SIGTERM/SIGINT: see `_StopFlag`; a NaN loss
  is replicated, so every process stops at the same step.

  Args:
    registration: what registered the data (e.g. `register_offline()`); its `.space` is the
      data's FeatureSpace. Without it, the model has no feature adapters.
    adapters: the method (flix / lora / full) and adapter settings.
    initial_checkpoint_path: base checkpoint; adapters start fresh (B = 0).
    adapter_only_checkpoints: with a base checkpoint and a frozen base, checkpoints hold only
      adapters and reference the base by path.
    data_shards: seqio shards the global batch is read from (see `TrainBatches`); default the
      resumed checkpoint's, else one per process.
    input_threads: tf.data's private threads (see `TrainBatches`); None: TF's default pool
      (more input throughput, for hosts whose cores the accelerator leaves free).
    mixture_or_task_module: T5X's MIXTURE_OR_TASK_MODULE: module name(s) imported first, so
      that they register their seqio tasks (`flix.data.pairs.import_task_modules`).
    use_cached_tasks: T5X's USE_CACHED_TASKS: read seqio's offline cache of the tasks.
    skip_damaged_checkpoints: resume from the newest checkpoint that reads, renaming damaged
      newer ones to `checkpoint_N.damaged` (one process); default: a damaged one is an error.
    save_data_iterator: checkpoints hold the input iterators' state (T5X's save_dataset), so
      a resume costs the same at any step (`flix.training.batches`).
    restore_data_iterator: resume from that state; False (or a checkpoint without it): skip
      the checkpoint's data_position batches through the pipeline (same batches, O(steps)).
    evaluation: in-training evaluation every EVAL_PERIOD steps and the best checkpoint's
      metric (`flix.training.periodic_eval`); every evaluation step also saves a checkpoint.
    vocabulary: T5X's VOCABULARY (`flix.data.vocab`): the model's vocab_size must cover it and
      every task of the mixture must tokenize with it, checked before anything is built.
    pack: PACK: feature-aware packing of the training rows (`flix.data.packing`: examples of
      one feature combination share a row, attending within their segment); recorded in each
      checkpoint's train_state.json, and a resume must keep it (the data stream differs).
      'auto' (the gin runs' default): packed where exact (`resolve_pack`). The library
      default stays False: the study and the demo compare methods at equal examples per step.
  Returns the final TrainState.
  """
  check_settings(train_steps=train_steps, batch_size=batch_size,
                 checkpoint_period=checkpoint_period, log_period=log_period,
                 keep_checkpoints=keep_checkpoints, task_feature_lengths=task_feature_lengths,
                 data_shards=data_shards, input_threads=input_threads)
  evaluation.check()
  check_pack(pack)
  import_task_modules(mixture_or_task_module)
  check_registered(mixture_or_task_name)
  check_run_vocabulary(vocabulary, model_config, mixture_or_task_name)
  with build_run(model_dir=model_dir, mixture_or_task_name=mixture_or_task_name,
                 task_feature_lengths=task_feature_lengths, train_steps=train_steps,
                 batch_size=batch_size, model_config=model_config, registration=registration,
                 adapters=adapters, optimizer=optimizer,
                 initial_checkpoint_path=initial_checkpoint_path,
                 adapter_only_checkpoints=adapter_only_checkpoints,
                 keep_checkpoints=keep_checkpoints, random_seed=random_seed,
                 partitioner=partitioner, step_config=step_config, gin_config=gin_config,
                 data_shards=data_shards, input_threads=input_threads,
                 use_cached_tasks=use_cached_tasks,
                 skip_damaged_checkpoints=skip_damaged_checkpoints,
                 restore_data_iterator=restore_data_iterator, evaluation=evaluation,
                 pack=pack) as run:
    return run_loop(run, train_steps=train_steps, log_period=log_period,
                    checkpoint_period=checkpoint_period, save_data_iterator=save_data_iterator)
