"""bfloat16 activations (the ACTIVATION_DTYPE macro, T5X's TPU default): compute in bfloat16,
parameters, optimizer state and checkpoints in float32, for both model families."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from flix import checkpoints, decoding
from flix.models.decoder import DecoderLM
from flix.models.model import DecoderOnlyModel, EncoderDecoderModel
from flix.models.t5 import T5
from flix.trainable import freeze_base, trainable_mask
from flix.training.optimizers import make_optimizer
from flix.training.state import TrainState
from flix.training.step import make_train_step

FAMILIES = ("t5", "decoder")
# bfloat16 keeps 8 significant bits (relative spacing 2**-8 = 0.4%); a cross-entropy over a few
# dozen tokens through one layer per stack lands well within 2% of float32.
LOSS_RTOL = 0.02


@functools.lru_cache(maxsize=None)
def model_object(family: str, dtype: str):
  flix = tiny.flix()
  if family == "t5":
    config = tiny.t5_config(dtype=dtype, num_encoder_layers=1, num_decoder_layers=1)
    return EncoderDecoderModel(T5(config, flix), z_loss=0.0)
  return DecoderOnlyModel(DecoderLM(tiny.decoder_config(dtype=dtype, num_layers=1), flix))


def params_of(family: str):
  """The same seeded float32 params for both dtypes (adapters non-zero)."""
  module = model_object(family, "float32").module
  if family == "t5":
    return tiny.random_params(module, seed=3, adapter_scale=0.1)
  return tiny.decoder_random_params(module, seed=3, adapter_scale=0.1)


def train_batch(family: str, seed: int = 0):
  enc, dec = tiny.batch(seed)
  ids = jnp.asarray(tiny.MIXED_IDS)
  if family == "t5":
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
            "decoder_target_tokens": jnp.roll(dec, -1, axis=1),
            "decoder_loss_weights": jnp.ones(dec.shape, jnp.float32), "feature_ids": ids}
  tokens = jnp.concatenate([enc, dec], axis=1)
  weights = jnp.zeros(tokens.shape, jnp.float32).at[:, enc.shape[1]:].set(1.0)
  return {"decoder_input_tokens": tokens, "decoder_target_tokens": jnp.roll(tokens, -1, axis=1),
          "decoder_loss_weights": weights,
          "decoder_causal_attention": (weights == 0).astype(jnp.int32), "feature_ids": ids}


@functools.lru_cache(maxsize=None)
def two_steps(family: str, dtype: str):
  """(losses of two AdamW steps, final state) from the shared float32 params."""
  obj = model_object(family, dtype)
  params = params_of(family)
  optimizer = freeze_base(make_optimizer("adamw", learning_rate=1e-2), params, "flix")
  state = TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                     rng=jax.random.key_data(jax.random.key(0)))
  step = jax.jit(make_train_step(obj, optimizer, trainable_mask(params)))
  losses = []
  for seed in (0, 1):
    state, metrics = step(state, train_batch(family, seed))
    losses.append(float(metrics["loss"]))
  return losses, state


def float_dtypes(tree) -> set:
  return {np.dtype(x.dtype).name for x in jax.tree.leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_train_steps_track_float32_and_keep_float32_state(tmp_path, family):
  (f32_losses, _), (bf16_losses, state) = two_steps(family, "float32"), two_steps(family,
                                                                                 "bfloat16")
  np.testing.assert_allclose(bf16_losses, f32_losses, rtol=LOSS_RTOL)
  assert bf16_losses != f32_losses, "the bfloat16 model must really compute in bfloat16"
  assert float_dtypes(state.params) == {"float32"}
  assert float_dtypes(state.opt_state) == {"float32"}
  # The checkpoint is float32 too and records the compute dtype.
  obj = model_object(family, "bfloat16")
  path = checkpoints.save_model(str(tmp_path / "ckpt"), state.params, obj.module.config,
                                obj.flix)
  config, _, params = checkpoints.load_model(path)
  assert config == obj.module.config and config.dtype == "bfloat16"
  assert float_dtypes(params) == {"float32"}
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(state.params))


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_greedy_decoding_scores_its_own_tokens(family):
  """Greedy decoding runs in bfloat16 with a bfloat16 KV cache; its scores are the log-probs of
  the returned tokens under the bfloat16 model, and most tokens agree with float32 decoding."""
  batch = train_batch(family)
  options = decoding.DecodeOptions(max_length=5)
  params = params_of(family)
  results = {d: model_object(family, d).predict_batch(params, batch, options)
             for d in ("float32", "bfloat16")}
  bf16 = results["bfloat16"]
  tokens = np.asarray(bf16.tokens)
  assert tokens.shape == (6, 5) and tokens.min() >= 0 and tokens.max() < 64
  assert np.all(np.isfinite(np.asarray(bf16.scores)))
  agree = np.mean(tokens == np.asarray(results["float32"].tokens))
  assert agree >= 0.6, agree
  obj = model_object(family, "bfloat16")
  scored = obj.score_batch(params, forced_batch(family, batch, tokens))
  np.testing.assert_allclose(np.asarray(bf16.scores), np.asarray(scored), rtol=0.03, atol=0.05)


def forced_batch(family: str, batch, tokens: np.ndarray):
  """The teacher-forced batch that scores `tokens` `[b, n]` (up to each row's first EOS) as
  targets: after the encoder input (T5) or after the prompt (decoder-only)."""
  b, n = tokens.shape
  eos = tokens == decoding.EOS_ID
  first = np.where(eos.any(1), eos.argmax(1), n - 1)
  weights = (np.arange(n)[None] <= first[:, None]).astype(np.float32)
  shifted = np.concatenate([np.zeros((b, 1), np.int32), tokens[:, :-1]], axis=1)
  if family == "t5":
    return {"encoder_input_tokens": batch["encoder_input_tokens"],
            "decoder_input_tokens": shifted, "decoder_target_tokens": tokens,
            "decoder_loss_weights": weights, "feature_ids": batch["feature_ids"]}
  prompt_tokens, lengths = DecoderOnlyModel.prompts(batch)
  assert (lengths == lengths[0]).all()  # One prompt length: positions line up across rows.
  prompt = prompt_tokens[:, :lengths[0]]
  inputs = np.concatenate([prompt, tokens[:, :-1]], axis=1)
  targets = np.concatenate([prompt[:, 1:], tokens], axis=1)
  loss_weights = np.concatenate([np.zeros((b, prompt.shape[1] - 1), np.float32), weights], 1)
  causal = np.zeros(inputs.shape, np.int32)
  causal[:, :prompt.shape[1]] = 1
  return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
          "decoder_loss_weights": loss_weights, "decoder_causal_attention": causal,
          "feature_ids": batch["feature_ids"]}
