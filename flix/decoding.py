"""Autoregressive search with a KV cache, for any model: greedy, beam search, sampling.

Decoding knows no model (as T5X's `decoding.py`): a model hands `search` a step function
`step(cache, token [rows]) -> (logits [rows, vocab] float32, cache)` over a cache already
expanded to rows = batch * n (n = beams or samples per example, each example's rows adjacent:
`expand_for_beams`, T5X's flat_batch_beam_expand), and optionally the logits of the first
position when its prefill computed them. The model objects build those (`flix.models.model`:
`EncoderDecoderModel.decode` encodes once and steps the T5 decoder, `DecoderOnlyModel.decode`
prefills each prompt, `left_align`ed, and steps the LM); everything a model reads per example
(encoder outputs, feature ids, a prefilled cache) is expanded the same way, so every beam runs
with its own example's adapters. The loop stops as soon as every sequence has emitted EOS (beam
search: as soon as no live beam can beat the finished ones) or after `max_length` positions.

Outputs use T5's id conventions, which every VOCABULARY follows (`flix.data.vocab`): PAD (0) is
the decoder start token and fills every position after EOS (`DecodeOptions.eos_id`: the
vocabulary's, which evaluation and inference pass; 1 in T5's vocabularies). Scores:
  greedy / sample: the sequence's log-probability under the model (untempered, unfiltered
    softmax), summed over the emitted tokens up to and including EOS.
  beam: T5X's length-normalised score, log-probability / ((5 + length) / 6) ** alpha, with
    length = emitted tokens including EOS (max_length for a beam that never emitted EOS).

The checks here (`check_tokens`, `check_lengths`, `check_rng`) are the model-independent
ones every model's decode runs before its compiled function.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

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


def before_or_at_eos(tokens: jax.Array, eos_id: int) -> jax.Array:
  """bool `[batch, length]`: positions up to and including the first EOS."""
  is_eos = (tokens == eos_id).astype(jnp.int32)
  return (jnp.cumsum(is_eos, axis=-1) - is_eos) == 0


# -- checks every model's decode runs ----------------------------------------------------------
def check_tokens(tokens, name: str = "encoder_input_tokens") -> jax.Array:
  """int32 `[batch, length]` token ids, or a ValueError naming `name`, its shape or dtype."""
  shape = np.shape(tokens)
  if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
    raise ValueError(f"{name} must have shape [batch, input_length] with both > 0, "
                     f"got shape {shape}")
  dtype = getattr(tokens, "dtype", np.asarray(tokens).dtype)
  if not np.issubdtype(dtype, np.integer):
    raise ValueError(f"{name} must be integer token ids, got dtype {dtype}")
  return jnp.asarray(tokens, jnp.int32)


def check_lengths(lengths, shape: tuple[int, int]) -> jax.Array:
  """Prompt lengths int32 `[batch]` in 1..P for prompts of `shape` [batch, P] (None: all P)."""
  batch, width = shape
  if lengths is None:
    return jnp.full((batch,), width, jnp.int32)
  if isinstance(lengths, jax.core.Tracer):
    raise ValueError("decoding runs its own jit: pass concrete prompt_lengths, not a tracer")
  host = np.asarray(lengths)
  if host.shape != (batch,) or not np.issubdtype(host.dtype, np.integer):
    raise ValueError(f"prompt_lengths must be integers [batch={batch}], got shape {host.shape} "
                     f"and dtype {host.dtype}")
  bad = np.flatnonzero((host < 1) | (host > width))
  if bad.size:
    raise ValueError(f"prompt_lengths[{bad[0]}] is {host[bad[0]]}: expected 1..{width} (a "
                     "prompt holds at least the start token)")
  return jnp.asarray(host, jnp.int32)


def check_rng(options: DecodeOptions, rng: jax.Array | None) -> jax.Array | None:
  """The PRNG key sampling needs (a ValueError without one); None for greedy and beam."""
  if options.method == "sample" and rng is None:
    raise ValueError("method='sample' needs a PRNG key: pass rng=jax.random.key(seed)")
  return rng if options.method == "sample" else None


# -- helpers for a model's step function -------------------------------------------------------
def left_align(prompts: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Right-padded prompts `[b, P]` -> (left-padded prompts `[b, P]`, start `[b]` = P - length)."""
  width = prompts.shape[1]
  start = width - lengths
  source = jnp.arange(width)[None, :] - start[:, None]
  shifted = jnp.take_along_axis(prompts, jnp.maximum(source, 0), axis=1)
  return jnp.where(source >= 0, shifted, PAD_ID), start


def rows_per_example(options: DecodeOptions) -> int:
  """n: the rows `search` runs per example (beams, or samples)."""
  return options.num_beams if options.method == "beam" else options.num_samples


def expand_for_beams(x: jax.Array, beams: int) -> jax.Array:
  """`[batch, ...] -> [batch * beams, ...]`, each example's rows adjacent (feature ids too)."""
  return jnp.repeat(x, beams, axis=0)


def expand(x: jax.Array | None, n: int) -> jax.Array | None:
  """`expand_for_beams(x, n)`; None and n == 1 pass through."""
  return x if x is None or n == 1 else expand_for_beams(x, n)


def expand_cache(cache, n: int):
  """Every per-row cache array `[rows, ...]` -> `[rows * n, ...]` (scalars stay)."""
  return cache if n == 1 else jax.tree.map(
      lambda x: x if x.ndim == 0 else expand_for_beams(x, n), cache)


# -- the search loops --------------------------------------------------------------------------
Step = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


def search(step: Step, cache, batch: int, options: DecodeOptions, rng,
           first_logits: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Greedy / sampling / beam search over `step`; (tokens, scores) shaped as DecodeResult.

  Args:
    step: `step(cache, token [rows]) -> (logits [rows, vocab] float32, cache)`, rows =
      batch * rows_per_example(options), each example's rows adjacent.
    cache: the step's state for those rows (any pytree; per-row arrays lead with rows).
    batch: examples.
    options: the search (static: call inside one jit per options).
    rng: PRNG key for sampling (`check_rng`), else None.
    first_logits: logits `[rows, vocab]` of the first position when the model's prefill
      computed them; without them the first step is fed the start token (PAD_ID).
  """
  if options.method == "beam":
    tokens, scores = _beam_search(step, cache, batch, options, first_logits)
  else:
    tokens, scores = _sample(step, cache, batch, rng, options, first_logits)
  if options.num_samples == 1:
    tokens, scores = tokens[:, 0], scores[:, 0]
  return tokens, scores


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
