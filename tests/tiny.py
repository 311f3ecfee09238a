"""Small, seeded building blocks shared by the tests."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flix.config import FlixConfig
from flix.features import FeatureSpace
from flix.layers import is_adapter_name
from flix.models.t5 import T5, T5Config, abstract_params, init_params

TASKS = ("cardinal", "ordinal", "currency")
LANGS = ("en", "fr", "de", "fi")


RANKS = {"task": 4, "lang": 2}


def space() -> FeatureSpace:
  return FeatureSpace.build({"task": TASKS, "lang": LANGS})


def flix(shared_rank: int = 2, **kwargs) -> FlixConfig:
  """The tests' FLix: `space()` with task rank 4, language rank 2 and a shared adapter."""
  return FlixConfig(space(), ranks=RANKS, shared_rank=shared_rank, **kwargs)


def t5_config(**overrides) -> T5Config:
  """A tiny T5.1.1 of one layer per stack: every layer type once, at half the compile time of
  two (compiling dominates these tests); tests of several layers ask for them."""
  sizes = dict(vocab_size=64, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
               num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  sizes.update(overrides)
  return T5Config(**sizes)


def randomize_adapters(params, seed: int = 0, scale: float = 0.3):
  """Plain params with every adapter leaf (B included) set to random values."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(nn.unbox(params))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = [scale * jax.random.normal(k, v.shape, v.dtype) if is_adapter_name(p[-1].key)
         else v for k, (p, v) in zip(keys, leaves)]
  return jax.tree_util.tree_unflatten(treedef, out)


def batch(seed: int = 0, size: int = 6, in_len: int = 7, out_len: int = 5, vocab: int = 64):
  """Encoder tokens `[size, in_len]` with ragged padding, decoder inputs `[size, out_len]`."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(3, vocab, (size, in_len))
  for i in range(size):
    enc[i, in_len - (i % 3):] = 0
  dec = rng.randint(3, vocab, (size, out_len))
  dec[:, 0] = 0
  return jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32)


MIXED_IDS = np.array([[0, 0], [1, 2], [2, -1], [-1, 3], [-1, -1], [1, 0]], np.int32)


@functools.partial(jax.jit, static_argnums=0)
def apply(model, params, enc, dec, ids):
  """Teacher-forced logits, compiled once per model and shape."""
  return model.apply({"params": params}, enc, dec, ids)


@functools.lru_cache(maxsize=None)
def _init(model: T5, seed: int):
  return init_params(model, jax.random.key(seed))


def model_and_params(flix_cfg: FlixConfig | None, seed: int = 0, **overrides):
  """A tiny T5 and its (cached, boxed) fresh params."""
  model = T5(t5_config(**overrides), flix_cfg)
  return model, _init(model, seed)


def _random_tree(abstract, seed: int, adapter_scale: float, norm_jitter: float = 0.0):
  """Seeded numpy draws for an abstract param tree: norm scales 1 (+ norm_jitter * N(0, 1)),
  embeddings N(0, 1), biases 0.5 * N(0, 1), adapters adapter_scale * N(0, 1), kernels and
  relative position tables N(0, 1) / sqrt(fan-in)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  rng = np.random.RandomState(seed)
  out = []
  for path, leaf in leaves:
    name = str(path[-1].key)
    if name == "scale":
      value = 1.0 + (norm_jitter * rng.normal(size=leaf.shape) if norm_jitter
                     else np.zeros(leaf.shape))
    elif name == "embedding":
      value = rng.normal(size=leaf.shape)
    elif name == "bias":
      value = 0.5 * rng.normal(size=leaf.shape)
    elif is_adapter_name(name):
      value = adapter_scale * rng.normal(size=leaf.shape)
    else:
      value = rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[-2])
    out.append(jnp.asarray(value, leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def random_params(model: T5, seed: int = 0, adapter_scale: float = 0.3):
  """Seeded random plain params of `model` (adapters non-zero) without running flax init.

  Much cheaper than `init_params` on CPU (one abstract trace, numpy draws): for tests that
  need some random model, not flax's initialisers.
  """
  return _random_tree(abstract_params(model), seed, adapter_scale)


# -- decoder-only ---------------------------------------------------------------------------------
def decoder_config(**overrides):
  """A tiny DecoderConfig of one layer: GQA (4 query, 2 key/value heads), SwiGLU, untied."""
  from flix.models.decoder import DecoderConfig
  sizes = dict(vocab_size=64, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48,
               num_layers=1)
  sizes.update(overrides)
  return DecoderConfig(**sizes)


def decoder_random_params(model, seed: int = 0, adapter_scale: float = 0.3):
  """Seeded random plain params of a DecoderLM (norms and biases non-trivial, adapters
  non-zero), drawn with numpy from the abstract shapes."""
  from flix.models.decoder import abstract_params as decoder_abstract_params
  return _random_tree(decoder_abstract_params(model), seed, adapter_scale, norm_jitter=0.2)


@functools.partial(jax.jit, static_argnums=0)
def lm_apply(model, params, tokens, ids):
  """Teacher-forced decoder-only logits, compiled once per model and shape."""
  return model.apply({"params": params}, tokens, ids)
