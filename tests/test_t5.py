"""The T5 network with FLix adapters: no-op init, per-example composition, merge, freezing."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flix import merge
from flix.checkpoints import strip_adapters
from flix.config import FlixConfig
from flix.decoding import expand_for_beams
from flix.features import FeatureSpace
from flix.models.t5 import T5
from flix.trainable import freeze_base, trainable_mask
import tiny

TOL = dict(rtol=1e-5, atol=1e-5)


def logits(model, params, ids, enc=None, dec=None):
  if enc is None:
    enc, dec = tiny.batch()
  return tiny.apply(model, nn.unbox(params), enc, dec, None if ids is None else jnp.asarray(ids))


def test_fresh_flix_t5_equals_base_t5_exactly():
  enc, dec = tiny.batch()
  for strategy in ("masked", "gather"):
    model, params = tiny.model_and_params(tiny.flix(strategy=strategy))
    base = T5(model.config, None)
    plain = nn.unbox(params)
    expected = logits(base, strip_adapters(plain), None, enc, dec)
    np.testing.assert_array_equal(logits(model, plain, tiny.MIXED_IDS, enc, dec), expected)


def test_mixed_batch_equals_each_example_alone():
  model, params = tiny.model_and_params(tiny.flix())
  params = tiny.randomize_adapters(params)
  enc, dec = tiny.batch()
  together = logits(model, params, tiny.MIXED_IDS, enc, dec)
  base = logits(T5(model.config, None), strip_adapters(params), None, enc, dec)
  for i in range(len(tiny.MIXED_IDS)):
    alone = logits(model, params, tiny.MIXED_IDS[i:i + 1], enc[i:i + 1], dec[i:i + 1])
    np.testing.assert_allclose(together[i:i + 1], alone, **TOL)
    assert np.abs(together[i] - base[i]).max() > 1e-2, "adapters must change every example"
  # Different combinations really differ (the composition is per example).
  assert np.abs(together[0] - logits(model, params, tiny.MIXED_IDS[[1]], enc[:1], dec[:1])).max() > 1e-2


def test_strategies_agree_on_the_whole_network():
  enc, dec = tiny.batch()
  out = {}
  for strategy in ("masked", "gather", "ragged"):
    model, params = tiny.model_and_params(tiny.flix(strategy=strategy))
    out[strategy] = logits(model, tiny.randomize_adapters(params), tiny.MIXED_IDS, enc, dec)
  np.testing.assert_allclose(out["gather"], out["masked"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["ragged"], out["masked"], rtol=1e-4, atol=1e-4)


def test_merged_combination_equals_adapter_path_and_unmerge_restores():
  flix = tiny.flix(alpha=4.0)
  model, params = tiny.model_and_params(flix)
  params = tiny.randomize_adapters(params, scale=0.2)
  enc, dec = tiny.batch()
  combo = tiny.space().encode({"task": "ordinal", "lang": "de"})
  ids = np.tile(combo, (len(enc), 1))
  merged = merge.merge_params(params, flix, combo)
  assert "lora_a_task" not in merged["encoder"]["layers_0"]["attention"]["query"]
  np.testing.assert_allclose(logits(T5(model.config, None), merged, None, enc, dec),
                             logits(model, params, ids, enc, dec), rtol=1e-4, atol=1e-4)
  layer = params["decoder"]["layers_0"]["mlp"]["wi_0"]
  kernel = merge.merge(layer, flix, combo)
  delta = merge.combination_delta(layer, flix, combo)
  assert np.abs(kernel - layer["kernel"]).max() > 1e-2
  restored = merge.unmerge(kernel, layer, flix, combo)
  ulp = np.finfo(np.float32).eps * (np.abs(layer["kernel"]) + np.abs(delta))
  assert np.all(np.abs(restored - layer["kernel"]) <= ulp)


def test_drop_policy_equals_model_without_that_feature():
  sp = tiny.space()
  flix = tiny.flix()
  model, params = tiny.model_and_params(flix)
  params = tiny.randomize_adapters(params)
  ids = sp.encode_batch([{"task": "currency", "lang": "sw"}, {"task": "cardinal", "lang": "xh"}],
                        unknown="drop")
  np.testing.assert_array_equal(ids, [[2, -1], [0, -1]])
  enc, dec = tiny.batch(size=2)
  task_only = FeatureSpace((sp.type("task"),))
  without_lang = jax.tree_util.tree_map_with_path(lambda p, v: v, params)

  def drop_lang(node):
    if isinstance(node, dict):
      return {k: drop_lang(v) for k, v in node.items() if not k.endswith("_lang")}
    return node

  reference = T5(model.config, FlixConfig(task_only, ranks=flix.rank("task"),
                                          shared_rank=flix.shared_rank))
  np.testing.assert_allclose(logits(model, params, ids, enc, dec),
                             logits(reference, drop_lang(without_lang), ids[:, :1], enc, dec),
                             **TOL)
  with pytest.raises(ValueError, match=r"unknown value 'sw' for feature type 'lang'"):
    sp.encode({"task": "currency", "lang": "sw"})


def test_feature_dropout_keeps_shared_adapter():
  model, params = tiny.model_and_params(tiny.flix())
  params = tiny.randomize_adapters(params)
  enc, dec = tiny.batch()
  out = logits(model, params, np.full((6, 2), -1), enc, dec)  # Every feature dropped.
  base = logits(T5(model.config, None), strip_adapters(params), None, enc, dec)
  assert np.abs(out - base).min(axis=-1).max() > 0, "shared adapter must still contribute"
  assert np.abs(out - base).max() > 1e-2


def test_frozen_base_does_not_change_in_a_training_step():
  model, params = tiny.model_and_params(tiny.flix())
  params = nn.unbox(params)
  enc, dec = tiny.batch()
  targets = jnp.roll(dec, -1, axis=1)

  @jax.jit
  def loss_fn(p):
    lg = model.apply({"params": p}, enc, dec, jnp.asarray(tiny.MIXED_IDS))
    return optax.softmax_cross_entropy_with_integer_labels(lg, targets).mean()

  opt = freeze_base(optax.adam(1e-2), params)

  @jax.jit
  def step(p):  # One program, not one per optimizer op and parameter shape.
    updates, _ = opt.update(jax.grad(loss_fn)(p), opt.init(p), p)
    return optax.apply_updates(p, updates)

  new = step(params)
  mask = trainable_mask(params)
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, new)
  flat_mask = jax.tree_util.tree_leaves_with_path(mask)
  flat_changed = dict(jax.tree_util.tree_leaves_with_path(changed))
  assert any(m for _, m in flat_mask)
  for path, trainable in flat_mask:
    if not trainable:
      assert not flat_changed[path], f"frozen {jax.tree_util.keystr(path)} changed"
  # B starts at 0, so the first step moves B (A's gradient is 0 until B is non-zero).
  assert flat_changed[next(p for p, _ in flat_mask if "lora_b_task" in jax.tree_util.keystr(p))]
  assert loss_fn(new) < loss_fn(params)


def test_every_parameter_has_logical_axis_names():
  for flix in (tiny.flix(), None):
    model, params = tiny.model_and_params(flix)
    leaves = jax.tree_util.tree_leaves_with_path(
        params, is_leaf=lambda v: isinstance(v, nn.Partitioned))
    assert leaves
    for path, leaf in leaves:
      assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)
      assert len(leaf.names) == leaf.value.ndim and all(leaf.names), jax.tree_util.keystr(path)
  q = params["encoder"]["layers_0"]["attention"]["query"]
  assert q["kernel"].names == ("embed", "joined_kv")


def test_t5x_parameter_tree_and_adapter_targets():
  flix = tiny.flix(targets=("*.query", "*.value", "decoder.mlp.wo"))
  model, params = tiny.model_and_params(flix, num_encoder_layers=2, num_decoder_layers=2)
  p = nn.unbox(params)
  assert set(p) == {"token_embedder", "encoder", "decoder"}
  assert set(p["encoder"]) == {"relpos_bias", "layers_0", "layers_1", "encoder_norm"}
  assert set(p["decoder"]["layers_0"]) == {
      "pre_self_attention_layer_norm", "self_attention", "pre_cross_attention_layer_norm",
      "encoder_decoder_attention", "pre_mlp_layer_norm", "mlp"}
  assert p["decoder"]["logits_dense"]["kernel"].shape == (32, 64)
  adapted = {jax.tree_util.keystr(path[:-1]) for path, _ in jax.tree_util.tree_leaves_with_path(p)
             if str(path[-1].key) == "lora_a_task"}
  expected = set()
  for stack, blocks in (("encoder", ("attention",)),
                        ("decoder", ("self_attention", "encoder_decoder_attention"))):
    for i in range(2):
      for block in blocks:
        for proj in ("query", "value"):
          expected.add(f"['{stack}']['layers_{i}']['{block}']['{proj}']")
  expected |= {f"['decoder']['layers_{i}']['mlp']['wo']" for i in range(2)}
  assert adapted == expected


def test_original_t5_variant_relu_tied():
  model, params = tiny.model_and_params(tiny.flix(), mlp_activations=("relu",),
                                        logits_via_embedding=True)
  p = nn.unbox(params)
  assert "logits_dense" not in p["decoder"] and set(p["encoder"]["layers_0"]["mlp"]) == {"wi", "wo"}
  assert "lora_a_task" in p["encoder"]["layers_0"]["mlp"]["wi"]
  enc, dec = tiny.batch()
  out = logits(model, tiny.randomize_adapters(p), tiny.MIXED_IDS, enc, dec)
  assert out.shape == (6, 5, 64) and np.all(np.isfinite(out))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _encode_and_empty_cache(model, params, enc, ids, length):
  encoded = model.apply({"params": params}, enc, ids, method=T5.encode)
  _, state = model.apply({"params": params}, encoded, enc, jnp.zeros((len(enc), length), jnp.int32),
                         ids, decode=True, max_decode_length=length, method=T5.decode,
                         mutable=["cache"])
  return encoded, state


@functools.partial(jax.jit, static_argnums=(0, 6))
def _cached_step(model, params, state, encoded, enc, ids, length, token):
  """Logits `[b, 1, vocab]` of `token` `[b, 1]` at the cache's position, and the next cache."""
  return model.apply({"params": params, **state}, encoded, enc, token, ids, decode=True,
                     max_decode_length=length, method=T5.decode, mutable=["cache"])


def _incremental_logits(model, params, enc, dec, ids):
  """Logits of `dec` fed one position at a time through the KV cache (each step the same
  compiled program)."""
  dec, length = np.asarray(dec), dec.shape[1]
  encoded, state = _encode_and_empty_cache(model, params, enc, ids, length)
  steps = []
  for i in range(length):
    out, state = _cached_step(model, params, state, encoded, enc, ids, length, dec[:, i:i + 1])
    steps.append(np.asarray(out))
  return np.concatenate(steps, axis=1)


def test_cached_decoding_equals_teacher_forcing_with_beam_expanded_ids():
  # Two decoder layers: each layer's cache is its own.
  model, params = tiny.model_and_params(tiny.flix(), num_decoder_layers=2)
  params = tiny.randomize_adapters(params)
  enc, dec = tiny.batch(size=3)
  ids = jnp.asarray(tiny.MIXED_IDS[:3])
  forced = logits(model, params, ids, enc, dec)
  np.testing.assert_allclose(_incremental_logits(model, params, enc, dec, ids), forced, **TOL)
  beams = 2
  expanded = _incremental_logits(model, params, expand_for_beams(enc, beams),
                                 expand_for_beams(dec, beams), expand_for_beams(ids, beams))
  np.testing.assert_allclose(expanded, expand_for_beams(forced, beams), **TOL)
