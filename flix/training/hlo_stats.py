"""What a compiled executable says about itself: the collectives of its optimized HLO, its
per-device memory and its cost, read into plain numbers (`flix.compile`'s report).

Collectives are read from the optimized (SPMD-partitioned, per-device) HLO text, one entry per
kind: how many such instructions the module holds (`count`), how many times they run per step
(`executions`: an instruction in a scanned stack's loop body runs once per layer;
`flix.training.hlo_text`) and the bytes of their results on one device per step (the gathered
array of an all-gather, the reduced arrays of an all-reduce, the scattered shard of a
reduce-scatter), each instruction's bytes times its executions. A loop whose trip count is
unknown (a decode loop) counts once.
"""

from __future__ import annotations

import math
import re
from typing import Any

from flix.training import hlo_text

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all",
               "collective-permute", "collective-broadcast")
# Async forms whose result tuple holds (operand, output[, context...]): the output is element 1.
_OUTPUT_ELEMENT = {"all-gather-start": 1, "collective-permute-start": 1}

_DTYPE_BYTES = {"pred": 1, "s2": 1, "u2": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2,
                "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8,
                "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# Opcode -> kind: a collective's synchronous and async-start forms (a -done moves nothing new).
_KIND = {op: kind for kind in COLLECTIVES for op in (kind, kind + "-start")}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")


def array_bytes(type_text: str) -> list[int]:
  """Bytes of each array in an HLO type (`bf16[8,128]{1,0}` or a tuple of them), in order;
  fp8 types and others not listed count 1 byte per element."""
  out = []
  for dtype, dims in _ARRAY.findall(type_text):
    if dtype == "token":
      continue
    count = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    out.append(count * _DTYPE_BYTES.get(dtype, 1))
  return out


def collectives(text: str) -> list[dict[str, Any]]:
  """[{kind, count, executions, bytes}] of every collective kind in the HLO module `text` (see
  the module docstring), kinds in COLLECTIVES order; kinds that do not occur are left out."""
  module = hlo_text.parse(text)
  totals: dict[str, list[int]] = {}
  for name, instructions in module.computations.items():
    runs = module.executions.get(name, 0)
    for inst in instructions:
      if inst.op not in _KIND:
        continue
      sizes = array_bytes(inst.type)
      if inst.op in _OUTPUT_ELEMENT and len(sizes) > _OUTPUT_ELEMENT[inst.op]:
        sizes = [sizes[_OUTPUT_ELEMENT[inst.op]]]
      count = totals.setdefault(_KIND[inst.op], [0, 0, 0])
      count[0] += 1
      count[1] += runs
      count[2] += runs * sum(sizes)
  return [{"kind": k, "count": totals[k][0], "executions": totals[k][1], "bytes": totals[k][2]}
          for k in COLLECTIVES if k in totals]


def memory(compiled) -> dict[str, int]:
  """Per-device bytes of a compiled executable (`memory_analysis()`): arguments, outputs,
  aliased (donated) outputs, temporaries, generated code, and their total: arguments + outputs
  - aliased + temporaries + code."""
  stats = compiled.memory_analysis()
  out = {"argument": int(stats.argument_size_in_bytes),
         "output": int(stats.output_size_in_bytes),
         "alias": int(stats.alias_size_in_bytes),
         "temp": int(stats.temp_size_in_bytes),
         "code": int(stats.generated_code_size_in_bytes)}
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["code"]
  return out


def cost(compiled) -> dict[str, float | None]:
  """{flops, bytes_accessed, optimal_seconds} of one device's program (`cost_analysis()`);
  None where XLA gives none."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  analysis = analysis or {}
  get = lambda key: float(analysis[key]) if key in analysis else None
  return {"flops": get("flops"), "bytes_accessed": get("bytes accessed"),
          "optimal_seconds": get("optimal_seconds")}
