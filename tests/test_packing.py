"""Feature-aware packing: packed rows never mix feature combinations, and a packed batch gives
every example the loss (and the params the gradient) it has unpacked, for both families."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from flix.data.converter import (FlixEncDecFeatureConverter, FlixPrefixLMFeatureConverter,
                                 converter_class, feature_converter)
from flix.models.decoder import DecoderLM
from flix.models.model import DecoderOnlyModel, EncoderDecoderModel
from flix.models.t5 import T5
import tiny

COMBOS = ([0, 1], [1, 2], [2, -1])  # (task, lang) ids of tiny.space(); -1: INACTIVE.
LENGTHS = {"inputs": 16, "targets": 12}


def examples(n=12, seed=0):
  """n examples cycling through COMBOS, each target starting with its own token."""
  rng = np.random.RandomState(seed)
  out = []
  for i in range(n):
    inputs = list(rng.randint(3, 60, rng.randint(2, 6))) + [1]
    targets = [3 + i] + list(rng.randint(3, 60, rng.randint(1, 4))) + [1]
    out.append({"inputs": inputs, "targets": targets, "feature_ids": COMBOS[i % len(COMBOS)]})
  return out


@functools.lru_cache(maxsize=None)
def converted(cls, pack: bool):
  """The converter's rows of `examples()` stacked into one batch (numpy)."""
  exs = examples()
  ds = tf.data.Dataset.from_generator(lambda: iter(exs), output_signature={
      k: tf.TensorSpec([None], tf.int32) for k in exs[0]})
  rows = list(cls(2, pack=pack)(ds, LENGTHS).as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def segments_of(batch):
  """(row, bool mask `[length]` of the segment, its target tokens) per example; an unpacked
  row is one segment."""
  seg = batch.get("decoder_segment_ids", (batch["decoder_target_tokens"] > 0).astype(np.int32))
  out = []
  for row in range(seg.shape[0]):
    for s in sorted(set(seg[row].tolist()) - {0}):
      mask = seg[row] == s
      out.append((row, mask, tuple(batch["decoder_target_tokens"][row][mask].tolist())))
  return out


@pytest.mark.parametrize("cls", [FlixEncDecFeatureConverter, FlixPrefixLMFeatureConverter])
def test_packed_rows_hold_one_feature_combination_each(cls):
  packed = converted(cls, True)
  exs = examples()
  prefix = cls is FlixPrefixLMFeatureConverter  # Its target tokens are inputs + targets.
  seen = []
  for row, _, tokens in segments_of(packed):
    i = next(i for i, e in enumerate(exs)
             if tuple((e["inputs"] if prefix else []) + e["targets"]) == tokens)
    seen.append(i)
    assert packed["feature_ids"][row].tolist() == exs[i]["feature_ids"], (row, i)
  assert sorted(seen) == list(range(len(exs)))  # Every example exactly once.
  n_rows = len(packed["feature_ids"])
  assert n_rows < len(exs) and n_rows >= len(COMBOS)  # Packed, one combination per row.
  seg, pos = packed["decoder_segment_ids"], packed["decoder_positions"]
  starts = (seg > 0) & (np.pad(seg, ((0, 0), (1, 0)))[:, :-1] != seg)
  assert np.all(pos[starts] == 0) and np.all(packed["decoder_input_tokens"][starts] == 0)
  unpacked = converted(cls, False)
  assert sorted(map(tuple, unpacked["feature_ids"].tolist())) == sorted(
      tuple(e["feature_ids"]) for e in exs)


@functools.lru_cache(maxsize=None)
def _t5_model():
  model = T5(tiny.t5_config(num_encoder_layers=1, num_decoder_layers=1), tiny.flix())
  return EncoderDecoderModel(model, loss_normalizer=None), tiny.random_params(model, seed=1)


@functools.lru_cache(maxsize=None)
def _decoder_model():
  model = DecoderLM(tiny.decoder_config(num_layers=1), tiny.flix())
  return (DecoderOnlyModel(model, inputs_bidirectional_attention=True, loss_normalizer=None),
          tiny.decoder_random_params(model, seed=1))


@functools.partial(jax.jit, static_argnums=0)
def loss_and_grads(model, params, batch):
  """The model object's summed loss, its gradient w.r.t. params, and each token's loss (its
  gradient w.r.t. the token's loss weight): one forward and backward pass."""
  loss_fn = lambda p, w: model.loss_fn(p, {**batch, "decoder_loss_weights": w}, None)[0]
  weights = batch["decoder_loss_weights"].astype(jnp.float32)
  loss, (grads, token) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, weights)
  return loss, grads, token * weights


@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_packed_batch_gives_the_unpacked_losses_and_gradients(family):
  model, params = {"t5": _t5_model, "decoder": _decoder_model}[family]()
  cls = converter_class(model)  # The data layer picks the family's converter.
  assert cls is {"t5": FlixEncDecFeatureConverter, "decoder": FlixPrefixLMFeatureConverter}[family]
  converter = feature_converter(model, 2, pack=True)
  assert type(converter) is cls and converter.n_types == 2 and converter.pack
  per_example, results = {}, {}
  for pack in (False, True):
    batch = converted(cls, pack)
    loss, grads, token = loss_and_grads(model, params, batch)
    per_example[pack] = {tokens: float(np.asarray(token)[row][mask].sum())
                         for row, mask, tokens in segments_of(batch)}
    results[pack] = (float(loss), grads)
  assert len(batch["feature_ids"]) < len(examples())  # The packed batch has fewer rows.
  keys = sorted(per_example[False])
  assert sorted(per_example[True]) == keys
  unpacked = np.array([per_example[False][k] for k in keys])
  assert unpacked.min() > 1.0  # Real losses, not masked-out zeros.
  np.testing.assert_allclose([per_example[True][k] for k in keys], unpacked, rtol=1e-5)
  np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-5)
  np.testing.assert_allclose(results[False][0], unpacked.sum(), rtol=1e-5)
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
  packed, unpacked = flat(results[True][1]), flat(results[False][1])
  assert np.abs(unpacked).max() > 1e-2
  np.testing.assert_allclose(packed, unpacked, rtol=1e-4, atol=1e-5 * np.abs(unpacked).max())


def test_packing_settings_and_packed_batches_where_unsupported_are_clear_errors():
  with pytest.raises(ValueError, match="pack must be True or False, got 'yes'"):
    FlixEncDecFeatureConverter(2, pack="yes")
  with pytest.raises(ValueError, match="pack_shuffle_buffer must be an int >= 0, got -1"):
    FlixPrefixLMFeatureConverter(2, pack=True, pack_shuffle_buffer=-1)
  model, params = _t5_model()
  with pytest.raises(TypeError, match="no feature converter for T5: expected an "
                                      "EncoderDecoderModel or a DecoderOnlyModel"):
    converter_class(model.module)
  packed = converted(FlixEncDecFeatureConverter, True)
  with pytest.raises(ValueError, match="score_batch takes one example per row, but the batch "
                                       "is packed"):
    model.score_batch(params, packed)
  with pytest.raises(ValueError, match="predict_batch takes one example per row"):
    model.predict_batch(params, packed, None)
  partial = {k: v for k, v in packed.items() if k != "encoder_segment_ids"}
  with pytest.raises(ValueError, match=r"a packed batch needs \['encoder_segment_ids', "
                                       r"'decoder_segment_ids'\], but it has "
                                       r"\['decoder_segment_ids'\] without "
                                       r"\['encoder_segment_ids'\]"):
    model.logits(params, partial, packed["feature_ids"])


def test_pack_auto_packs_where_exact_and_a_resume_keeps_the_checkpoints_choice(tmp_path):
  """PACK 'auto' (the gin runs' default): packed without feature dropout, unpacked with it
  (packed examples would share one dropout draw); a resumed run keeps what it was trained with."""
  from flix.training.loop import AdapterSettings, resolve_pack
  fresh = lambda **kw: resolve_pack("auto", AdapterSettings(**kw), None)[0]
  assert fresh(method="lora") is True
  assert fresh(method="full") is True
  assert fresh(method="flix", feature_dropout=0.0) is True
  assert fresh(method="flix", feature_dropout=0.3) is False
  _, why = resolve_pack("auto", AdapterSettings(method="flix", feature_dropout=0.3), None)
  assert why == ("'auto': FEATURE_DROPOUT 0.3 is drawn per row, so the examples of a packed "
                 "row would share one draw")
  for trained in (True, False):  # A resume follows the checkpoint, whatever 'auto' would pick.
    ckpt = tmp_path / f"checkpoint_{int(trained)}"
    ckpt.mkdir()
    (ckpt / "train_state.json").write_text(
        f'{{"step": 4, "data_position": 4, "pack": {str(trained).lower()}}}')
    for kw in ({"method": "lora"}, {"method": "flix", "feature_dropout": 0.5}):
      assert resolve_pack("auto", AdapterSettings(**kw), str(ckpt)) == (
          trained, f"'auto': as {ckpt} was trained")
  assert resolve_pack(False, AdapterSettings(method="lora"), None) == (False, "as configured")
  assert resolve_pack(True, AdapterSettings(method="flix", feature_dropout=0.3), None)[0] is True
  with pytest.raises(ValueError, match=r"PACK \(train.pack\) must be True, False or 'auto', "
                                       "got 'yes'"):
    resolve_pack("yes", AdapterSettings(), None)


def test_a_fingerprint_collision_is_a_loud_error_not_a_mixed_row(monkeypatch):
  """Two combinations in one packing window (forced: every key equal) stop the pipeline."""
  from flix.data import packing
  monkeypatch.setattr(packing, "combination_key", lambda ids: tf.constant(0, tf.int64))
  exs = examples()
  ds = tf.data.Dataset.from_generator(lambda: iter(exs), output_signature={
      k: tf.TensorSpec([None], tf.int32) for k in exs[0]})
  rows = FlixEncDecFeatureConverter(2, pack=True)(ds, LENGTHS)
  with pytest.raises(tf.errors.InvalidArgumentError, match="two feature-id combinations share "
                                                           "a packing window"):
    list(rows.as_numpy_iterator())
