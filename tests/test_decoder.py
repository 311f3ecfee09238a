"""The decoder-only network and model object: no-op init, per-example composition, merge,
targets, KV-cache decoding (greedy / beam / sampling, prompts of any length), the prefix-LM
converter, checkpoints' model family."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from flix import checkpoints, decoding, merge
from flix.config import FlixConfig
from flix.data.converter import FlixPrefixLMFeatureConverter
from flix.models import families
from flix.models.decoder import DecoderConfig, DecoderLM, init_params
from flix.models.model import DecoderOnlyModel, make_model
from flix.models.t5 import T5Config
import tiny

TOL = dict(rtol=1e-5, atol=1e-5)
# Qwen2-style biases, so that the bias path is covered by every property below.
CONFIG = tiny.decoder_config(qkv_bias=True)


def tokens(seed=0, size=6, length=9):
  return jnp.asarray(np.random.RandomState(seed).randint(3, 64, (size, length)), jnp.int32)


@functools.lru_cache(maxsize=None)
def flix_model(strategy="auto"):
  model = DecoderLM(CONFIG, tiny.flix(strategy=strategy))
  return model, tiny.decoder_random_params(model)


def logits(model, params, ids, toks):
  return np.asarray(tiny.lm_apply(model, params, toks, None if ids is None else jnp.asarray(ids)))


# -- config and families -----------------------------------------------------------------------
def test_config_json_round_trip_and_errors():
  config = tiny.decoder_config(rope_type="llama3", rope_factor=8.0, sliding_window=3,
                               norm_scale_plus_one=True, mlp_activation="gelu_tanh")
  assert DecoderConfig.from_json(config.to_json()) == config
  assert families.config_from_json(families.config_to_json(config)) == config
  assert json.loads(families.config_to_json(config))["family"] == "decoder"
  t5 = tiny.t5_config()
  assert families.config_from_json(t5.to_json()) == t5  # Old model.json: no "family", a T5.
  for bad, message in [(dict(num_kv_heads=3), "num_heads 4 is not a multiple of num_kv_heads 3"),
                       (dict(mlp_activation="relu"), "unsupported mlp_activation 'relu'"),
                       (dict(rope_factor=2.0), "needs rope_type 'linear' or 'llama3'"),
                       (dict(head_dim=7), "head_dim must be even")]:
    with pytest.raises(ValueError, match=message):
      tiny.decoder_config(**bad)
  with pytest.raises(ValueError, match="unknown model family 'rnn'"):
    families.config_from_json('{"family": "rnn"}')


def test_checkpoint_records_the_family_and_old_t5_checkpoints_load(tmp_path):
  model = DecoderLM(CONFIG)
  params = tiny.decoder_random_params(model)
  path = checkpoints.save_model(str(tmp_path / "dec"), params, CONFIG)
  assert json.loads((tmp_path / "dec" / "model.json").read_text())["family"] == "decoder"
  config, flix, loaded = checkpoints.load_model(path)
  assert config == CONFIG and flix is None
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))
  # A T5 checkpoint written before model.json had a "family" key.
  t5_path = tmp_path / "t5"
  t5_config = tiny.t5_config()
  checkpoints.save_model(str(t5_path), {"token_embedder": {"embedding": np.ones((64, 32))}},
                         t5_config)
  (t5_path / "model.json").write_text(t5_config.to_json())
  assert checkpoints.load_model(str(t5_path))[0] == t5_config


# -- the network ---------------------------------------------------------------------------------
def test_parameter_tree_and_logical_axes():
  model = DecoderLM(tiny.decoder_config(qkv_bias=True, logits_via_embedding=True, num_layers=2),
                    tiny.flix())
  boxed = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
  specs = jax.tree.map(tuple, nn.get_partition_spec(boxed),
                       is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  attention = specs["layers_1"]["attention"]
  assert attention["key"]["kernel"] == ("embed", "joined_kv")
  assert attention["query"]["bias"] == ("joined_kv",)
  assert attention["out"]["lora_a_task"] == ("flix_feature", "flix_rank", "joined_kv")
  assert specs["layers_0"]["mlp"]["wo"]["kernel"] == ("mlp", "embed")
  assert specs["token_embedder"]["embedding"] == ("vocab", "embed")
  shapes = nn.unbox(boxed)
  assert shapes["layers_0"]["attention"]["key"]["kernel"].shape == (32, 2 * 8)  # 2 kv heads.
  assert shapes["layers_0"]["attention"]["query"]["kernel"].shape == (32, 4 * 8)
  assert "logits_dense" not in shapes and set(shapes) == {
      "token_embedder", "layers_0", "layers_1", "decoder_norm"}


def test_flix_model_with_zero_b_equals_base_exactly():
  """Adapters start with B = 0 (FlixDense's init): then every example computes the base model
  exactly, whatever its features and A."""
  model, params = flix_model()
  zero_b = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if str(p[-1].key).startswith("lora_b") else v, params)
  toks = tokens()
  base = logits(DecoderLM(CONFIG), checkpoints.strip_adapters(params), None, toks)
  np.testing.assert_array_equal(logits(model, zero_b, tiny.MIXED_IDS, toks), base)


def test_mixed_batch_equals_each_example_alone():
  model, params = flix_model()
  toks = tokens()
  together = logits(model, params, tiny.MIXED_IDS, toks)
  base = logits(DecoderLM(CONFIG), checkpoints.strip_adapters(params), None, toks)
  for i in range(len(tiny.MIXED_IDS)):
    alone = logits(model, params, tiny.MIXED_IDS[i:i + 1], toks[i:i + 1])
    np.testing.assert_allclose(together[i:i + 1], alone, **TOL)
    assert np.abs(together[i] - base[i]).max() > 1e-2, "adapters must change every example"
  gather = logits(flix_model("gather")[0], params, tiny.MIXED_IDS, toks)
  np.testing.assert_allclose(gather, together, rtol=1e-4, atol=1e-4)


def test_merged_weights_equal_the_adapter_path_and_unmerge_restores():
  model, params = flix_model()
  toks = tokens()
  flix = model.flix
  for combo in ([1, 2], [2, -1], [-1, -1]):
    ids = np.tile(np.asarray(combo, np.int32), (len(toks), 1))
    merged = merge.merge_params(params, flix, combo)
    assert "bias" in merged["layers_0"]["attention"]["query"]  # Kept beside the merged kernel.
    np.testing.assert_allclose(logits(DecoderLM(CONFIG), merged, None, toks),
                               logits(model, params, ids, toks), rtol=1e-4, atol=1e-4)
  layer = params["layers_0"]["mlp"]["wo"]
  merged_kernel = merge.merge(layer, flix, [0, 3])
  assert np.abs(merged_kernel - layer["kernel"]).max() > 1e-2
  np.testing.assert_allclose(merge.unmerge(merged_kernel, layer, flix, [0, 3]), layer["kernel"],
                             atol=1e-5)


def test_targets_name_the_projections_and_a_bad_pattern_is_refused():
  assert DecoderLM.projection_names(CONFIG) == (
      "attention.query", "attention.key", "attention.value", "attention.out", "mlp.wi_0",
      "mlp.wi_1", "mlp.wo")
  model = DecoderLM(CONFIG, tiny.flix(targets=("attention.query", "mlp.wo")))
  shapes = nn.unbox(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
  adapted = sorted(f"{b}.{p}" for b in ("attention", "mlp") for p, leaf in
                   shapes["layers_0"][b].items() if "lora_a_task" in leaf)
  assert adapted == ["attention.query", "mlp.wo"]
  with pytest.raises(ValueError, match=r"target pattern '\*.q_proj' matches no projection.*"
                                       r"'attention.query'"):
    make_model(CONFIG, tiny.flix(targets=("*.q_proj",)))


def test_feature_ids_of_the_wrong_shape_are_refused():
  model, params = flix_model()
  with pytest.raises(ValueError, match=r"feature_ids must have shape \[batch=6, n_types=2\], "
                                       r"got \(6, 3\)"):
    model.apply({"params": params}, tokens(), jnp.zeros((6, 3), jnp.int32))
  with pytest.raises(ValueError, match="feature id 4 in column 0"):
    model.apply({"params": params}, tokens(), jnp.asarray([[4, 0]] * 6, jnp.int32))


# -- decoding ------------------------------------------------------------------------------------
PROMPT_LENGTHS = np.array([5, 2, 1, 4, 5, 3], np.int32)
NEW = 6


def prompts():
  toks = np.asarray(tokens(seed=3, length=5))
  return np.where(np.arange(5)[None] < PROMPT_LENGTHS[:, None], toks, 0).astype(np.int32)


@functools.partial(jax.jit, static_argnums=0)
def forced(model, params, toks, ids, prefix):
  """Teacher-forced logits `[1, L, vocab]` of one fixed-length (right-padded) row."""
  return model.apply({"params": params}, toks, ids, prefix=prefix)


def greedy_alone(model, params, prompt, ids, length, prefix=False):
  """Argmax continuation of one prompt by re-running the full teacher-forced model (one
  fixed-length buffer: causal attention never reads the padding after a position)."""
  width = 5 + NEW
  buf = np.zeros((1, width), np.int32)
  buf[0, :len(prompt)] = prompt
  mask = jnp.asarray(np.arange(width)[None] < len(prompt)) if prefix else None
  ids = None if ids is None else jnp.asarray(np.asarray(ids)[None])
  for n in range(len(prompt), len(prompt) + length):
    out = forced(model, params, jnp.asarray(buf), ids, mask)
    if n < width:
      buf[0, n] = int(np.argmax(out[0, n - 1]))
  return list(buf[0, len(prompt):len(prompt) + length])


def test_cached_greedy_equals_teacher_forced_argmax():
  """Prompts of lengths 1..5 prefilled left-padded, then cached steps: each row continues as
  the full model run on that row alone. Multi-query attention, a sliding window shorter than
  prompt + continuation, Gemma's norms and embedding scale, tied logits; causal and T5X's
  bidirectional prompt. Beam search with one beam equals greedy."""
  config = tiny.decoder_config(num_kv_heads=1, sliding_window=3, logits_via_embedding=True,
                               scale_embeddings=True, norm_scale_plus_one=True)
  model = DecoderLM(config, tiny.flix())
  params = tiny.decoder_random_params(model, seed=1)
  greedy = decoding.DecodeOptions(NEW, eos_id=-1)
  for prefix in (True, False):
    obj = DecoderOnlyModel(model, inputs_bidirectional_attention=prefix)
    result = obj.decode(params, prompts(), PROMPT_LENGTHS, tiny.MIXED_IDS, options=greedy)
    got = np.asarray(result.tokens)
    assert got.shape == (6, NEW)
    for i, n in enumerate(PROMPT_LENGTHS):
      expected = greedy_alone(model, params, prompts()[i, :n], tiny.MIXED_IDS[i], NEW, prefix)
      assert list(got[i]) == expected, (prefix, i)
  # One beam follows greedy's path (EOS off: see tests/test_decoding.py).
  one_beam = decoding.DecodeOptions(NEW, eos_id=-1, method="beam", num_beams=1, alpha=0.0)
  beam = obj.decode(params, prompts(), PROMPT_LENGTHS, tiny.MIXED_IDS, options=one_beam)
  np.testing.assert_array_equal(beam.tokens, result.tokens)
  np.testing.assert_allclose(beam.scores, result.scores, **TOL)


@functools.lru_cache(maxsize=None)
def lm_object():
  model, params = flix_model()
  # Scaled-up EOS logits: some rows stop early, others run to max_length.
  kernel = params["logits_dense"]["kernel"]
  params = {**params, "logits_dense": {"kernel": kernel.at[:, decoding.EOS_ID].multiply(3.0)}}
  batch = {"decoder_input_tokens": np.pad(prompts(), ((0, 0), (0, 3))),
           "decoder_causal_attention": (np.arange(8)[None] < PROMPT_LENGTHS[:, None]).astype(
               np.int32),
           "feature_ids": tiny.MIXED_IDS}
  return DecoderOnlyModel(model), params, batch


def test_predict_batch_greedy_beam_and_sampling_keep_each_examples_features():
  obj, params, batch = lm_object()
  greedy = np.asarray(obj.predict_batch(params, batch, decoding.DecodeOptions(NEW)).tokens)
  has_eos = (greedy == decoding.EOS_ID).any(-1)
  assert 0 < has_eos.sum() < len(greedy), "the check needs rows with and without EOS"
  beam = decoding.DecodeOptions(NEW, method="beam", num_beams=3, num_samples=2)
  together = obj.predict_batch(params, batch, beam)
  assert together.tokens.shape == (6, 2, NEW) and together.scores.shape == (6, 2)
  for i in (0, 3):  # Beams expand each example's prompt cache and ids with it.
    alone_batch = {k: np.repeat(v[i:i + 1], len(v), axis=0) for k, v in batch.items()}
    alone = obj.predict_batch(params, alone_batch, beam)  # Row i alone (same shapes).
    np.testing.assert_array_equal(alone.tokens[0], together.tokens[i])
    np.testing.assert_allclose(alone.scores[0], together.scores[i], **TOL)
    row = greedy_alone(obj.module, params, batch["decoder_input_tokens"][i, :PROMPT_LENGTHS[i]],
                       batch["feature_ids"][i], NEW)
    stop = row.index(decoding.EOS_ID) + 1 if decoding.EOS_ID in row else NEW
    assert list(greedy[i, :stop]) == row[:stop] and not greedy[i, stop:].any()
  sample = decoding.DecodeOptions(NEW, method="sample", num_samples=3, top_k=5)
  a = obj.predict_batch(params, batch, sample, jax.random.key(1))
  b = obj.predict_batch(params, batch, sample, jax.random.key(1))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert a.tokens.shape == (6, 3, NEW) and len({tuple(r) for r in np.asarray(a.tokens[0])}) > 1


def test_greedy_scores_are_the_teacher_forced_log_probs():
  obj, params, batch = lm_object()
  result = obj.predict_batch(params, batch, decoding.DecodeOptions(NEW))
  for i in (0, 2):
    n = PROMPT_LENGTHS[i]
    row = np.asarray(result.tokens[i])
    stop = int(np.argmax(row == decoding.EOS_ID)) + 1 if (row == decoding.EOS_ID).any() else NEW
    seq = np.zeros((1, 5 + NEW), np.int32)
    seq[0, :n + stop] = np.concatenate([batch["decoder_input_tokens"][i, :n], row[:stop]])
    out = forced(obj.module, params, jnp.asarray(seq), jnp.asarray(batch["feature_ids"][i:i + 1]),
                 None)
    logp = np.asarray(jax.nn.log_softmax(out[0, n - 1:n - 1 + stop]))
    expected = float(np.sum(np.take_along_axis(logp, row[:stop, None], 1)))
    assert float(result.scores[i]) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_decode_argument_errors():
  obj, params, batch = lm_object()
  with pytest.raises(ValueError, match=r"prompt_lengths\[1\] is 0: expected 1\.\.8"):
    obj.decode(params, batch["decoder_input_tokens"], [3, 0, 1, 1, 1, 1], tiny.MIXED_IDS,
               options=decoding.DecodeOptions(2))
  with pytest.raises(ValueError, match="feature_ids has 5 rows but the batch has 6 examples"):
    obj.decode(params, batch["decoder_input_tokens"], None, tiny.MIXED_IDS[:5],
               options=decoding.DecodeOptions(2))


# -- data ------------------------------------------------------------------------------------------
def convert(examples, lengths, n_types=2, **kwargs):
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={k: tf.TensorSpec([None], tf.int32)
                                                for k in examples[0]})
  return list(FlixPrefixLMFeatureConverter(n_types, **kwargs)(ds, lengths).as_numpy_iterator())


def test_prefix_lm_converter_carries_feature_ids():
  out = convert([{"inputs": [9, 4, 6, 1], "targets": [3, 9, 1], "feature_ids": [2, -1]},
                 {"inputs": [5, 1], "targets": [7, 7, 7, 1], "feature_ids": [0, 1]}],
                {"inputs": 5, "targets": 4})
  first, second = out
  np.testing.assert_array_equal(first["decoder_input_tokens"], [0, 9, 4, 6, 1, 3, 9, 1, 0])
  np.testing.assert_array_equal(first["decoder_target_tokens"], [9, 4, 6, 1, 3, 9, 1, 0, 0])
  np.testing.assert_array_equal(first["decoder_loss_weights"], [0, 0, 0, 0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(first["decoder_causal_attention"], [1, 1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(first["feature_ids"], [2, -1])
  np.testing.assert_array_equal(second["feature_ids"], [0, 1])
  prompt_tokens, lengths = DecoderOnlyModel.prompts({k: np.stack([first[k], second[k]])
                                                     for k in first})
  assert list(lengths) == [5, 3]  # Start token + inputs with EOS.
  np.testing.assert_array_equal(prompt_tokens[1, :3], [0, 5, 1])
  converter = FlixPrefixLMFeatureConverter(2)
  assert converter.get_model_feature_lengths({"inputs": 5, "targets": 4}) == {
      "decoder_target_tokens": 9, "decoder_input_tokens": 9, "decoder_loss_weights": 9,
      "decoder_causal_attention": 9, "feature_ids": 2}
  with pytest.raises(ValueError, match=r"task_feature_lengths\['feature_ids'\] is 3, expected "
                                       "n_types=2"):
    convert([{"inputs": [5, 1], "targets": [1], "feature_ids": [0, 1]}],
            {"inputs": 3, "targets": 2, "feature_ids": 3})
  with pytest.raises(tf.errors.InvalidArgumentError, match="wrong number of ids"):
    convert([{"inputs": [5, 1], "targets": [1], "feature_ids": [0]}],  # Would pad with id 0.
            {"inputs": 3, "targets": 2})


def test_inputs_batch_is_the_converters_prompt():
  obj = make_model(CONFIG)
  batch = obj.inputs_batch(np.array([[9, 4, 6, 1, 0], [5, 1, 0, 0, 0]]))
  np.testing.assert_array_equal(batch["decoder_input_tokens"],
                                [[0, 9, 4, 6, 1, 0], [0, 5, 1, 0, 0, 0]])
  np.testing.assert_array_equal(batch["decoder_causal_attention"],
                                [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
  assert isinstance(make_model(T5Config()).inputs_batch(np.ones((1, 2))), dict)


def test_loss_is_on_weighted_target_positions_only():
  model, params = flix_model()
  obj = DecoderOnlyModel(model)
  toks = np.asarray(tokens(length=8))
  weights = np.zeros((6, 8), np.int32)
  weights[:, 4:] = 1
  batch = {"decoder_input_tokens": toks, "decoder_target_tokens": np.roll(toks, -1, 1),
           "decoder_loss_weights": weights, "feature_ids": np.zeros((6, 2), np.int32)}
  loss, metrics = obj.loss_fn(params, batch, None)
  assert float(metrics["num_tokens"]) == 24
  # Changing a prompt-only target changes nothing (no loss there).
  other = dict(batch, decoder_target_tokens=batch["decoder_target_tokens"].copy())
  other["decoder_target_tokens"][:, :4] = 5
  assert float(obj.loss_fn(params, other, None)[0]) == pytest.approx(float(loss))
  other["decoder_target_tokens"][:, 6] = 5
  assert float(obj.loss_fn(params, other, None)[0]) != pytest.approx(float(loss))


def test_lora_space_model_needs_no_feature_ids():
  obj = make_model(CONFIG, FlixConfig.lora(4))
  assert obj.n_types == 0 and obj.feature_ids({}) is None
