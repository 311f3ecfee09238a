"""Rematerialisation of a network's layer blocks (`nn.remat` with a `jax.checkpoint_policies`
policy), chosen by name as MaxText's `remat_policy`.

Policies (what the backward pass keeps from the forward pass of each block; the rest is
recomputed):
  none: no remat (everything the backward pass needs is kept; today's default).
  full: nothing (`nothing_saveable`): each block's forward runs again in the backward pass;
    the least activation memory, about a third more flops.
  dots_saveable: every matmul's output (`dots_saveable`); elementwise work is recomputed.
  dots_with_no_batch_dims_saveable: matmul outputs without batch dimensions (projections, not
    attention scores).
  everything_saveable: everything (remat's structure without recomputation).
The parameter tree is unchanged (`nn.remat` keeps the block's name), so checkpoints, T5X /
Hugging Face conversion and merge do not see the policy.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def check_policy(policy: str) -> str:
  """`policy` if it names one of POLICIES; ValueError naming them otherwise."""
  if policy not in POLICIES:
    raise ValueError(f"unknown remat policy {policy!r}; expected one of {sorted(POLICIES)}")
  return policy


def block(cls: type[nn.Module], policy: str, static_argnums: Sequence[int],
          prevent_cse: bool = True) -> type[nn.Module]:
  """`cls` rematerialised under `policy` (itself for 'none'). static_argnums: positions of
  `cls.__call__`'s non-array arguments (self is 0), passed positionally. prevent_cse: False
  inside `nn.scan`, which already keeps XLA from merging the recomputation with the forward
  pass (`jax.checkpoint`'s advice)."""
  if check_policy(policy) == "none":
    return cls
  return nn.remat(cls, policy=POLICIES[policy], prevent_cse=prevent_cse,
                  static_argnums=tuple(static_argnums))
