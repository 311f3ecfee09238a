"""Decoding with the KV cache: greedy vs teacher forcing, beam search, sampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flix import decoding
from flix.decoding import DecodeOptions
from flix.models import decode_fns
from flix.models.model import EncoderDecoderModel
from flix.models.t5 import T5
import tiny

LENGTH = 8
TOL = dict(rtol=1e-5, atol=1e-4)


@functools.lru_cache(maxsize=None)
def _setup():
  """Tiny random FLix T5 of one layer per stack (adapters non-zero; several layers' caches:
  test_t5's cached decoding); EOS logits scaled up so some rows stop early."""
  model = T5(tiny.t5_config(num_encoder_layers=1, num_decoder_layers=1), tiny.flix())
  params = tiny.random_params(model, seed=0)
  kernel = params["decoder"]["logits_dense"]["kernel"]
  params["decoder"]["logits_dense"]["kernel"] = kernel.at[:, decoding.EOS_ID].multiply(3.0)
  enc, _ = tiny.batch()
  return model, params, enc, jnp.asarray(tiny.MIXED_IDS)


def decode(model, params, enc, ids, rng=None, **options):
  """`EncoderDecoderModel.decode` of the T5 `model`; options: DecodeOptions' fields."""
  return EncoderDecoderModel(model).decode(params, enc, ids, options=DecodeOptions(**options),
                                           rng=rng)


def log_probs(model, params, enc, ids, tokens, **kwargs):
  return EncoderDecoderModel(model).sequence_log_probs(params, enc, ids, tokens, **kwargs)


@functools.lru_cache(maxsize=None)
def _greedy():
  model, params, enc, ids = _setup()
  return decode(model, params, enc, ids, max_length=LENGTH)


def _argmax_without_cache(model, params, enc, ids):
  """Greedy decoding by re-running the full teacher-forced decoder at every position."""
  batch = enc.shape[0]
  dec = np.zeros((batch, LENGTH), np.int32)
  out = np.zeros((batch, LENGTH), np.int32)
  done = np.zeros(batch, bool)
  for i in range(LENGTH):
    logits = np.asarray(tiny.apply(model, params, enc, jnp.asarray(dec), ids))
    token = np.where(done, decoding.PAD_ID, logits[:, i].argmax(-1))
    out[:, i] = token
    done |= token == decoding.EOS_ID
    if i + 1 < LENGTH:
      dec[:, i + 1] = token
  return out


def _normalised(model, params, enc, ids, tokens, alpha):
  """Log-prob / brevity penalty at the decode's length (EOS included; LENGTH without EOS)."""
  logprob = np.asarray(log_probs(model, params, enc, ids, tokens))
  tokens = np.asarray(tokens)
  lengths = np.where((tokens == decoding.EOS_ID).any(-1),
                     (tokens == decoding.EOS_ID).argmax(-1) + 1, LENGTH)
  return logprob / np.asarray(decoding.brevity_penalty(alpha, lengths))


def test_greedy_equals_argmax_over_teacher_forced_logits():
  model, params, enc, ids = _setup()
  result = _greedy()
  expected = _argmax_without_cache(model, params, enc, ids)
  tokens = np.asarray(result.tokens)
  assert tokens.shape == (6, LENGTH) and tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens, expected)
  has_eos = (tokens == decoding.EOS_ID).any(-1)
  assert 0 < has_eos.sum() < len(tokens), "the check needs rows with and without EOS"
  ends = [list(row).index(decoding.EOS_ID) for row in tokens[has_eos]]
  assert min(ends) < LENGTH - 2, "the check needs a row that stops well before max_length"
  for row, end in zip(tokens[has_eos], ends):  # PAD after EOS, nothing else.
    assert np.all(row[end + 1:] == decoding.PAD_ID)
  np.testing.assert_allclose(
      result.scores, log_probs(model, params, enc, ids, result.tokens), **TOL)
  # Adapters matter: without the features the decodes differ.
  plain = decode(model, params, enc, jnp.full_like(ids, -1), max_length=LENGTH)
  assert np.any(np.asarray(plain.tokens) != tokens)


def test_one_beam_equals_greedy_without_eos():
  """With one beam the live beam follows greedy's path. (With EOS, beam search may instead return
  an earlier candidate ending in EOS whose log-prob beats the whole greedy sequence, as T5X's
  does; so EOS is switched off here.)"""
  model, params, enc, ids = _setup()
  greedy = decode(model, params, enc, ids, max_length=LENGTH, eos_id=-1)
  beam = decode(model, params, enc, ids, max_length=LENGTH, method="beam", num_beams=1,
                alpha=0.0, eos_id=-1)
  np.testing.assert_array_equal(beam.tokens, greedy.tokens)
  np.testing.assert_allclose(beam.scores, greedy.scores, **TOL)
  assert np.any(np.asarray(greedy.tokens) == decoding.EOS_ID), "EOS must be an ordinary token here"


def test_beam_search_beats_greedy_and_expands_features_per_beam():
  model, params, enc, ids = _setup()
  alpha = 0.6
  beam = decode(model, params, enc, ids, max_length=LENGTH, method="beam",
                num_beams=4, alpha=alpha, num_samples=2)
  assert beam.tokens.shape == (6, 2, LENGTH) and beam.scores.shape == (6, 2)
  scores = np.asarray(beam.scores)
  assert np.all(scores[:, 0] >= scores[:, 1])
  best = beam.tokens[:, 0]
  # Scores are the normalised log-probs of the returned sequences.
  np.testing.assert_allclose(scores[:, 0], _normalised(model, params, enc, ids, best, alpha),
                             **TOL)
  # Examples with different features in one batch == each decoded alone (per-beam feature ids).
  assert np.any(tiny.MIXED_IDS[0] != tiny.MIXED_IDS[1])
  for row in (0, 1):
    alone = decode(model, params, enc[row:row + 1], ids[row:row + 1], max_length=LENGTH,
                   method="beam", num_beams=4, alpha=alpha, num_samples=2)
    np.testing.assert_array_equal(alone.tokens[0], beam.tokens[row])
    np.testing.assert_allclose(alone.scores[0], beam.scores[row], **TOL)
  # Each example really decodes with its own adapters: other id rows change the output.
  swapped = decode(model, params, enc, ids[::-1], max_length=LENGTH, method="beam",
                   num_beams=4, alpha=alpha, num_samples=2)
  assert np.any(np.asarray(swapped.tokens) != np.asarray(beam.tokens))


def test_beam_search_with_a_beam_per_token_is_exhaustive_over_two_positions():
  """What beam search guarantees: with num_beams >= vocab (EOS off, alpha 0), two positions are
  searched exhaustively, so its best sequence is the most likely of all vocab^2 and scores at
  least as well as greedy's."""
  model, params, enc, ids = _setup()
  enc, ids = enc[:3], ids[:3]  # Three examples with different features.
  vocab = model.config.vocab_size
  beam = decode(model, params, enc, ids, max_length=2, method="beam",
                num_beams=vocab, alpha=0.0, eos_id=-1)
  greedy = decode(model, params, enc, ids, max_length=2, eos_id=-1)
  pairs = np.stack(np.meshgrid(np.arange(vocab), np.arange(vocab), indexing="ij"), -1)
  pairs = jnp.asarray(pairs.reshape(-1, 2), jnp.int32)  # [vocab^2, 2]
  for row in range(enc.shape[0]):
    n = pairs.shape[0]
    every = np.asarray(log_probs(
        model, params, jnp.repeat(enc[row:row + 1], n, 0), jnp.repeat(ids[row:row + 1], n, 0),
        pairs, eos_id=-1))
    np.testing.assert_allclose(beam.scores[row], every.max(), **TOL)
    np.testing.assert_array_equal(beam.tokens[row], pairs[every.argmax()])
    assert beam.scores[row] >= greedy.scores[row] - 1e-5


def test_sampling_temperature_and_rng():
  model, params, enc, ids = _setup()
  greedy = _greedy()
  sample = functools.partial(decode, model, params, enc, ids, max_length=LENGTH,
                             method="sample")
  cold = sample(temperature=1e-4, rng=jax.random.key(0))
  np.testing.assert_array_equal(cold.tokens, greedy.tokens)
  np.testing.assert_allclose(cold.scores, greedy.scores, **TOL)
  top1 = sample(temperature=1.0, top_k=1, rng=jax.random.key(0))  # Only the argmax survives.
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)
  a = sample(temperature=1.0, rng=jax.random.key(1), num_samples=3)
  b = sample(temperature=1.0, rng=jax.random.key(1), num_samples=3)
  c = sample(temperature=1.0, rng=jax.random.key(2), num_samples=3)
  assert a.tokens.shape == (6, 3, LENGTH) and a.scores.shape == (6, 3)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert np.any(np.asarray(a.tokens) != np.asarray(c.tokens))
  assert np.any(np.asarray(a.tokens[:, 0]) != np.asarray(a.tokens[:, 1])), "samples differ"
  assert np.any(np.asarray(a.tokens[:, 0]) != np.asarray(greedy.tokens))
  # Samples of example i use example i's features: scores are their teacher-forced log-probs.
  flat = np.asarray(a.tokens).reshape(-1, LENGTH)
  expand = lambda x: jnp.repeat(x, 3, axis=0)
  np.testing.assert_allclose(
      np.asarray(a.scores).reshape(-1),
      log_probs(model, params, expand(enc), expand(ids), flat), **TOL)


def test_bad_arguments_fail_loudly():
  model, params, enc, ids = _setup()
  with pytest.raises(ValueError, match="needs a PRNG key"):
    decode(model, params, enc, ids, max_length=4, method="sample")
  with pytest.raises(ValueError, match="unknown decoding method 'topp'"):
    decode(model, params, enc, ids, max_length=4, method="topp")
  with pytest.raises(ValueError, match="at most num_beams=2"):
    decode(model, params, enc, ids, max_length=4, method="beam", num_beams=2, num_samples=3)
  with pytest.raises(ValueError, match=r"pass feature_ids int \[batch, 2\]"):
    decode(model, params, enc, None, max_length=4)
  with pytest.raises(ValueError, match="feature_ids has 2 rows"):
    decode(model, params, enc, ids[:2], max_length=4)
  with pytest.raises(ValueError, match="out of range"):
    decode(model, params, enc, ids + 5, max_length=4)


def test_search_decodes_any_step_function():
  """Decoding knows no model: over a bigram table (logits = table[previous token]) greedy is the
  argmax chain from the start token, its score the chain's log-probability, and one beam
  (EOS off) follows it."""
  vocab, batch = 7, 2
  table = jnp.asarray(np.random.RandomState(0).normal(size=(vocab, vocab)), jnp.float32)
  step = lambda cache, token: (table[token], cache + 1)
  cache = jnp.zeros((), jnp.int32)
  options = DecodeOptions(max_length=5, eos_id=-1)
  tokens, scores = jax.jit(lambda c: decoding.search(step, c, batch, options, None))(cache)
  chain, logp, prev = [], 0.0, decoding.PAD_ID
  for _ in range(5):
    row = np.asarray(jax.nn.log_softmax(table[prev]))
    prev = int(np.argmax(row))
    logp += row[prev]
    chain.append(prev)
  np.testing.assert_array_equal(tokens, [chain] * batch)
  beam = DecodeOptions(max_length=5, method="beam", num_beams=1, alpha=0.0, eos_id=-1)
  beam_tokens, _ = decoding.search(step, cache, batch, beam, None)
  np.testing.assert_array_equal(beam_tokens, tokens)
  np.testing.assert_allclose(scores, [logp] * batch, rtol=1e-5)


def test_decode_compiles_once_per_model_options_and_shape():
  """Model objects over equal networks share the compiled decode: same options and shapes
  never recompile (evaluation rebuilds model objects, and decodes batch after batch)."""
  model, params, enc, ids = _setup()
  options = DecodeOptions(max_length=3, method="beam", num_beams=2)
  EncoderDecoderModel(model).decode(params, enc, ids, options=options)
  compiled = decode_fns._encoder_decoder_jit._cache_size()
  again = EncoderDecoderModel(T5(model.config, model.flix))  # An equal network, rebuilt.
  again.decode(params, enc + 1, ids[::-1], options=options)
  assert decode_fns._encoder_decoder_jit._cache_size() == compiled
  again.decode(params, enc, ids, options=DecodeOptions(max_length=4, method="beam", num_beams=2))
  assert decode_fns._encoder_decoder_jit._cache_size() == compiled + 1
