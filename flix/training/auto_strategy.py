"""`auto` on a TPU: the FLix strategy whose compiled step is cheapest on the target chip.

On CPU `auto` is `FlixConfig.resolved_strategy` (a rule tuned on CPU timings). On a target
with published peaks (a TPU: `flix.training.topology.Chip`), `choose` compiles the step once
per candidate strategy (masked, gather, ragged) for the step's actual shapes and picks the
fitting candidate with the least roofline time (`flix.training.aot`: max(compute, memory) from
XLA's `cost_analysis()` and the step's model flops); ties go to fewer flops. A
candidate that XLA refuses for memory, or whose total exceeds the chip's HBM, does not fit; one
that XLA fails to compile (a compiler error, e.g. libtpu 0.0.42.1 on `ragged_dot` with 9,984
groups) is not a candidate either, and its error is kept. Where none fits, `auto` falls back to
the CPU rule (and that step's refusal or error follows). The choice is cached per process by the
step's shapes and layout (`key`), printed, and written into `flix.compile`'s report as `auto`:
{pick, candidates: [{strategy, flops, bytes_accessed, model_flops_per_device, temp_bytes, fits,
roofline_seconds, error}]} (`error`: null, or why the candidate has no cost).
"""

from __future__ import annotations

import sys
from typing import Callable, Hashable

import jax

from flix.config import FlixConfig
from flix.errors import DoesNotFitError
from flix.training import topology

CANDIDATES = ("masked", "gather", "ragged")
COMPILE_FAILED = "XLA failed to compile it"
_CACHE: dict[Hashable, dict] = {}


def applies(flix: FlixConfig | None, chip: topology.Chip) -> bool:
  """Whether `auto` is chosen by compiling: FLix feature tables with strategy 'auto', on a chip
  whose peaks are known (a TPU; not a CPU)."""
  return (flix is not None and flix.strategy == "auto" and flix.space.n_types > 0
          and chip.peak_flops is not None and chip.hbm_bandwidth is not None)


def choose(flix: FlixConfig, key: Hashable, compile_with: Callable[[str], object],
           what: str = "the train step") -> tuple[dict, dict[str, object]]:
  """(the `auto` report, {strategy: compiled} of the candidates that compiled).

  compile_with(strategy): the step compiled with that strategy, an `aot.Compiled` (its report's
  `fits` and `cost`); it raises DoesNotFitError (XLA's out-of-memory) or JaxRuntimeError (any
  other compiler error). Cached under `key` (a later call compiles
  nothing and returns the cached report with no compiled candidates).
  """
  if key in _CACHE:
    return _CACHE[key], {}
  candidates, compiled = [], {}
  for strategy in CANDIDATES:
    try:
      result = compile_with(strategy)
    except DoesNotFitError as e:
      candidates.append(_without_cost(strategy, str(e)))
      continue
    except jax.errors.JaxRuntimeError as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      candidates.append(_without_cost(strategy, f"{COMPILE_FAILED}: {first}"))
      continue
    compiled[strategy] = result
    report = result.report
    candidates.append({"strategy": strategy, "flops": report["cost"]["flops"],
                       "bytes_accessed": report["cost"]["bytes_accessed"],
                       "model_flops_per_device": report["cost"]["model_flops_per_device"],
                       "temp_bytes": report["memory"]["temp_bytes"], "fits": report["fits"],
                       "roofline_seconds": report["cost"]["roofline_seconds"], "error": None})
  fitting = [c for c in candidates if c["fits"] and c["roofline_seconds"] is not None]
  if fitting:
    pick = min(fitting, key=lambda c: (c["roofline_seconds"], c["flops"]))["strategy"]
  else:
    pick = flix.resolved_strategy()
  auto = {"pick": pick, "candidates": candidates}
  _CACHE[key] = auto
  costs = ", ".join(f"{c['strategy']} {_seconds(c)}" for c in candidates)
  print(f"FLix strategy 'auto' for {what}: {pick} (roofline per step: {costs})",
        file=sys.stderr, flush=True)
  return auto, compiled


def _without_cost(strategy: str, error: str) -> dict:
  return {"strategy": strategy, "flops": None, "bytes_accessed": None,
          "model_flops_per_device": None, "temp_bytes": None, "fits": False,
          "roofline_seconds": None, "error": error}


def _seconds(candidate: dict) -> str:
  if (candidate["error"] or "").startswith(COMPILE_FAILED):
    return "failed to compile"
  if not candidate["fits"]:
    return "does not fit"
  return f"{candidate['roofline_seconds'] * 1e3:.3g} ms"
