"""Each family's half of decoding: the compiled functions that hand `flix.decoding.search` a
step function, and the checks that read the model's adapters.

Encoder-decoder (`encoder_decoder`, a T5): encodes once, then runs one decoder position per step
with the "cache" collection of `T5.decode(decode=True)` as the search's cache.
Decoder-only (`decoder_only`, a `DecoderLM`): prefills each prompt (left-aligned to end at
position P - 1) into the cache in one call, takes the first token from its last position, then
one cached position per step.

Compiled functions are cached by `jax.jit` per (network, options, shapes): the network is a
hashable flax module, so a model object can be rebuilt, or its decode called repeatedly (e.g.
over evaluation batches of a fixed size), without recompiling. The model objects
(`flix.models.model`) are the public entry: `EncoderDecoderModel.decode` and
`DecoderOnlyModel.decode`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flix import decoding
from flix.decoding import DecodeOptions, DecodeResult
from flix.models.decoder import DecoderLM
from flix.models.t5 import T5


def check_feature_ids(module: T5 | DecoderLM, feature_ids, batch: int) -> jax.Array | None:
  """Feature ids int32 `[batch, n_types]` for `module` (None for a model without feature
  types), or a ValueError: compact tables, ids missing, traced, out of range or miscounted."""
  flix = module.flix
  if flix is not None and flix.row_limit is not None:
    raise ValueError(
        f"decoding needs a model with full adapter tables, got FlixConfig.row_limit="
        f"{flix.row_limit} (compact tables of flix.rows); decode with "
        f"{type(module).__name__}(config, dataclasses.replace(flix, row_limit=None)) and the "
        "full params")
  n_types = flix.space.n_types if flix is not None else 0
  if n_types == 0:
    return None if feature_ids is None else jnp.asarray(feature_ids, jnp.int32)
  if feature_ids is None:
    raise ValueError(f"the model has feature types {list(flix.space.names)}: pass feature_ids "
                     f"int [batch, {n_types}] (INACTIVE=-1 for a type that is off)")
  if isinstance(feature_ids, jax.core.Tracer):
    raise ValueError("decode runs its own jit: pass concrete feature ids, not a tracer")
  ids = np.asarray(feature_ids)
  flix.space.check_ids(ids)
  if ids.shape[0] != batch:
    raise ValueError(f"feature_ids has {ids.shape[0]} rows but the batch has {batch} examples; "
                     "pass one id row per example")
  return jnp.asarray(ids, jnp.int32)


# -- encoder-decoder ----------------------------------------------------------------------------
def encoder_decoder(module: T5, params, encoder_input_tokens, feature_ids,
                    options: DecodeOptions, rng: jax.Array | None) -> DecodeResult:
  """Checks the arguments, then decodes `encoder_input_tokens` (see
  `EncoderDecoderModel.decode`)."""
  enc = decoding.check_tokens(encoder_input_tokens)
  ids = check_feature_ids(module, feature_ids, enc.shape[0])
  rng = decoding.check_rng(options, rng)
  tokens, scores = _encoder_decoder_jit(module, nn.unbox(params), enc, ids, rng, options=options)
  return DecodeResult(tokens, scores)


@functools.partial(jax.jit, static_argnames=("module", "options"))
def _encoder_decoder_jit(module: T5, params, enc: jax.Array, ids: jax.Array | None, rng, *,
                         options: DecodeOptions) -> tuple[jax.Array, jax.Array]:
  """Encodes once, then searches; returns (tokens, scores) shaped as DecodeResult."""
  encoded = module.apply({"params": params}, enc, ids, method=T5.encode)
  n = decoding.rows_per_example(options)
  batch, length = enc.shape[0], options.max_length
  encoded, enc, ids = (decoding.expand(encoded, n), decoding.expand(enc, n),
                       decoding.expand(ids, n))
  cache = _init_cache(module, params, encoded, enc, ids, length)

  def step(cache, token):
    """One decoder position: token `[rows]` -> logits `[rows, vocab]` (float32), new cache."""
    logits, state = module.apply({"params": params, "cache": cache}, encoded, enc,
                                 token[:, None], ids, decode=True, max_decode_length=length,
                                 method=T5.decode, mutable=["cache"])
    return logits[:, 0], state["cache"]

  return decoding.search(step, cache, batch, options, rng)


def trace_encoder_decoder(module: T5, params, encoder_input_tokens, feature_ids,
                          options: DecodeOptions, rng=None) -> jax.stages.Traced:
  """`encoder_decoder`'s decode, traced for (abstract, sharded) arguments without running it
  (`.lower()` lowers it): `jax.ShapeDtypeStruct`s are enough (`flix.compile --decode`)."""
  return _encoder_decoder_jit.trace(module, nn.unbox(params), encoder_input_tokens, feature_ids,
                                    rng, options=options)


def _init_cache(module: T5, params, encoded, enc, ids, max_length: int):
  """Zeroed "cache" collection for decoding `[encoded.shape[0]]` rows up to max_length."""
  def init(p, e, t, i):
    dec = jnp.zeros((t.shape[0], max_length), jnp.int32)
    _, state = module.apply({"params": p}, e, t, dec, i, decode=True,
                            max_decode_length=max_length, method=T5.decode, mutable=["cache"])
    return state["cache"]
  shapes = jax.eval_shape(init, params, encoded, enc, ids)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def sequence_log_probs(module: T5, params, encoder_input_tokens, feature_ids, tokens,
                       eos_id: int = decoding.EOS_ID) -> jax.Array:
  """Teacher-forced log-probability `[batch]` of decodes `[batch, length]` (PAD after EOS),
  summed up to and including the first EOS: what greedy and sampling report as scores."""
  return _sequence_log_probs(module, nn.unbox(params),
                             jnp.asarray(encoder_input_tokens, jnp.int32), feature_ids,
                             jnp.asarray(tokens, jnp.int32), eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=("module", "eos_id"))
def _sequence_log_probs(module: T5, params, enc, feature_ids, tokens, *, eos_id: int):
  inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=decoding.PAD_ID)
  logits = module.apply({"params": params}, enc, inputs, feature_ids)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(decoding.before_or_at_eos(tokens, eos_id), logp, 0.0), axis=-1)


# -- decoder-only -------------------------------------------------------------------------------
def decoder_only(module: DecoderLM, params, prompt_tokens, prompt_lengths, feature_ids,
                 options: DecodeOptions, rng: jax.Array | None, *,
                 bidirectional: bool) -> DecodeResult:
  """Checks the arguments, then continues the prompts (see `DecoderOnlyModel.decode`)."""
  prompts = decoding.check_tokens(prompt_tokens, "prompt_tokens")
  lengths = decoding.check_lengths(prompt_lengths, prompts.shape)
  ids = check_feature_ids(module, feature_ids, prompts.shape[0])
  rng = decoding.check_rng(options, rng)
  tokens, scores = _decoder_only_jit(module, nn.unbox(params), prompts, lengths, ids, rng,
                                     options=options, bidirectional=bidirectional)
  return DecodeResult(tokens, scores)


def trace_decoder_only(module: DecoderLM, params, prompt_tokens, prompt_lengths, feature_ids,
                       options: DecodeOptions, rng=None, *,
                       bidirectional: bool = False) -> jax.stages.Traced:
  """`decoder_only`'s decode, traced for (abstract, sharded) arguments without running it
  (`.lower()` lowers it; `flix.compile --decode`)."""
  return _decoder_only_jit.trace(module, nn.unbox(params), prompt_tokens, prompt_lengths,
                                 feature_ids, rng, options=options, bidirectional=bidirectional)


@functools.partial(jax.jit, static_argnames=("module", "options", "bidirectional"))
def _decoder_only_jit(module: DecoderLM, params, prompts: jax.Array, lengths: jax.Array,
                      ids: jax.Array | None, rng, *, options: DecodeOptions,
                      bidirectional: bool) -> tuple[jax.Array, jax.Array]:
  """Prefills the prompts once, expands the cache per beam / sample, then searches."""
  batch, width = prompts.shape
  total = width + options.max_length
  left, start = decoding.left_align(prompts, lengths)
  shapes = jax.eval_shape(lambda p: module.apply(
      {"params": p}, jnp.zeros((batch, total), jnp.int32), ids, decode=True,
      mutable=["cache"])[1]["cache"], params)
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  prefix = (jnp.arange(width)[None, :] >= start[:, None]) if bidirectional else None
  logits, state = module.apply({"params": params, "cache": cache}, left, ids, prefix=prefix,
                               start=start, decode=True, mutable=["cache"])
  n = decoding.rows_per_example(options)
  cache = decoding.expand_cache(state["cache"], n)
  first, ids = decoding.expand(logits[:, -1], n), decoding.expand(ids, n)

  def step(cache, token):
    logits, state = module.apply({"params": params, "cache": cache}, token[:, None], ids,
                                 decode=True, mutable=["cache"])
    return logits[:, 0], state["cache"]

  return decoding.search(step, cache, batch, options, rng, first_logits=first)
