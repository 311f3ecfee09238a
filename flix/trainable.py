"""Which parameters train: optax masks over a param tree (T5X freezes with optax masks)."""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import optax

from flix.layers import is_adapter_name

Method = Literal["flix", "lora", "full"]
METHODS = ("flix", "lora", "full")


def is_adapter_param(path) -> bool:
  return is_adapter_name(path[-1].key)


def trainable_mask(params, method: Method = "flix") -> dict:
  """Bool tree like `params`: adapter leaves for flix/lora, every leaf for full fine-tuning."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
  return jax.tree_util.tree_map_with_path(
      lambda path, _: method == "full" or is_adapter_param(path), nn.unbox(params))


def freeze_base(optimizer: optax.GradientTransformation, params,
                method: Method = "flix") -> optax.GradientTransformation:
  """`optimizer` on the trainable leaves; frozen leaves get zero updates and no optimizer state."""
  mask = trainable_mask(params, method)
  labels = jax.tree.map(lambda trainable: "train" if trainable else "frozen", mask)
  return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
