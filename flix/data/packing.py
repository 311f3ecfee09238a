"""Feature-aware packing: several examples in one row, only examples with the same feature ids.

seqio packs a stream greedily, `max(lengths)` examples at a time
(`seqio.utils.trim_and_pack_dataset`), adding `<feature>_segment_ids` (1, 2, ... per example,
0 on padding) and `<feature>_positions` (each example's own positions). A packed row has one
`feature_ids` row `[n_types]`, so here the stream is first split by feature-id combination
(`tf.data.Dataset.group_by_window`): every window holds `max(lengths)` examples of one
combination (the examples seqio would pack together in one go), is packed by seqio's own
packing and gets that combination's ids (carried through the packing as one more feature, so
the pipeline stays a plain tf.data graph whose iterator can be checkpointed). Rows of one
window come out together, so the packed rows are shuffled (`shuffle_buffer` rows, fixed seed:
the stream stays deterministic, as exact resume needs) to give a batch many combinations again.

Windows are keyed by a 64-bit fingerprint of the ids; every packed row checks that all its
examples carried the same ids, so a fingerprint collision is a loud error, never a mixed row.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from flix.data.vocab import FEATURE_IDS
from flix.features import INACTIVE

SHUFFLE_BUFFER = 1024
SHUFFLE_SEED = 0
# The feature ids' name while they ride through seqio's packing, and their shift to >= 1 there.
_IDS = "packed_feature_ids"
_IDS_SHIFT = 1 - INACTIVE


def combination_key(ids: tf.Tensor) -> tf.Tensor:
  """int64 scalar fingerprint of feature ids int32 `[n_types]` (the grouping key)."""
  return tf.bitcast(tf.fingerprint(ids[None])[0], tf.int64)


def pack_by_features(ds: tf.data.Dataset, lengths: Mapping[str, int], *,
                     shuffle_buffer: int = SHUFFLE_BUFFER, use_custom_ops: bool = False
                     ) -> tf.data.Dataset:
  """Packed rows of `ds`, each holding examples of one feature-id combination.

  ds: examples with `feature_ids` `[n_types]` and the token features `lengths` names (plus the
    ids' own length, which is ignored). Returns rows with every feature of `lengths` at its
    length, `<feature>_segment_ids` and `<feature>_positions` as seqio packs them, and the
    row's `feature_ids` `[n_types]`.
  shuffle_buffer: packed rows shuffled together (0: windows' rows stay consecutive).
  """
  if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
    raise ValueError(f"shuffle_buffer must be an int >= 0, got {shuffle_buffer!r}")
  token_lengths = {k: v for k, v in lengths.items() if k != FEATURE_IDS}
  if not token_lengths:
    raise ValueError(f"nothing to pack: lengths {dict(lengths)} name only {FEATURE_IDS!r}")

  n_types = _n_types(ds, lengths)
  window_size = max(token_lengths.values())
  # The window's ids ride through seqio's packing as one more feature, `n_types` values per
  # example (room for a whole window), and are read back from the packed row: reading them
  # from the window itself (get_single_element) would make the pipeline's iterator
  # impossible to checkpoint.
  carried = {**token_lengths, _IDS: max(n_types, 1) * window_size}

  def with_ids(ex):
    # Shifted to >= 1: seqio's packing takes zeros for padding, and 0 is a real feature id.
    ids = ex[FEATURE_IDS] + _IDS_SHIFT if n_types else tf.ones([1], tf.int32)
    check = tf.debugging.assert_greater_equal(
        ex[FEATURE_IDS], INACTIVE, message=f"feature ids below INACTIVE ({INACTIVE})")
    with tf.control_dependencies([check]):
      return {**{k: ex[k] for k in token_lengths}, _IDS: tf.identity(ids)}

  def ids_of_row(row):
    rest = {k: v for k, v in row.items() if not k.startswith(_IDS)}
    if not n_types:
      return {**rest, FEATURE_IDS: tf.zeros([0], tf.int32)}
    n_examples = tf.reduce_max(row[f"{_IDS}_segment_ids"])
    per_example = tf.reshape(row[_IDS][:n_examples * n_types], [n_examples, n_types])
    check = tf.debugging.assert_equal(
        per_example, tf.tile(per_example[:1], [n_examples, 1]),
        message="two feature-id combinations share a packing window (a fingerprint "
        "collision): packing would mix their examples")
    with tf.control_dependencies([check]):
      return {**rest, FEATURE_IDS: per_example[0] - _IDS_SHIFT}

  def pack_window(_, window: tf.data.Dataset) -> tf.data.Dataset:
    packed = seqio.utils.trim_and_pack_dataset(window.map(with_ids), carried, use_custom_ops)
    return packed.map(ids_of_row)

  ds = ds.group_by_window(lambda ex: combination_key(ex[FEATURE_IDS]), pack_window,
                          window_size=window_size)
  if shuffle_buffer:
    ds = ds.shuffle(shuffle_buffer, seed=SHUFFLE_SEED)
  return ds


def _n_types(ds: tf.data.Dataset, lengths: Mapping[str, int]) -> int:
  """The static length of the examples' feature ids: `lengths[FEATURE_IDS]` (the converters
  pass it) or the dataset's static shape."""
  if FEATURE_IDS in lengths:
    return int(lengths[FEATURE_IDS])
  shape = ds.element_spec[FEATURE_IDS].shape
  if shape.rank != 1 or shape[0] is None:
    raise ValueError(f"packing needs the length of {FEATURE_IDS!r}: give it in lengths or as "
                     f"the dataset's static shape (got shape {shape})")
  return int(shape[0])
