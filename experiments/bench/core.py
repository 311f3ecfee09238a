"""What every bench shares: interleaved timing, XLA's memory plan, the run's environment, and
the report (a markdown table, bar verdicts, JSON)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
  """`--F 8,64,1024` -> [8, 64, 1024]."""
  return [int(v) for v in text.split(",") if v.strip()]


def str_list(text: str) -> list[str]:
  return [v for v in text.split(",") if v]


# -- timing ---------------------------------------------------------------------------------------
def time_rounds(calls: Sequence[Callable[[], Any]], repeats: int, warmup: int = 1,
                settle: int = 0, label: str = "bench") -> list[list[float]]:
  """Seconds of every call in `repeats` interleaved rounds, after `warmup` untimed calls of each.

  Every round runs every call in the given order: `settle` untimed calls, then one timed call.
  The settling calls absorb what the previous configuration left behind (caches evicted,
  allocator pages released by its large buffers), so each time is a configuration's own
  steady-state cost. A call blocks until its result is ready; the result is dropped only after
  the clock stops.
  """
  if warmup:
    start = time.perf_counter()
    for call in calls:
      for _ in range(warmup):
        call()
    log(f"{label}: warmed up {len(calls)} configurations in {time.perf_counter() - start:.1f} s")
  seconds = [[] for _ in calls]
  for i in range(repeats):
    start = time.perf_counter()
    for call, times in zip(calls, seconds):
      for _ in range(settle):
        call()
      t0 = time.perf_counter()
      out = call()
      times.append(time.perf_counter() - t0)
      del out
    log(f"{label}: round {i + 1}/{repeats}: {time.perf_counter() - start:.1f} s")
  return seconds


def summary(seconds: Sequence[float], tokens: int | None = None) -> dict:
  """Median (the reported statistic), minimum and every time; tokens/s of the median."""
  median = statistics.median(seconds)
  out = {"seconds": median, "min_seconds": min(seconds), "all_seconds": list(seconds)}
  if tokens is not None:
    out["tokens_per_s"] = tokens / median
  return out


@dataclasses.dataclass
class Case:
  """One timed configuration: what its record says it is, and `run`, one blocking call."""

  bench: str
  framework: str
  method: str
  setting: dict
  tokens: int
  run: Callable[[], Any]
  seconds: list[float] = dataclasses.field(default_factory=list)

  def record(self) -> dict:
    return {"bench": self.bench, "framework": self.framework, "method": self.method,
            **self.setting, "tokens": self.tokens, **summary(self.seconds, self.tokens)}


def time_cases(cases: Sequence[Case], repeats: int, warmup: int, label: str) -> None:
  """`time_rounds` of the cases' runs into their `seconds`."""
  for c, seconds in zip(cases, time_rounds([c.run for c in cases], repeats, warmup, label=label)):
    c.seconds = seconds


def memory_plan(compiled) -> dict:
  """XLA's plan for a compiled step: its peak live bytes = arguments + outputs - donated
  aliases + temporaries (not the process RSS)."""
  stats = compiled.memory_analysis()
  get = lambda k: int(getattr(stats, k, 0) or 0)
  args, out, alias, temp = (get("argument_size_in_bytes"), get("output_size_in_bytes"),
                            get("alias_size_in_bytes"), get("temp_size_in_bytes"))
  return {"argument_bytes": args, "output_bytes": out, "alias_bytes": alias, "temp_bytes": temp,
          "peak_bytes": args + out - alias + temp}


# -- environment ----------------------------------------------------------------------------------
def environment(loadavg_at_start: tuple[float, float, float]) -> dict:
  """Versions, device and machine, and the load average at start and now (other work on the
  machine skews every time)."""
  return {"jax": jax.__version__, "backend": jax.default_backend(),
          "device": str(jax.devices()[0].device_kind), "cpu_count": os.cpu_count(),
          "python": platform.python_version(), "platform": platform.platform(),
          "loadavg_at_start": loadavg_at_start, "loadavg_at_end": os.getloadavg()}


# -- report ---------------------------------------------------------------------------------------
def dash(value, fmt: str = "") -> str:
  """`value` formatted, or "-" for None."""
  return "-" if value is None else format(value, fmt)


def table(columns: Sequence[tuple[str, Callable[[dict], str]]], records: Sequence[dict]) -> str:
  """A markdown table: one (header, record -> cell text) per column, one row per record."""
  rows = [[str(cell(r)) for _, cell in columns] for r in records]
  widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, (h, _) in enumerate(columns)]
  line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
  return "\n".join([line([h for h, _ in columns]), line(["-" * w for w in widths])] +
                   [line(row) for row in rows])


def bar_line(holds: bool, text: str) -> str:
  return f"bar {'HOLDS' if holds else 'DOES NOT HOLD'}: {text}"


def write_json(path: str | None, result: dict) -> None:
  if path:
    with open(path, "w") as f:
      json.dump(result, f, indent=2, default=str)
