"""Packed rows (`flix.data.packing`): attention stays within an example's segment.

A packed batch carries seqio's segment ids int `[b, n]` (1, 2, ... per example of a row, 0 on
padding) and positions (each example's own positions). As in T5X, a query attends only to keys
of its own segment; everything else (causality, padding, prefixes) is masked as in an unpacked
row. Unpacked batches have no segment ids and keep the models' unpacked masks.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ENCODER_SEGMENT_IDS = "encoder_segment_ids"
DECODER_SEGMENT_IDS = "decoder_segment_ids"
DECODER_POSITIONS = "decoder_positions"


def same_segment(q_segments: jax.Array, k_segments: jax.Array) -> jax.Array:
  """bool `[b, 1, q, k]`: query and key in the same segment (q_segments `[b, q]`,
  k_segments `[b, k]`); flax's attention-mask builder with equality, as T5X uses it."""
  return nn.make_attention_mask(q_segments, k_segments, jnp.equal, dtype=bool)


def is_packed(batch: Mapping) -> bool:
  """Whether `batch` holds packed rows (it has decoder segment ids)."""
  return DECODER_SEGMENT_IDS in batch


def packed_features(batch: Mapping, keys: Sequence[str]) -> dict:
  """{key: batch[key]} for a packed batch (every key required), {} for an unpacked one (none
  allowed): a partly packed batch is an error naming what is missing."""
  present = [k for k in keys if k in batch]
  if present and len(present) < len(keys):
    missing = [k for k in keys if k not in batch]
    raise ValueError(f"a packed batch needs {list(keys)}, but it has {present} without "
                     f"{missing} (features: {sorted(batch)})")
  return {k: batch[k] for k in present}


def refuse_packed(batch: Mapping, what: str) -> None:
  """Raises for a packed batch: `what` (decoding, scoring) reads one example per row."""
  if is_packed(batch):
    raise ValueError(f"{what} takes one example per row, but the batch is packed (it has "
                     f"{DECODER_SEGMENT_IDS!r}); build it with pack=False")
