"""The benches' synthetic problem: model sizes and their flags, the two-type feature space,
random weights, random byte batches and feature ids."""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from flix.config import FlixConfig
from flix.features import FeatureSpace
from flix.models.decoder import DecoderLM
from flix.models.model import BaseModel, DecoderOnlyModel, EncoderDecoderModel
from flix.models.t5 import T5, T5Config

# The byte-level T5.1.1 of flix/configs/models/tiny.gin and small.gin.
MODELS = {
    "tiny": dict(vocab_size=384, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024,
                 num_encoder_layers=4, num_decoder_layers=4),
    "small": dict(vocab_size=384, emb_dim=512, num_heads=8, head_dim=64, mlp_dim=1536,
                  num_encoder_layers=6, num_decoder_layers=6),
}
COMMON = dict(mlp_activations=("gelu", "linear"), logits_via_embedding=False, dropout_rate=0.1)


# -- model ----------------------------------------------------------------------------------------
def add_size_flags(p: argparse.ArgumentParser) -> None:
  """--model and the size overrides of `model_config`."""
  p.add_argument("--model", choices=sorted(MODELS), default="tiny")
  for key in ("emb_dim", "mlp_dim", "num_heads", "head_dim", "layers"):
    p.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None,
                   help="override the model size (smoke tests)")


def model_config(args: argparse.Namespace) -> T5Config:
  sizes = dict(MODELS[args.model], **COMMON)
  for key in ("emb_dim", "mlp_dim", "num_heads", "head_dim"):
    if getattr(args, key) is not None:
      sizes[key] = getattr(args, key)
  if args.layers is not None:
    sizes["num_encoder_layers"] = sizes["num_decoder_layers"] = args.layers
  return T5Config(**sizes)


def feature_config(n_features: int, rank: int) -> FlixConfig:
  """Two types, `task` and `lang`, of n_features / 2 values each, rank `rank` each."""
  if n_features < 2 or n_features % 2:
    raise ValueError(f"F must be an even number >= 2 (two feature types), got {n_features}")
  half = n_features // 2
  return FlixConfig(FeatureSpace.build({"task": [f"t{i}" for i in range(half)],
                                        "lang": [f"l{i}" for i in range(half)]}), ranks=rank)


# -- weights --------------------------------------------------------------------------------------
def model_object(model: BaseModel | T5 | DecoderLM) -> BaseModel:
  """The model object of a network (a model object is returned as it is)."""
  if isinstance(model, BaseModel):
    return model
  return DecoderOnlyModel(model) if isinstance(model, DecoderLM) else EncoderDecoderModel(model)


def synthetic_params(model: BaseModel | T5 | DecoderLM, seed: int) -> dict:
  """Plain float32 params of `model` drawn with numpy (flax's op-by-op init costs seconds per
  model on 2 cores): kernels fan-in scaled normal, norms 1, LoRA A uniform, LoRA B zero."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(model_object(model).abstract_params())
  rng = np.random.default_rng(seed)
  out = []
  for path, leaf in leaves:
    name, shape = str(path[-1].key), leaf.shape
    if name == "scale":
      value = np.ones(shape, np.float32)
    elif name.startswith("lora_b"):
      value = np.zeros(shape, np.float32)
    elif name.startswith("lora_a"):  # [..., r, d_in]
      bound = 1.0 / np.sqrt(shape[-1])
      value = rng.uniform(-bound, bound, shape).astype(np.float32)
    else:
      value = rng.standard_normal(shape, np.float32)
      if name != "embedding":
        value /= np.sqrt(shape[-2])
    out.append(jnp.asarray(value))
  return jax.tree_util.tree_unflatten(treedef, out)


def random_params(model: T5 | DecoderLM, seed: int, b_scale: float = 0.1) -> dict:
  """`synthetic_params` with every LoRA B set to N(0, b_scale^2) instead of zero, so that
  adapters change the outputs; T5's query kernels scaled by head_dim**-0.5 as T5's init does
  (T5 does not scale attention logits: unscaled, the softmax is nearly one-hot and float32
  rounding differences between equivalent models grow). DecoderLM scales its attention logits
  itself, as Llama does, so its queries keep the fan-in scale."""
  params = synthetic_params(model, seed)
  rng = np.random.default_rng(seed + 1)
  query_scale = np.float32(model.config.head_dim ** -0.5 if isinstance(model, T5) else 1.0)

  def fill(path, leaf):
    keys = [str(p.key) for p in path]
    if keys[-1].startswith("lora_b"):
      return jnp.asarray(b_scale * rng.standard_normal(leaf.shape, np.float32))
    if keys[-2:] == ["query", "kernel"]:
      return leaf * query_scale
    return leaf

  return jax.tree_util.tree_map_with_path(fill, params)


# -- inputs ---------------------------------------------------------------------------------------
def random_tokens(rng: np.random.Generator, vocab: int, shape: tuple[int, int]) -> np.ndarray:
  """int32 bytes in [3, vocab): no PAD (0) or EOS (1), so no example is padded."""
  return rng.integers(3, vocab, shape).astype(np.int32)


def shift_right(targets: np.ndarray) -> np.ndarray:
  """Teacher-forced decoder inputs: the start token (PAD, 0), then the targets but the last."""
  return np.pad(np.asarray(targets)[:, :-1], ((0, 0), (1, 0))).astype(np.int32)


def uniform_ids(flix: FlixConfig | None, batch: int, rng: np.random.Generator) -> np.ndarray:
  """One uniformly drawn value per type per example: int32 `[batch, n_types]` (no types: 0)."""
  types = flix.space.types if flix is not None else ()
  if not types:
    return np.zeros((batch, 0), np.int32)
  return np.stack([rng.integers(0, t.size, batch) for t in types], axis=1).astype(np.int32)


def trainer_batch(enc: np.ndarray, targets: np.ndarray, ids: np.ndarray) -> dict[str, jax.Array]:
  """The trainer's batch dict: no padding, every target token weighted."""
  return {"encoder_input_tokens": jnp.asarray(enc, jnp.int32),
          "decoder_input_tokens": jnp.asarray(shift_right(targets)),
          "decoder_target_tokens": jnp.asarray(targets, jnp.int32),
          "decoder_loss_weights": jnp.ones(targets.shape, jnp.float32),
          "feature_ids": jnp.asarray(ids, jnp.int32)}


def combinations(flix: FlixConfig, n: int, seed: int) -> np.ndarray:
  """n distinct (task, lang) combinations, int32 `[n, 2]`, in a seeded random order."""
  sizes = flix.space.sizes
  total = int(np.prod(sizes))
  if n > total:
    raise ValueError(f"{n} distinct combinations asked for, but F = {sum(sizes)} gives only "
                     f"{' x '.join(map(str, sizes))} = {total}")
  flat = np.random.default_rng(seed).permutation(total)[:n]
  return np.stack(np.unravel_index(flat, sizes), axis=1).astype(np.int32)


def batch_ids(combos: np.ndarray, batch: int) -> np.ndarray:
  """Feature ids `[batch, n_types]`: example i gets combination i mod len(combos)."""
  return combos[np.arange(batch) % len(combos)]


@functools.partial(jax.jit, static_argnums=0)
def forward(model: T5 | DecoderLM, params, *inputs):
  """Teacher-forced logits `[B, L, V]` of `model.apply(params, *inputs)`: T5 (enc, dec, ids),
  DecoderLM (tokens, ids); compiled once per model and shapes."""
  return model.apply({"params": params}, *inputs)
