"""Autoregressive decoding with a KV cache: greedy, beam search, sampling, for both families.

Encoder-decoder (`decode`, a T5): encodes once, then runs one decoder position per step inside a
`jax.lax.while_loop` whose carry holds the "cache" collection of `T5.decode(decode=True)`.
Decoder-only (`decode_lm`, a `DecoderLM`): prefills each prompt into the cache in one call, takes
the first token from its last position, then one cached position per step. Both families share
the search loops (`search`: greedy / sampling / beam). The loop stops as soon as every sequence
has emitted EOS (beam search: as soon as no live beam can beat the finished ones) or after
`max_length` positions.

Feature ids `[batch, n_types]` travel with their examples: for beams (and for several samples
per example) encoder outputs, encoder tokens, a prefilled decoder-only cache and feature ids are
expanded with `expand_for_beams`, each example's rows adjacent (T5X's flat_batch_beam_expand),
so every beam runs with its own example's adapters.

Outputs use T5's id conventions, which every VOCABULARY follows (`flix.data.vocab`): PAD (0) is
the decoder start token and fills every position after EOS (`DecodeOptions.eos_id`: the
vocabulary's, which evaluation and inference pass; 1 in T5's vocabularies). Scores:
  greedy / sample: the sequence's log-probability under the model (untempered, unfiltered
    softmax), summed over the emitted tokens up to and including EOS.
  beam: T5X's length-normalised score, log-probability / ((5 + length) / 6) ** alpha, with
    length = emitted tokens including EOS (max_length for a beam that never emitted EOS).

Compiled functions are cached by `jax.jit` per (model, options, shapes): `decode` can be called
repeatedly (e.g. over evaluation batches of a fixed size) without recompiling.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flix.models.decoder import DecoderLM
from flix.models.t5 import T5, expand_for_beams

PAD_ID = 0  # T5's convention for every vocabulary: padding and the decoder start token.
EOS_ID = 1
# "Effective negative infinity" for masking beams (as T5X: -inf would give inf - inf = nan).
NEG_INF = -1.0e7

Method = Literal["greedy", "beam", "sample"]
METHODS = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """Static decoding options (hashable: one compiled function per distinct value).

  Attributes:
    max_length: decoded positions (the target feature length, EOS included).
    method: "greedy", "beam" or "sample".
    num_beams: beam width (beam search only).
    alpha: brevity-penalty exponent of beam search (T5X default 0.6; 0 = raw log-probs).
    temperature: sampling temperature; 0 means argmax (sampling only).
    top_k: sample among the k most likely tokens; 0 = the whole vocabulary (sampling only).
    num_samples: decodes per example: samples (sample) or best beams (beam, <= num_beams).
    eos_id: end-of-sequence token id (the vocabulary's `eos_id`).
  """

  max_length: int
  method: str = "greedy"
  num_beams: int = 4
  alpha: float = 0.6
  temperature: float = 1.0
  top_k: int = 0
  num_samples: int = 1
  eos_id: int = EOS_ID

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"unknown decoding method {self.method!r}; expected one of {METHODS}")
    if not isinstance(self.max_length, int) or self.max_length < 1:
      raise ValueError(f"max_length must be an int >= 1, got {self.max_length!r}")
    if not isinstance(self.num_beams, int) or self.num_beams < 1:
      raise ValueError(f"num_beams must be an int >= 1, got {self.num_beams!r}")
    if not isinstance(self.num_samples, int) or self.num_samples < 1:
      raise ValueError(f"num_samples must be an int >= 1, got {self.num_samples!r}")
    if not self.alpha >= 0:
      raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ValueError(f"top_k must be an int >= 0 (0 = no top-k filter), got {self.top_k!r}")
    if self.method == "greedy" and self.num_samples != 1:
      raise ValueError(f"greedy decoding gives one decode per example, got num_samples="
                       f"{self.num_samples}; use method='sample' or 'beam'")
    if self.method == "beam" and self.num_samples > self.num_beams:
      raise ValueError(f"beam search returns at most num_beams={self.num_beams} decodes per "
                       f"example, got num_samples={self.num_samples}")


@dataclasses.dataclass(frozen=True)
class DecodeResult:
  """Decodes, best first.

  Attributes:
    tokens: int32 `[batch, max_length]`, or `[batch, num_samples, max_length]` when
      num_samples > 1; PAD after EOS.
    scores: float32 `[batch]` or `[batch, num_samples]` (see the module docstring).
  """

  tokens: jax.Array
  scores: jax.Array


def brevity_penalty(alpha: float, length) -> jax.Array:
  """T5X / GNMT length penalty ((5 + length) / 6) ** alpha."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def sequence_log_probs(model: T5, params, encoder_input_tokens, feature_ids, tokens,
                       eos_id: int = EOS_ID) -> jax.Array:
  """Teacher-forced log-probability `[batch]` of decodes `[batch, length]` (PAD after EOS).

  Sums the model's log-probabilities over the tokens up to and including the first EOS (all
  tokens if there is none), i.e. what greedy/sample report as scores. No cache: for checks.
  """
  return _sequence_log_probs(model, nn.unbox(params), jnp.asarray(encoder_input_tokens, jnp.int32),
                             feature_ids, jnp.asarray(tokens, jnp.int32), eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=("model", "eos_id"))
def _sequence_log_probs(model: T5, params, enc, feature_ids, tokens, *, eos_id: int):
  inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=PAD_ID)
  logits = model.apply({"params": params}, enc, inputs, feature_ids)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(_before_or_at_eos(tokens, eos_id), logp, 0.0), axis=-1)


def _before_or_at_eos(tokens: jax.Array, eos_id: int) -> jax.Array:
  """bool `[batch, length]`: positions up to and including the first EOS."""
  is_eos = (tokens == eos_id).astype(jnp.int32)
  return (jnp.cumsum(is_eos, axis=-1) - is_eos) == 0


def decode(model: T5, params, encoder_input_tokens, feature_ids=None, *, max_length: int,
           method: Method = "greedy", num_beams: int = 4, alpha: float = 0.6,
           temperature: float = 1.0, top_k: int = 0, rng: jax.Array | None = None,
           num_samples: int = 1, eos_id: int = EOS_ID) -> DecodeResult:
  """Decodes `encoder_input_tokens` with the KV cache.

  Args:
    model: a `T5` (with or without FLix adapters; full tables, i.e. `flix.row_limit` None).
    params: its params (boxed or plain).
    encoder_input_tokens: int `[batch, input_length]`, 0-padded.
    feature_ids: int `[batch, n_types]` (INACTIVE = -1 switches a type off), one row per
      example; required when the model has feature types, ignored by a model without FLix.
    max_length: decoded positions (EOS included).
    method: "greedy", "beam" or "sample".
    num_beams, alpha: beam width and brevity-penalty exponent (beam search).
    temperature, top_k, rng: sampling temperature (0 = argmax), top-k filter (0 = off) and
      PRNG key (required for sampling; the same key gives the same samples).
    num_samples: samples per example (sample) or best beams returned (beam).
    eos_id: end-of-sequence id.

  Returns:
    DecodeResult with tokens `[batch, (num_samples,) max_length]` and scores.
  """
  options = DecodeOptions(max_length=max_length, method=method, num_beams=num_beams,
                          alpha=float(alpha), temperature=float(temperature), top_k=top_k,
                          num_samples=num_samples, eos_id=eos_id)
  return decode_with_options(model, params, encoder_input_tokens, feature_ids, options, rng)


def decode_with_options(model: T5, params, encoder_input_tokens, feature_ids,
                        options: DecodeOptions, rng: jax.Array | None = None) -> DecodeResult:
  """`decode` with its options as one `DecodeOptions`."""
  enc = _check_tokens(encoder_input_tokens)
  ids = _check_feature_ids(model, feature_ids, enc.shape[0])
  if options.method == "sample" and rng is None:
    raise ValueError("method='sample' needs a PRNG key: pass rng=jax.random.key(seed)")
  if options.method != "sample":
    rng = None
  tokens, scores = _decode_jit(model, nn.unbox(params), enc, ids, rng, options=options)
  return DecodeResult(tokens, scores)


# -- decoder-only models ------------------------------------------------------------------------
def decode_lm(model: DecoderLM, params, prompt_tokens, prompt_lengths=None, feature_ids=None, *,
              max_length: int, method: Method = "greedy", num_beams: int = 4,
              alpha: float = 0.6, temperature: float = 1.0, top_k: int = 0,
              rng: jax.Array | None = None, num_samples: int = 1, eos_id: int = EOS_ID,
              bidirectional_prompt: bool = False) -> DecodeResult:
  """Continues prompts with a decoder-only `model` (`flix.models.decoder.DecoderLM`).

  Args:
    prompt_tokens: int `[batch, P]`, each prompt right-padded (what the prefix-LM converter
      gives: the start token, the inputs, their EOS).
    prompt_lengths: int `[batch]` in 1..P (default: every prompt fills P). The padding is never
      attended to, and each prompt's positions start at 0.
    bidirectional_prompt: the prompt attends to itself in both directions (T5X's prefix LM,
      `DecoderOnlyModel.inputs_bidirectional_attention`); default causal (the HF models).
    Other arguments as `decode`: max_length new tokens, PAD after EOS, scores likewise.

  The prompt is prefilled in one call (each row left-aligned to end at position P - 1), the
  first token comes from its last position's logits, then one cached position per step.
  """
  options = DecodeOptions(max_length=max_length, method=method, num_beams=num_beams,
                          alpha=float(alpha), temperature=float(temperature), top_k=top_k,
                          num_samples=num_samples, eos_id=eos_id)
  return decode_lm_with_options(model, params, prompt_tokens, prompt_lengths, feature_ids,
                                options, rng, bidirectional_prompt=bidirectional_prompt)


def decode_lm_with_options(model: DecoderLM, params, prompt_tokens, prompt_lengths, feature_ids,
                           options: DecodeOptions, rng: jax.Array | None = None, *,
                           bidirectional_prompt: bool = False) -> DecodeResult:
  """`decode_lm` with its options as one `DecodeOptions`."""
  prompts = _check_tokens(prompt_tokens, "prompt_tokens")
  lengths = _check_lengths(prompt_lengths, prompts.shape)
  ids = _check_feature_ids(model, feature_ids, prompts.shape[0])
  if options.method == "sample" and rng is None:
    raise ValueError("method='sample' needs a PRNG key: pass rng=jax.random.key(seed)")
  if options.method != "sample":
    rng = None
  tokens, scores = _decode_lm_jit(model, nn.unbox(params), prompts, lengths, ids, rng,
                                  options=options, bidirectional=bidirectional_prompt)
  return DecodeResult(tokens, scores)


def _check_lengths(lengths, shape: tuple[int, int]) -> jax.Array:
  batch, width = shape
  if lengths is None:
    return jnp.full((batch,), width, jnp.int32)
  if isinstance(lengths, jax.core.Tracer):
    raise ValueError("decode_lm runs its own jit: pass concrete prompt_lengths, not a tracer")
  host = np.asarray(lengths)
  if host.shape != (batch,) or not np.issubdtype(host.dtype, np.integer):
    raise ValueError(f"prompt_lengths must be integers [batch={batch}], got shape {host.shape} "
                     f"and dtype {host.dtype}")
  bad = np.flatnonzero((host < 1) | (host > width))
  if bad.size:
    raise ValueError(f"prompt_lengths[{bad[0]}] is {host[bad[0]]}: expected 1..{width} (a "
                     "prompt holds at least the start token)")
  return jnp.asarray(host, jnp.int32)


def left_align(prompts: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Right-padded prompts `[b, P]` -> (left-padded prompts `[b, P]`, start `[b]` = P - length)."""
  width = prompts.shape[1]
  start = width - lengths
  source = jnp.arange(width)[None, :] - start[:, None]
  shifted = jnp.take_along_axis(prompts, jnp.maximum(source, 0), axis=1)
  return jnp.where(source >= 0, shifted, PAD_ID), start


@functools.partial(jax.jit, static_argnames=("model", "options", "bidirectional"))
def _decode_lm_jit(model: DecoderLM, params, prompts: jax.Array, lengths: jax.Array,
                   ids: jax.Array | None, rng, *, options: DecodeOptions,
                   bidirectional: bool) -> tuple[jax.Array, jax.Array]:
  """Prefills the prompts once, expands the cache per beam / sample, then searches."""
  batch, width = prompts.shape
  total = width + options.max_length
  left, start = left_align(prompts, lengths)
  shapes = jax.eval_shape(lambda p: model.apply(
      {"params": p}, jnp.zeros((batch, total), jnp.int32), ids, decode=True,
      mutable=["cache"])[1]["cache"], params)
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  prefix = (jnp.arange(width)[None, :] >= start[:, None]) if bidirectional else None
  logits, state = model.apply({"params": params, "cache": cache}, left, ids, prefix=prefix,
                              start=start, decode=True, mutable=["cache"])
  n = options.num_beams if options.method == "beam" else options.num_samples
  cache, first, ids = expand_cache(state["cache"], n), _expand(logits[:, -1], n), _expand(ids, n)

  def step(cache, token):
    logits, state = model.apply({"params": params, "cache": cache}, token[:, None], ids,
                                decode=True, mutable=["cache"])
    return logits[:, 0], state["cache"]

  return search(step, cache, batch, options, rng, first_logits=first)


def _check_tokens(tokens, name: str = "encoder_input_tokens") -> jax.Array:
  shape = np.shape(tokens)
  if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
    raise ValueError(f"{name} must have shape [batch, input_length] with both > 0, "
                     f"got shape {shape}")
  dtype = getattr(tokens, "dtype", np.asarray(tokens).dtype)
  if not np.issubdtype(dtype, np.integer):
    raise ValueError(f"{name} must be integer token ids, got dtype {dtype}")
  return jnp.asarray(tokens, jnp.int32)


def _check_feature_ids(model: T5, feature_ids, batch: int) -> jax.Array | None:
  flix = model.flix
  if flix is not None and flix.row_limit is not None:
    raise ValueError(
        f"decoding needs a model with full adapter tables, got FlixConfig.row_limit="
        f"{flix.row_limit} (compact tables of flix.rows); decode with "
        f"{type(model).__name__}(config, dataclasses.replace(flix, row_limit=None)) and the full "
        "params")
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


# -- compiled core ------------------------------------------------------------------------------
# The search loops are shared by the families. A family supplies `step(cache, token [rows]) ->
# (logits [rows, vocab] float32, cache)` over a cache already expanded to rows = batch * n
# (n = beams or samples, each example's rows adjacent), and optionally the logits of the first
# position when its prefill computed them (decoder-only: the last prompt position).
Step = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


@functools.partial(jax.jit, static_argnames=("model", "options"))
def _decode_jit(model: T5, params, enc: jax.Array, ids: jax.Array | None, rng,
                *, options: DecodeOptions) -> tuple[jax.Array, jax.Array]:
  """Encodes once, then decodes; returns (tokens, scores) shaped as DecodeResult."""
  encoded = model.apply({"params": params}, enc, ids, method=T5.encode)
  n = options.num_beams if options.method == "beam" else options.num_samples
  batch, length = enc.shape[0], options.max_length
  encoded, enc, ids = _expand(encoded, n), _expand(enc, n), _expand(ids, n)
  cache = _init_cache(model, params, encoded, enc, ids, length)
  step = lambda cache, token: _step(model, params, encoded, enc, ids, cache, token, length)
  return search(step, cache, batch, options, rng)


def search(step: Step, cache, batch: int, options: DecodeOptions, rng,
           first_logits: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Greedy / sampling / beam search over `step`; (tokens, scores) shaped as DecodeResult.

  Without `first_logits`, the first step is fed the start token (PAD_ID).
  """
  if options.method == "beam":
    tokens, scores = _beam_search(step, cache, batch, options, first_logits)
  else:
    tokens, scores = _sample(step, cache, batch, rng, options, first_logits)
  if options.num_samples == 1:
    tokens, scores = tokens[:, 0], scores[:, 0]
  return tokens, scores


def _expand(x: jax.Array | None, n: int) -> jax.Array | None:
  return x if x is None or n == 1 else expand_for_beams(x, n)


def expand_cache(cache, n: int):
  """Every per-row cache array `[rows, ...]` -> `[rows * n, ...]` (scalars stay)."""
  return cache if n == 1 else jax.tree.map(
      lambda x: x if x.ndim == 0 else expand_for_beams(x, n), cache)


def _init_cache(model: T5, params, encoded, enc, ids, max_length: int):
  """Zeroed "cache" collection for decoding `[encoded.shape[0]]` rows up to max_length."""
  def init(p, e, t, i):
    dec = jnp.zeros((t.shape[0], max_length), jnp.int32)
    _, state = model.apply({"params": p}, e, t, dec, i, decode=True,
                           max_decode_length=max_length, method=T5.decode, mutable=["cache"])
    return state["cache"]
  shapes = jax.eval_shape(init, params, encoded, enc, ids)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _step(model: T5, params, encoded, enc, ids, cache, token: jax.Array, max_length: int):
  """One decoder position: token `[rows]` -> logits `[rows, vocab]` (float32), new cache."""
  logits, state = model.apply({"params": params, "cache": cache}, encoded, enc, token[:, None],
                              ids, decode=True, max_decode_length=max_length,
                              method=T5.decode, mutable=["cache"])
  return logits[:, 0], state["cache"]


def _pick(logits: jax.Array, key, options: DecodeOptions) -> jax.Array:
  """Next tokens `[rows]`: argmax at temperature 0, else a (top-k filtered) sample."""
  if options.method == "greedy" or options.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if 0 < options.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, options.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  return jax.random.categorical(key, logits / options.temperature, axis=-1).astype(jnp.int32)


def _sample(step: Step, cache, batch: int, rng, options: DecodeOptions,
            first_logits: jax.Array | None = None):
  """Greedy or temperature sampling: tokens `[batch, n, L]`, log-probs `[batch, n]`."""
  n, length = options.num_samples, options.max_length
  rows = batch * n

  def cond(state):
    i, _, _, _, done, _ = state
    return (i < length) & ~jnp.all(done)

  def advance(state, logits, cache):
    i, _, _, tokens, done, logprob = state
    key = None if rng is None else jax.random.fold_in(rng, i)
    nxt = jnp.where(done, PAD_ID, _pick(logits, key, options))
    token_logp = jnp.take_along_axis(jax.nn.log_softmax(logits), nxt[:, None], axis=-1)[:, 0]
    logprob = logprob + jnp.where(done, 0.0, token_logp)
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, i))
    return i + 1, nxt, cache, tokens, done | (nxt == options.eos_id), logprob

  def body(state):
    logits, cache = step(state[2], state[1])
    return advance(state, logits, cache)

  state = (jnp.array(0, jnp.int32), jnp.full((rows,), PAD_ID, jnp.int32), cache,
           jnp.full((rows, length), PAD_ID, jnp.int32), jnp.zeros((rows,), bool),
           jnp.zeros((rows,), jnp.float32))
  if first_logits is not None:
    state = advance(state, first_logits, cache)
  _, _, _, tokens, _, logprob = jax.lax.while_loop(cond, body, state)
  return tokens.reshape(batch, n, length), logprob.reshape(batch, n)


def _gather_rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """x `[batch, m, ...]`, index int `[batch, k]` -> `[batch, k, ...]`."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _gather_cache(cache, parents: jax.Array, batch: int, beams: int):
  """Reorders every per-row cache array `[batch * beams, ...]` to the parent beams `[b, k]`."""
  flat = (jnp.arange(batch)[:, None] * beams + parents).reshape(-1)
  return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, flat, axis=0), cache)


def _beam_search(step: Step, cache, batch: int, options: DecodeOptions,
                 first_logits: jax.Array | None = None):
  """T5X-style beam search: best-first tokens `[batch, n, L]`, normalised scores `[batch, n]`.

  Live beams (no EOS yet, sorted best first) and finished beams (score = log-prob / brevity
  penalty at their length) are kept per example. Each step expands the live beams, keeps the
  top 2k candidates, moves the ones ending in EOS to the finished set and continues the best k
  others. The search stops at max_length, or once every finished slot beats the best score any
  live beam could still reach.
  """
  k, length, eos = options.num_beams, options.max_length, options.eos_id
  alpha = options.alpha
  # Sequences hold the start token at position 0; position i + 1 is written at step i.
  live_seqs = jnp.zeros((batch, k, length + 1), jnp.int32)
  live_logprobs = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  finished_seqs = jnp.zeros((batch, k, length + 1), jnp.int32)
  finished_scores = jnp.full((batch, k), NEG_INF, jnp.float32)
  finished_flags = jnp.zeros((batch, k), bool)
  min_penalty = brevity_penalty(alpha, length)

  def cond(state):
    i, live_logprobs, _, finished_scores, _, finished_flags, _ = state
    best_live = live_logprobs[:, :1] / min_penalty
    worst_finished = jnp.min(finished_scores, axis=1, keepdims=True)
    worst_finished = jnp.where(finished_flags, worst_finished, NEG_INF)
    return (i < length) & ~jnp.all(worst_finished > best_live)

  def advance(state, logits, cache):
    i, live_logprobs, live_seqs, finished_scores, finished_seqs, finished_flags, _ = state
    vocab = logits.shape[-1]
    logp = jax.nn.log_softmax(logits).reshape(batch, k, vocab) + live_logprobs[..., None]
    top_logp, top_index = jax.lax.top_k(logp.reshape(batch, k * vocab), 2 * k)
    parents, top_tokens = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    seqs = _gather_rows(live_seqs, parents)
    seqs = jax.lax.dynamic_update_slice(seqs, top_tokens[..., None], (0, 0, i + 1))
    newly_finished = top_tokens == eos

    alive_logp = top_logp + newly_finished * NEG_INF
    live_logprobs, alive = jax.lax.top_k(alive_logp, k)
    live_seqs = _gather_rows(seqs, alive)
    cache = _gather_cache(cache, _gather_rows(parents, alive), batch, k)

    new_scores = top_logp / brevity_penalty(alpha, i + 1) + (~newly_finished) * NEG_INF
    all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
    finished_scores, best = jax.lax.top_k(all_scores, k)
    finished_seqs = _gather_rows(jnp.concatenate([finished_seqs, seqs], axis=1), best)
    finished_flags = _gather_rows(jnp.concatenate([finished_flags, newly_finished], axis=1), best)
    return i + 1, live_logprobs, live_seqs, finished_scores, finished_seqs, finished_flags, cache

  def body(state):
    i, live_seqs, cache = state[0], state[2], state[6]
    token = jax.lax.dynamic_index_in_dim(live_seqs, i, axis=2, keepdims=False).reshape(-1)
    logits, cache = step(cache, token)
    return advance(state, logits, cache)

  state = (jnp.array(0, jnp.int32), live_logprobs, live_seqs, finished_scores, finished_seqs,
           finished_flags, cache)
  if first_logits is not None:
    state = advance(state, first_logits, cache)
  _, live_logprobs, live_seqs, finished_scores, finished_seqs, finished_flags, _ = (
      jax.lax.while_loop(cond, body, state))
  # Finished beams first (by score), then live ones (a beam cut at max_length, or fewer than n
  # finished), then empty finished slots.
  live_scores = live_logprobs / min_penalty
  rank = jnp.concatenate([jnp.where(finished_flags, finished_scores, 3 * NEG_INF),
                          live_scores + NEG_INF], axis=1)
  _, order = jax.lax.top_k(rank, options.num_samples)
  scores = _gather_rows(jnp.concatenate([finished_scores, live_scores], axis=1), order)
  seqs = _gather_rows(jnp.concatenate([finished_seqs, live_seqs], axis=1), order)
  return seqs[:, :, 1:], scores
