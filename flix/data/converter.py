"""Feature converters that put per-example feature ids into the model batch, one per family.

Encoder-decoder (`FlixEncDecFeatureConverter`): `encoder_input_tokens` `[batch, inputs_len]`,
`decoder_target_tokens`, `decoder_input_tokens`, `decoder_loss_weights` `[batch, targets_len]`
(as seqio's EncDecFeatureConverter).
Decoder-only (`FlixPrefixLMFeatureConverter`): inputs and targets concatenated, as seqio's
PrefixLMFeatureConverter (T5X's prefix LM): `decoder_target_tokens`, `decoder_input_tokens`
(shifted right, start token 0), `decoder_loss_weights` (targets only),
`decoder_causal_attention` (1 on the prompt: the start token and the inputs with their EOS,
i.e. the positions the model reads before predicting the first target) `[batch, inputs_len +
targets_len]`.
Both add `feature_ids` `[batch, n_types]` int32, one row per example, or with pack=True one per
packed row: rows hold only examples of one feature-id combination (`flix.data.packing`), with
seqio's packing features: `encoder_segment_ids`, `encoder_positions`, `decoder_segment_ids`,
`decoder_positions` (encoder-decoder) or `decoder_segment_ids`, `decoder_positions`
(decoder-only; `decoder_causal_attention` then marks each segment's prompt).

`feature_converter(model, data_n_types)` builds the converter of a model object's family
(`converter_class(model)` is its class); the data layer knows the models, never the reverse.
`data_n_types(task)` reads the length of a task's feature ids, which the converter needs.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from flix.data.packing import SHUFFLE_BUFFER, pack_by_features
from flix.data.pairs import check_registered
from flix.features import FEATURE_IDS
from flix.models.model import BaseModel, DecoderOnlyModel, EncoderDecoderModel

_Spec = seqio.FeatureConverter.FeatureSpec


class _FeatureIdsMixin:
  """What both converters add to seqio's: `n_types`, the `feature_ids` length (defaulted to
  `n_types`, any other value refused), a per-example id-count check and feature-aware packing.

  Comes before the seqio converter in the bases, so `super()` reaches seqio's methods.
  """

  def _init_feature_ids(self, n_types: int, pack: bool, pack_shuffle_buffer: int) -> None:
    if not isinstance(pack, bool):
      raise ValueError(f"pack must be True or False, got {pack!r}")
    if not isinstance(n_types, int) or n_types < 0:
      raise ValueError(f"n_types must be an int >= 0, got {n_types!r}")
    if not isinstance(pack_shuffle_buffer, int) or pack_shuffle_buffer < 0:
      raise ValueError(f"pack_shuffle_buffer must be an int >= 0, got {pack_shuffle_buffer!r}")
    self._n_types = n_types
    self._pack_shuffle_buffer = pack_shuffle_buffer

  @property
  def n_types(self) -> int:
    return self._n_types

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    return super().__call__(ds, _with_ids_length(task_feature_lengths, self._n_types))

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    ds = ds.map(_id_count_check(self._n_types), num_parallel_calls=tf.data.AUTOTUNE)
    return super()._convert_features(ds, task_feature_lengths)

  def _pack_or_pad(self, ds: tf.data.Dataset,
                   packed_lengths: Mapping[str, int]) -> tf.data.Dataset:
    if not self.pack:
      return super()._pack_or_pad(ds, packed_lengths)
    return pack_by_features(ds, packed_lengths, shuffle_buffer=self._pack_shuffle_buffer,
                            use_custom_ops=self._use_custom_packing_ops)


class FlixEncDecFeatureConverter(_FeatureIdsMixin, seqio.EncDecFeatureConverter):
  """EncDecFeatureConverter that also carries `feature_ids` `[n_types]` through to the model.

  `task_feature_lengths` may omit `feature_ids`; it is then `n_types`. Giving another length
  is an error (padding would add id 0, a real feature value). pack=True: feature-aware packing
  (`flix.data.packing`; `pack_shuffle_buffer` packed rows are shuffled together).
  """

  TASK_FEATURES = {**seqio.EncDecFeatureConverter.TASK_FEATURES,
                   FEATURE_IDS: _Spec(dtype=tf.int32)}
  MODEL_FEATURES = {**seqio.EncDecFeatureConverter.MODEL_FEATURES,
                    FEATURE_IDS: _Spec(dtype=tf.int32)}

  def __init__(self, n_types: int, pack: bool = False,
               pack_shuffle_buffer: int = SHUFFLE_BUFFER, **kwargs):
    self._init_feature_ids(n_types, pack, pack_shuffle_buffer)
    super().__init__(pack=pack, **kwargs)

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    d[FEATURE_IDS] = features[FEATURE_IDS]
    return d

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths[FEATURE_IDS] = self._n_types
    return lengths


class FlixPrefixLMFeatureConverter(_FeatureIdsMixin, seqio.PrefixLMFeatureConverter):
  """PrefixLMFeatureConverter (loss on targets only) that also carries `feature_ids`
  `[n_types]` through to the model (as a seqio passthrough feature).

  `task_feature_lengths` may omit `feature_ids`; it is then `n_types`. Giving another length
  is an error (padding would add id 0, a real feature value). pack=True: feature-aware packing
  (`flix.data.packing`; `pack_shuffle_buffer` packed rows are shuffled together).
  """

  def __init__(self, n_types: int, pack: bool = False, loss_on_targets_only: bool = True,
               pack_shuffle_buffer: int = SHUFFLE_BUFFER, **kwargs):
    self._init_feature_ids(n_types, pack, pack_shuffle_buffer)
    super().__init__(loss_on_targets_only=loss_on_targets_only, pack=False,
                     passthrough_features={FEATURE_IDS: _Spec(dtype=tf.int32)}, **kwargs)
    # seqio refuses pass-through features with packing, since its packing would concatenate
    # them; `_pack_or_pad` packs around the ids instead, so packing is switched on afterwards.
    self._pack = pack

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    return super().get_model_feature_lengths(_with_ids_length(task_feature_lengths,
                                                              self._n_types))


def converter_class(model: BaseModel) -> type[seqio.FeatureConverter]:
  """The feature converter class of `model`'s family: FlixEncDecFeatureConverter for an
  EncoderDecoderModel, FlixPrefixLMFeatureConverter for a DecoderOnlyModel."""
  if isinstance(model, EncoderDecoderModel):
    return FlixEncDecFeatureConverter
  if isinstance(model, DecoderOnlyModel):
    return FlixPrefixLMFeatureConverter
  raise TypeError(f"no feature converter for {type(model).__name__}: expected an "
                  "EncoderDecoderModel or a DecoderOnlyModel (flix.models.model)")


def feature_converter(model: BaseModel, data_n_types: int, **kwargs) -> seqio.FeatureConverter:
  """The seqio feature converter for `model`'s family; `data_n_types` is the length of the
  data's `feature_ids` (the data's feature space, also for a LoRA model that ignores them).
  kwargs: the converter's (pack, pack_shuffle_buffer, apply_length_check, ...)."""
  return converter_class(model)(data_n_types, **kwargs)


def data_n_types(task_or_name: seqio.Task | str, use_cached: bool = False, *,
                 split: str = "train") -> int:
  """The length of the data's `feature_ids` (`[n_types]` per example), read from the
  element spec of `split` of a Task, or of a mixture's first task; 0 when its examples carry
  none (a user's task for a LoRA or full run). Raises ValueError if the length is not static."""
  task = task_or_name
  if isinstance(task, str):
    check_registered(task)
    task = seqio.get_subtasks(seqio.get_mixture_or_task(task))[0]
  spec = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                          use_cached=use_cached).element_spec
  ids = spec.get(FEATURE_IDS)
  if ids is None:
    return 0
  if ids.shape.rank != 1 or ids.shape[0] is None:
    raise ValueError(f"task {task.name!r}: {FEATURE_IDS} has no static length (shape "
                     f"{ids.shape}); expected [n_types], one id per feature type")
  return int(ids.shape[0])


def _with_ids_length(task_feature_lengths: Mapping[str, int], n_types: int) -> dict[str, int]:
  lengths = dict(task_feature_lengths)
  lengths.setdefault(FEATURE_IDS, n_types)
  if lengths[FEATURE_IDS] != n_types:
    raise ValueError(
        f"task_feature_lengths[{FEATURE_IDS!r}] is {lengths[FEATURE_IDS]}, expected "
        f"n_types={n_types} (one id per feature type)")
  return lengths


def _id_count_check(n_types: int):
  def check(ex):
    tf.debugging.assert_equal(
        tf.size(ex[FEATURE_IDS]), n_types,
        message=f"an example's {FEATURE_IDS} has the wrong number of ids; expected "
        f"n_types={n_types} (was the task registered with another FeatureSpace?)")
    return ex
  return check
