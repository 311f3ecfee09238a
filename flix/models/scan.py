"""Scanned layer stacks (`nn.scan` over a network's layer block, as T5X's and MaxText's
`scan_layers`): the block is traced and compiled once and run L times in a loop, so the
network's share of a step's compile time no longer grows with depth (docs/tpu.md, "Compile time
and scanned layers").

Inside the network, a scanned stack is one module named `layers` (`STACK`) whose variables carry
a leading layer axis `[L, ...]` with the logical axis name `layers` (`LAYER_AXIS`, mapped to no
mesh axis by the partitioner's rules): `encoder/layers/attention/query/kernel [L, emb, inner]`,
a FLix table `[L, F, r, d]`, and in decoding the KV cache `[L, rows, length, heads, head_dim]`.

Outside the network nothing changes: the parameter tree (train state, optimizer state,
checkpoints, T5X / Hugging Face conversion, merge, compact rows) and the decode cache stay
unscanned, `layers_0 ... layers_{L-1}`. The network's `init` is the unscanned network's (the
same parameters, drawn the same way) and its `apply` stacks the layers it is given
(`stack_layers`, and `unstack_layers` on the mutated cache coming out), so a scanned and an
unscanned network read the same parameters and give the same outputs (to float rounding;
dropout draws its masks per layer from a split rng, so with dropout on the masks differ).
The cost: inside a jitted step the stacked parameters are a copy of the layers' parameters
(one concatenation per kind; their gradients are slices of the stacked gradient), and a cached
decode step restacks the cache once per call.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flix.models import remat

STACK = "layers"  # The scanned stack's module name (unscanned: layers_0 ... layers_{L-1}).
LAYER_AXIS = "layers"  # Logical axis name of the stacked axis (replicated by the rules).
COLLECTIONS = ("params", "cache")  # Variables a scanned layer holds per layer.

# Where a network's stacks sit: (path of the dict holding layers_i, layer count) pairs.
Stacks = Sequence[tuple[tuple[str, ...], int]]


def layer_name(i: int) -> str:
  return f"layers_{i}"


def scanned(cls: type[nn.Module], length: int, policy: str, static_argnums: Sequence[int],
            broadcast: int) -> type[nn.Module]:
  """`cls` (a layer block whose `__call__(carry, *args)` returns `(carry, None)` when built
  with `scanned=True`) rematerialised under `policy` (`flix.models.remat`) and scanned `length`
  times: params and cache stacked on axis 0 (logical axis LAYER_AXIS), a fresh params / dropout
  rng per layer, the `broadcast` arguments after the carry shared by every layer.

  static_argnums: positions of `cls.__call__`'s non-array arguments (self is 0), as
  `remat.block` takes them."""
  if length < 1:
    raise ValueError(f"a scanned stack needs at least 1 layer, got {length}")
  return nn.scan(remat.block(cls, policy, static_argnums, prevent_cse=False),
                 variable_axes={c: 0 for c in COLLECTIONS},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * broadcast, length=length,
                 metadata_params={nn.PARTITION_NAME: LAYER_AXIS})


def _at(tree: dict, path: tuple[str, ...]) -> dict | None:
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree if isinstance(tree, dict) else None


def _replace_at(tree: dict, path: tuple[str, ...], fn: Callable[[dict], dict]) -> dict:
  if not path:
    return fn(tree)
  head, rest = path[0], path[1:]
  return {**tree, head: _replace_at(tree[head], rest, fn)}


def _stack_arrays(values):
  """`[L, ...]` of L arrays (or of L `jax.ShapeDtypeStruct`s: their stacked shape)."""
  first = values[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(values),) + tuple(first.shape), first.dtype)
  return jnp.stack(values)


def _slice_array(value, i: int):
  if isinstance(value, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(tuple(value.shape[1:]), value.dtype)
  return value[i]


def _stack_leaves(*leaves):
  """One stacked leaf `[L, ...]` of L per-layer leaves (boxed: the names gain LAYER_AXIS)."""
  first = leaves[0]
  if isinstance(first, nn.Partitioned):
    value = _stack_arrays([leaf.value for leaf in leaves])
    return first.replace(value=value, names=(LAYER_AXIS,) + tuple(first.names))
  return _stack_arrays(leaves)


def _unstack_leaf(leaf, i: int):
  """Layer i's leaf of a stacked leaf `[L, ...]` (boxed: LAYER_AXIS dropped from the names)."""
  if isinstance(leaf, nn.Partitioned):
    names = tuple(leaf.names)
    if not names or names[0] != LAYER_AXIS:
      raise ValueError(f"a stacked boxed leaf must lead with the {LAYER_AXIS!r} axis, got "
                       f"axes {names}")
    return leaf.replace(value=_slice_array(leaf.value, i), names=names[1:])
  return _slice_array(leaf, i)


def _is_leaf(x) -> bool:
  return isinstance(x, nn.Partitioned)


def stack_layers(tree: dict, stacks: Stacks) -> dict:
  """`tree` (one collection: params or cache) with each stack's `layers_0 ... layers_{L-1}`
  replaced by `layers`, every leaf stacked `[L, ...]` (a scanned network's layout). Collections
  without the stack (e.g. a cache without layer entries) are returned as they are; a stack with
  some but not all of its L layers is an error naming the missing ones."""
  for path, length in stacks:
    node = _at(tree, path)
    if node is None:
      continue
    present = [i for i in range(length) if layer_name(i) in node]
    if not present:
      continue
    if len(present) != length:
      missing = [layer_name(i) for i in range(length) if i not in present]
      raise ValueError(f"cannot stack {'/'.join(path) or 'the root'}'s {length} layers: "
                       f"{missing} are missing")
    if STACK in node:
      raise ValueError(f"{'/'.join(path) or 'the root'} holds both {STACK!r} and "
                       f"{layer_name(0)!r}: already stacked?")

    def stack(node, length=length):
      layers = [node[layer_name(i)] for i in range(length)]
      rest = {k: v for k, v in node.items() if k not in {layer_name(i) for i in range(length)}}
      return {**rest, STACK: jax.tree.map(_stack_leaves, *layers, is_leaf=_is_leaf)}

    tree = _replace_at(tree, path, stack)
  return tree


def unstack_layers(tree: dict, stacks: Stacks) -> dict:
  """Inverse of `stack_layers`: each stack's `layers` `[L, ...]` split into `layers_0 ...
  layers_{L-1}` (the unscanned network's layout)."""
  for path, length in stacks:
    node = _at(tree, path)
    if node is None or STACK not in node:
      continue

    def unstack(node, length=length):
      leaves = jax.tree.leaves(node[STACK], is_leaf=_is_leaf)
      for leaf in leaves:
        size = (leaf.value if isinstance(leaf, nn.Partitioned) else leaf).shape[:1]
        if tuple(size) != (length,):
          raise ValueError(f"a stacked leaf of {STACK!r} has leading axis {tuple(size)}, "
                           f"expected ({length},) layers")
      rest = {k: v for k, v in node.items() if k != STACK}
      layers = {layer_name(i): jax.tree.map(lambda x, i=i: _unstack_leaf(x, i), node[STACK],
                                            is_leaf=_is_leaf) for i in range(length)}
      return {**rest, **layers}

    tree = _replace_at(tree, path, unstack)
  return tree


def _map_collections(variables: Any, fn: Callable[[dict], dict]) -> Any:
  if not isinstance(variables, dict) and not hasattr(variables, "items"):
    return variables
  return {name: fn(dict(value)) if name in COLLECTIONS else value
          for name, value in dict(variables).items()}


def apply_stacked(apply: Callable, stacks: Stacks, variables, *args, **kwargs):
  """`apply(variables, ...)` (a flax `Module.apply`) of a scanned network on unscanned
  `variables`: params and cache are stacked going in, and mutated collections (e.g. the cache)
  unstacked coming out."""
  variables = _map_collections(variables, lambda t: stack_layers(t, stacks))
  out = apply(variables, *args, **kwargs)
  if kwargs.get("mutable", False) and isinstance(out, tuple) and len(out) == 2:
    result, mutated = out
    return result, _map_collections(mutated, lambda t: unstack_layers(t, stacks))
  return out


class UnscannedTree:
  """Mixin for a flax network with a `scan_layers` field and a `stacks()` method: its `init`
  and `apply` use the unscanned variable tree whether or not the layers are scanned.

  `init_with_output` (and so `init`) is the unscanned network's (the same variables, drawn the
  same way: a scanned run starts where an unscanned one does); `apply` stacks the given layers
  going in (`apply_stacked`)."""

  def apply(self, variables, *args, **kwargs):
    if not self.scan_layers:
      return super().apply(variables, *args, **kwargs)
    return apply_stacked(super().apply, self.stacks(), variables, *args, **kwargs)

  def init_with_output(self, *args, **kwargs):
    if not self.scan_layers:
      return super().init_with_output(*args, **kwargs)
    return self.clone(scan_layers=False).init_with_output(*args, **kwargs)
