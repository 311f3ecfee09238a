"""flix.host_memory: with freed memory retained, a repeated jitted gradient stops page-faulting.

Each case runs in a fresh process: the malloc options must be set before JAX starts its
backend, and this test process already set them (conftest.py).
"""

import os
import subprocess
import sys

import pytest

# A 4-layer MLP gradient at batch 8192: ~80 MiB of XLA temporaries (20,480 pages) per call.
SCRIPT = """
import resource
from flix import host_memory
applied = host_memory.retain_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((8192, 512), jnp.float32)
ws = [jnp.full((512, 512), 0.01, jnp.float32) for _ in range(4)]
def loss(ws, x):
  for w in ws:
    x = jnp.tanh(x @ w)
  return jnp.sum(x * x)
step = jax.jit(jax.grad(loss))
for _ in range(3):
  jax.block_until_ready(step(ws, x))
faults = []
for _ in range(9):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(step(ws, x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(faults)[4]  # Median: a call that has to grow the heap first faults once.
temp_pages = step.lower(ws, x).compile().memory_analysis().temp_size_in_bytes / 4096
print(applied, faults, temp_pages)
"""


def run(mode):
  env = dict(os.environ, FLIX_HOST_MALLOC=mode, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # One host device.
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  applied, faults, temp_pages = out.stdout.split()
  return applied == "True", float(faults), float(temp_pages)


def test_retained_memory_removes_per_step_page_faults():
  applied, faults, temp_pages = run("retain")
  system_applied, system_faults, _ = run("system")
  assert applied and not system_applied
  assert temp_pages > 10_000
  # glibc mmaps and unmaps the temporaries on every call: each page faults again.
  assert system_faults > 0.5 * temp_pages, (system_faults, temp_pages)
  assert faults < 0.01 * temp_pages, (faults, temp_pages)


def test_unknown_mode_is_refused(monkeypatch):
  from flix import host_memory
  monkeypatch.setenv("FLIX_HOST_MALLOC", "jemalloc")
  with pytest.raises(ValueError, match=r"FLIX_HOST_MALLOC='jemalloc'; expected one of "
                                       r"\('retain', 'system'\)"):
    host_memory.retain_freed_memory()
