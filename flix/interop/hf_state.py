"""Hugging Face state dicts <-> flix param trees, given a family's leaf map.

A leaf map lists every base parameter once as `(flix path, HF key, transposed)`: torch Linear
weights are `(out, in)` where flix kernels are `[in, out]` (transposed=True); norms, biases and
embeddings keep their layout. The expected shapes come from the flix model's abstract params,
so a tensor that does not fit is named with both shapes before anything is built.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import flax.linen as nn
import numpy as np

from flix.errors import HFConversionError
from flix.layers import is_adapter_name

Path = tuple[str, ...]
LeafMap = Sequence[tuple[Path, str, bool]]


def get_path(tree, path: Path):
  for k in path:
    tree = tree[k]
  return tree


def get_path_or_none(tree, path: Path):
  try:
    return get_path(tree, path)
  except (KeyError, TypeError):
    return None


def set_path(tree: dict, path: Path, value) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


class StateReader:
  """Takes tensors out of a state dict by key, checking shapes; remembers what was used.

  architecture: named in errors (e.g. "LlamaForCausalLM"). ignored: keys that may be present
  but carry nothing of their own (e.g. rotary `inv_freq` buffers).
  """

  def __init__(self, state: Mapping[str, np.ndarray], architecture: str,
               ignored: Iterable[str] = ()):
    self.state = dict(state)
    self.architecture = architecture
    self.used = set(k for k in ignored if k in self.state)

  def __contains__(self, key: str) -> bool:
    return key in self.state

  def take(self, key: str, shape: Sequence[int]) -> np.ndarray:
    """float32 tensor `key` of exactly `shape` (HF layout)."""
    if key not in self.state:
      raise HFConversionError(f"weights: missing {key} (expected shape {tuple(shape)})")
    value = np.asarray(self.state[key], np.float32)
    if value.shape != tuple(shape):
      raise HFConversionError(f"weights: {key} has shape {value.shape}, expected {tuple(shape)} "
                              "from config.json")
    self.used.add(key)
    return value

  def require(self, key: str, why: str) -> None:
    """Raises, naming `key` and `why` it is needed, when the state dict lacks it."""
    if key not in self.state:
      raise HFConversionError(f"weights: missing {key} ({why})")

  def take_tied(self, key: str, reference: np.ndarray, why: str) -> None:
    """Checks an optional copy of a tied tensor: absent, or equal to `reference`."""
    if key in self.state and not np.array_equal(self.take(key, reference.shape), reference):
      raise HFConversionError(f"weights: {key} differs from the tensor it is tied to: {why}")

  def ignore(self, patterns: Iterable[str]) -> None:
    """Marks every key ending in one of `patterns` as used."""
    patterns = tuple(patterns)
    self.used.update(k for k in self.state if k.endswith(patterns))

  def check_all_used(self) -> None:
    unexpected = sorted(set(self.state) - self.used)
    if unexpected:
      raise HFConversionError(f"weights: unexpected tensors for a {self.architecture}: "
                              f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")


def read_leaves(reader: StateReader, leaf_map: LeafMap, abstract) -> dict:
  """flix params (plain float32 numpy) of every leaf of `leaf_map`; shapes from `abstract`
  (the model's abstract params: jax.ShapeDtypeStruct leaves)."""
  params: dict = {}
  for path, key, transposed in leaf_map:
    shape = tuple(get_path(abstract, path).shape)
    value = reader.take(key, shape[::-1] if transposed else shape)
    set_path(params, path, np.ascontiguousarray(value.T) if transposed else value)
  return params


def check_no_adapters(params) -> None:
  """Refuses params with adapter leaves: a HF model has no place for them."""
  def first_adapter(tree, path=()):
    for k, v in tree.items():
      if isinstance(v, dict):
        found = first_adapter(v, path + (k,))
        if found:
          return found
      elif is_adapter_name(k):
        return ".".join(path)
    return None

  where = first_adapter(params)
  if where:
    raise HFConversionError(f"params carry adapters (e.g. at {where}); merge a feature "
                            "combination (merge_params) or drop them (checkpoints.strip_adapters) "
                            "first")


def write_leaves(params, leaf_map: LeafMap) -> dict[str, np.ndarray]:
  """The HF state dict (float32 numpy) of `leaf_map`'s leaves of base params `params`."""
  params = nn.unbox(params)
  check_no_adapters(params)
  out = {}
  for path, key, transposed in leaf_map:
    value = np.asarray(get_path(params, path), np.float32)
    out[key] = np.ascontiguousarray(value.T if transposed else value)
  return out
