"""The training input: this host's rows of every global batch, resumable in constant time.

`TrainBatches` reads a seqio mixture as `data_shards` shards (T5X-style per-host shards) and
yields numpy batches. Each shard is its own tf.data iterator, and its state (shuffle buffers,
mixture sampling, prefetched batches) is saved next to a checkpoint with `tf.train.Checkpoint`,
as T5X does with `save_dataset`:

    data_iterator/pipeline.json                                    what the state belongs to
    data_iterator/shard_<i>-of-<n>.index, .data-00000-of-00001     one per data shard

so a resume restores the iterators where they stopped instead of replaying `data_position`
batches through the pipeline (O(1) instead of O(steps); `python -m experiments.bench resume` measures
both). Shard files do not depend on the number of processes: a checkpoint resumes on any host
count dividing its data_shards, each host restoring the shards it reads. A checkpoint without
the directory (older flix, or `train.save_data_iterator=False`) resumes by skipping
`data_position` batches, which gives the same batches, slower.
"""

from __future__ import annotations

import json
import os
from typing import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf

from flix.data.pairs import check_registered

DATA_ITERATOR = "data_iterator"
PIPELINE_JSON = "pipeline.json"


def check_data_shards(batch_size: int, data_shards: int, resumed: str | None = None) -> None:
  """data_shards must be a multiple of the process count and divide the batch."""
  hosts = jax.process_count()
  if data_shards < 1 or data_shards % hosts:
    source = f" (the data_shards of the resumed {resumed})" if resumed else ""
    raise ValueError(f"data_shards {data_shards}{source} is not a multiple of the {hosts} "
                     "processes")
  if batch_size % data_shards:
    raise ValueError(f"BATCH_SIZE {batch_size} is not divisible by data_shards {data_shards}")


def shard_prefix(directory: str, shard: int, data_shards: int) -> str:
  """The tf.train.Checkpoint prefix of `shard`'s iterator state in checkpoint `directory`."""
  return os.path.join(directory, DATA_ITERATOR, f"shard_{shard}-of-{data_shards}")


def has_iterator_state(directory: str) -> bool:
  return os.path.isdir(os.path.join(directory, DATA_ITERATOR))


class TrainBatches(Iterator[dict]):
  """Endless numpy batches of this host's rows: `batch_size / data_shards` rows per shard,
  its shards concatenated in shard order (the rows its devices hold on the 'data' axis).

  Host h reads shards h*k .. (h+1)*k - 1 (k = data_shards / hosts), `seqio.ShardInfo(i,
  data_shards)`. Shard i shuffles and mixes with seed `seed + i`, so the shards' task draws are
  independent (T5X gives every host the same seed, which repeats one task sequence in every
  shard). seqio splits a source of at least data_shards files by files; otherwise (the in-memory
  offline benchmark) every shard lists the source and keeps every data_shards-th example.
  The batches depend on `data_shards`, not on the host count: a 1-process run with
  data_shards = 2 trains on exactly a 2-process run's batches (tests/test_multihost.py).

  tf.data runs on `input_threads` private threads per shard (None: TF's default pool) and
  prefetches two batches: on a 2-core CPU host, tf.data's default thread pool competes with
  XLA:CPU for the cores (measured: one thread took a small T5's LoRA steps from 2.0 to 3.4 per
  second). `use_cached`: read seqio's offline cache of the tasks (T5X's USE_CACHED_TASKS).
  `skip`: batches to drop first (the resume path of checkpoints without iterator state).
  """

  def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
               batch_size: int, converter: seqio.FeatureConverter, seed: int, *,
               skip: int = 0, data_shards: int | None = None, input_threads: int | None = 1,
               use_cached: bool = False):
    check_registered(mixture_or_task_name)
    hosts, host = jax.process_count(), jax.process_index()
    self.data_shards = data_shards or hosts
    check_data_shards(batch_size, self.data_shards)
    per_host = self.data_shards // hosts
    self.pipeline = {"mixture_or_task_name": mixture_or_task_name,
                     "task_feature_lengths": dict(task_feature_lengths),
                     "batch_size": batch_size, "data_shards": self.data_shards, "seed": seed,
                     "feature_converter": type(converter).__name__,
                     "pack": bool(getattr(converter, "pack", False))}
    self.shards = list(range(host * per_host, (host + 1) * per_host))

    def shard(index: int) -> tf.data.Dataset:
      ds = seqio.get_dataset(
          mixture_or_task_name, dict(task_feature_lengths), dataset_split="train",
          shuffle=True, num_epochs=None, seed=seed + index, use_cached=use_cached,
          shard_info=seqio.ShardInfo(index, self.data_shards), feature_converter=converter)
      ds = ds.batch(batch_size // self.data_shards, drop_remainder=True).skip(skip)
      if input_threads is not None:
        options = tf.data.Options()
        options.threading.private_threadpool_size = input_threads
        ds = ds.with_options(options)
      return ds.prefetch(2)

    self._iterators = [iter(shard(i)) for i in self.shards]

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [{k: v.numpy() for k, v in next(it).items()} for it in self._iterators]
    if len(parts) == 1:
      return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def close(self) -> None:
    """Releases the input pipeline (tf.data's prefetched batches and threads)."""
    self._iterators = []

  def save(self, directory: str) -> None:
    """Writes this host's shard iterators into checkpoint `directory` (every process calls it)."""
    os.makedirs(os.path.join(directory, DATA_ITERATOR), exist_ok=True)
    if 0 in self.shards:
      with open(os.path.join(directory, DATA_ITERATOR, PIPELINE_JSON), "w",
                encoding="utf-8") as f:
        json.dump(self.pipeline, f, indent=2)
    for shard, it in zip(self.shards, self._iterators):
      tf.train.Checkpoint(iterator=it).write(shard_prefix(directory, shard, self.data_shards))

  def restore(self, directory: str) -> None:
    """Continues this host's shards where checkpoint `directory` saved them.

    Raises ValueError naming the checkpoint and the difference when its state belongs to
    another pipeline (mixture, batch size, sequence lengths, shards, seed or converter)."""
    advice = ("To continue by skipping the checkpoint's data_position batches instead, set "
              "train.restore_data_iterator = False")
    with open(os.path.join(directory, DATA_ITERATOR, PIPELINE_JSON), encoding="utf-8") as f:
      saved = json.load(f)
    differ = {k: (saved.get(k), v) for k, v in self.pipeline.items() if saved.get(k) != v}
    if differ:
      raise ValueError(f"the data iterator saved in {directory} belongs to another input "
                       "pipeline: " + ", ".join(f"{k} {a!r} there, {b!r} in this run"
                                                for k, (a, b) in differ.items()) + f". {advice}")
    for shard, it in zip(self.shards, self._iterators):
      prefix = shard_prefix(directory, shard, self.data_shards)
      if not os.path.isfile(prefix + ".index"):
        raise ValueError(f"{directory} has no data iterator state for shard {shard} of "
                         f"{self.data_shards} ({prefix}.index is missing)")
      try:
        tf.train.Checkpoint(iterator=it).read(prefix).assert_consumed()
      except Exception as e:  # tf raises OpError, AssertionError, IndexError, ... by damage.
        raise ValueError(f"the data iterator state {prefix} does not read: "
                         f"{str(e).splitlines()[0]}. {advice}") from None
