"""Keep freed host memory in the process, so XLA:CPU steps stop page-faulting their buffers.

XLA:CPU allocates each execution's temporaries (hundreds of MB for a T5 train step) with
malloc from its worker threads. glibc serves allocations that large with a fresh `mmap` and
returns them with `munmap` on free, so every step faults in every page of its buffers again:
~190,000 minor faults and 0.3 CPU-s of kernel time per tiny-T5 LoRA step on the development
VM, a third of the step. `retain_freed_memory` sets three glibc malloc options (the standard
low-latency recipe): no mmap for large blocks (M_MMAP_MAX = 0), no trimming of the heap top
(M_TRIM_THRESHOLD), and one arena for all threads (M_ARENA_MAX = 1: other threads' arenas are
capped at 64 MB heaps and would mmap large blocks anyway). Freed blocks are then reused, and a
step's page faults drop to zero. The cost: the process keeps its peak heap until it exits, and
all threads share one malloc lock.

It must run before JAX initialises its backend (the first computation or device query): threads
that already have an arena keep it. Entry points call it first (`flix.gin_utils.run`,
`python -m experiments.bench`, `python -m experiments.demo`, the test set-up). `FLIX_HOST_MALLOC=system` turns
it off; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "FLIX_HOST_MALLOC"
MODES = ("retain", "system")
# <malloc.h> parameter numbers.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: trim only a heap top over 2 GiB.


_STATE = ["not set: retain_freed_memory() was not called"]


def describe() -> str:
  """What this process's host malloc does, for run configs and logs."""
  return _STATE[0]


def retain_freed_memory() -> bool:
  """Sets the glibc options above unless FLIX_HOST_MALLOC=system; whether they were set."""
  mode = os.environ.get(ENV, "retain")
  if mode not in MODES:
    raise ValueError(f"{ENV}={mode!r}; expected one of {MODES}")
  if mode == "system":
    _STATE[0] = f"system: glibc's defaults ({ENV}=system)"
    return False
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
    libc.gnu_get_libc_version  # glibc only: other libcs number their options differently.
  except (OSError, TypeError, AttributeError):
    _STATE[0] = "system: not glibc, options not set"
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  applied = all(mallopt(param, value) == 1 for param, value in (
      (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
  _STATE[0] = (f"retain: glibc M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB ({ENV}="
               f"{os.environ.get(ENV, 'retain (default)')}; {ENV}=system to turn off)"
               if applied else "system: mallopt refused the options")
  return applied
