"""The byte-level vocabulary and the output features every flix task shares.

ByteVocabulary (ByT5): 0 PAD, 1 EOS, 2 UNK, UTF-8 byte b -> id b + 3; it needs no files.
`feature_ids` is a real output feature: int32 `[n_types]` per example, one id per feature type
of the `FeatureSpace` (INACTIVE = -1 for a type that contributes nothing), never given an EOS.
"""

from __future__ import annotations

import seqio

BYTE_VOCAB = seqio.ByteVocabulary()
FEATURE_IDS = "feature_ids"


def text_features(vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> dict[str, seqio.Feature]:
  """`inputs` and `targets` (int32 token ids `[length]`, EOS appended after trimming)."""
  return {"inputs": seqio.Feature(vocabulary, add_eos=True, dtype="int32"),
          "targets": seqio.Feature(vocabulary, add_eos=True, dtype="int32")}


def pair_output_features(n_types: int,
                         vocabulary: seqio.Vocabulary = BYTE_VOCAB) -> dict[str, seqio.Feature]:
  """Text features plus `feature_ids` (int32 `[n_types]`, no EOS)."""
  if not isinstance(n_types, int) or n_types < 0:
    raise ValueError(f"n_types must be an int >= 0, got {n_types!r}")
  features = text_features(vocabulary)
  # The vocabulary size only bounds what a decoder of these ids could see; ids are never decoded.
  features[FEATURE_IDS] = seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False,
                                        dtype="int32", required=True)
  return features
