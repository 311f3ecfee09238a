"""The training input's iterator state: a restore continues exactly where the save stopped,
equals skipping the same batches, works on any host split of the data shards, and refuses a
state saved by another pipeline."""

import numpy as np
import pytest

from flix.data.converter import FlixEncDecFeatureConverter
from flix.training.batches import TrainBatches, has_iterator_state


@pytest.fixture
def registration(tiny_registration):
  """tests/gin/tiny_data.gin's benchmark (conftest.py): 24 training examples per pair."""
  return tiny_registration


def make(registration, data_shards=1, batch_size=8, pack=False, **kwargs):
  return TrainBatches(registration.train_mixture, registration.task_feature_lengths, batch_size,
                      FlixEncDecFeatureConverter(registration.space.n_types, pack=pack), seed=7,
                      data_shards=data_shards, **kwargs)


def take(batches, n):
  return [next(batches) for _ in range(n)]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("pack", [False, True])
def test_restore_continues_exactly_and_equals_skipping(registration, tmp_path, pack):
  # 5 batches of 8 from 24 examples per pair: the save falls mid-epoch, with full shuffle
  # buffers and prefetched batches in flight (packed: mid-window, packed rows in the shuffle).
  first = make(registration, pack=pack)
  take(first, 5)
  assert not has_iterator_state(str(tmp_path))
  first.save(str(tmp_path))
  assert has_iterator_state(str(tmp_path))
  expected = take(first, 6)
  assert ("encoder_segment_ids" in expected[0]) == pack
  restored = make(registration, pack=pack)
  restored.restore(str(tmp_path))
  assert_same(take(restored, 6), expected)
  assert_same(take(make(registration, pack=pack, skip=5), 6), expected)
  fresh = take(make(registration, pack=pack), 1)
  assert_same(fresh, take(make(registration, pack=pack), 1))  # Deterministic,
  assert not np.array_equal(fresh[0]["encoder_input_tokens"], expected[0]["encoder_input_tokens"])  # and it moved on.


def test_shard_states_resume_on_another_host_split(registration, tmp_path):
  """Two shards saved by one host are what two hosts (one shard each) would restore."""
  both = make(registration, data_shards=2)
  take(both, 3)
  both.save(str(tmp_path))
  expected = take(both, 2)
  restored = make(registration, data_shards=2)
  restored.restore(str(tmp_path))
  assert_same(take(restored, 2), expected)
  assert sorted(p.name for p in (tmp_path / "data_iterator").iterdir()) == [
      "pipeline.json", "shard_0-of-2.data-00000-of-00001", "shard_0-of-2.index",
      "shard_1-of-2.data-00000-of-00001", "shard_1-of-2.index"]


def test_state_of_another_pipeline_is_refused_by_name(registration, tmp_path):
  saved = make(registration, data_shards=2)
  take(saved, 1)
  saved.save(str(tmp_path))
  with pytest.raises(ValueError, match=r"belongs to another input pipeline: batch_size 8 there, "
                                       r"4 in this run, data_shards 2 there, 1 in this run"):
    make(registration, batch_size=4).restore(str(tmp_path))
  (tmp_path / "data_iterator" / "shard_1-of-2.index").unlink()
  with pytest.raises(ValueError, match=r"no data iterator state for shard 1 of 2 .*"
                                       r"shard_1-of-2.index is missing"):
    make(registration, data_shards=2).restore(str(tmp_path))
  (tmp_path / "data_iterator" / "shard_0-of-2.data-00000-of-00001").write_bytes(b"damaged")
  with pytest.raises(ValueError, match=r"shard_0-of-2 does not read: .*"
                                       r"train.restore_data_iterator = False"):
    make(registration, data_shards=2).restore(str(tmp_path))
