"""Feature-aware packing: several examples in one row, only examples with the same feature ids.

seqio packs a stream greedily, `max(lengths)` examples at a time
(`seqio.utils.trim_and_pack_dataset`), adding `<feature>_segment_ids` (1, 2, ... per example,
0 on padding) and `<feature>_positions` (each example's own positions). A packed row has one
`feature_ids` row `[n_types]`, so here the stream is first split by feature-id combination
(`tf.data.Dataset.group_by_window`): every window holds `max(lengths)` examples of one
combination (the examples seqio would pack together in one go), is packed by seqio's own
packing and gets that combination's ids. Rows of one window come out together, so the packed
rows are shuffled (`shuffle_buffer` rows, fixed seed: the stream stays deterministic, as exact
resume needs) to give a batch many combinations again.

Windows are keyed by a 64-bit fingerprint of the ids; every example is checked against its
window's ids, so a fingerprint collision is a loud error, never a mixed row.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from flix.data.vocab import FEATURE_IDS

SHUFFLE_BUFFER = 1024
SHUFFLE_SEED = 0


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

  def pack_window(_, window: tf.data.Dataset) -> tf.data.Dataset:
    ids = window.take(1).get_single_element()[FEATURE_IDS]

    def tokens_only(ex):
      check = tf.debugging.assert_equal(
          ex[FEATURE_IDS], ids, message="two feature-id combinations share a packing window "
          "(a fingerprint collision): packing would mix their examples")
      with tf.control_dependencies([check]):
        return {k: tf.identity(ex[k]) for k in token_lengths}

    packed = seqio.utils.trim_and_pack_dataset(window.map(tokens_only), token_lengths,
                                               use_custom_ops)
    return packed.map(lambda row: {**row, FEATURE_IDS: ids})

  ds = ds.group_by_window(lambda ex: combination_key(ex[FEATURE_IDS]), pack_window,
                          window_size=max(token_lengths.values()))
  if shuffle_buffer:
    ds = ds.shuffle(shuffle_buffer, seed=SHUFFLE_SEED)
  return ds
