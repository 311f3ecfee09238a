"""Matmul flops of a traced step, counted from its jaxpr: the whole mesh's work, with every scan
body counted once per iteration.

XLA's `cost_analysis()` of a compiled step counts a loop's body once, so a step whose layers
run in `nn.scan` (`flix.models.scan`) reports about one layer's flops per stack. Counting
`dot_general`s in the jaxpr instead (2 x output elements x contracted size; `ragged_dot` as its
dense equivalent over the groups it holds: 2 x m x k x n) multiplies each `scan` body by its
length, so scanned and unscanned steps count alike. A `while` loop (the decode loop) has no
static trip count: its body is counted once. `cond` counts its most expensive branch. Only
matmuls are counted (elementwise work is a small share of a transformer's flops): these are
model flops, the numerator of the usual MFU, before any partitioning; per device, divide by
the device count (each device's share under an even split).
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.extend import core as jex_core


def _jaxprs_of(value: Any) -> list:
  """The jaxprs inside an equation parameter (a Jaxpr, ClosedJaxpr or a tuple of them)."""
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _jaxprs_of(v)]
  return []


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return 2.0 * math.prod(out) * math.prod(lhs[i] for i in lhs_contract)


def _ragged_dot_flops(eqn) -> float:
  m, k = eqn.invars[0].aval.shape[-2:]
  n = eqn.invars[1].aval.shape[-1]
  return 2.0 * m * k * n


def matmul_flops(jaxpr) -> float:
  """Matmul flops of `jaxpr` (a Jaxpr or ClosedJaxpr; see the module docstring)."""
  if isinstance(jaxpr, jex_core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
      continue
    if name == "ragged_dot":
      total += _ragged_dot_flops(eqn)
      continue
    subs = [j for v in eqn.params.values() for j in _jaxprs_of(v)]
    if not subs:
      continue
    if name == "cond":
      total += max(matmul_flops(j) for j in subs)
    else:
      inner = sum(matmul_flops(j) for j in subs)
      total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def traced_matmul_flops(traced: jax.stages.Traced) -> float:
  """`matmul_flops` of a `jax.jit(...).trace(...)` result."""
  return matmul_flops(traced.jaxpr)
