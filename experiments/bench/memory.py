"""`python -m experiments.bench memory`: host page faults per step, freed memory retained or not.

A jitted gradient of an MLP (`--layers` tanh layers of `--d` x `--d`, batch `--batch`, float32;
default 4 x 512 at batch 8192: ~80 MiB of XLA temporaries per call) runs in a fresh XLA:CPU
process (one host device) per mode of `flix.host_memory`: FLIX_HOST_MALLOC=retain (the default:
glibc keeps freed blocks) and =system (glibc's defaults: large blocks are mmapped and unmapped
on every call, so each page of the temporaries faults again). After `--warmup` calls, the minor
page faults (getrusage) of each of `--calls` calls are counted; reported per mode: their median,
XLA's planned temporaries in 4 KiB pages, and faults per temporary page.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import flix
from flix import host_memory
from experiments.bench import core

MODES = ("retain", "system")
PAGE = 4096
CHILD = "import json, sys; from experiments.bench import memory; print(json.dumps(memory.measure(" \
        "*map(int, sys.argv[1:]))))"


def measure(batch: int, d: int, layers: int, warmup: int, calls: int) -> dict:
  """In this (fresh) process: the malloc options of FLIX_HOST_MALLOC, then the gradient's page
  faults per call."""
  applied = host_memory.retain_freed_memory()  # Before JAX starts its backend.
  import resource

  import jax
  import jax.numpy as jnp

  x = jnp.ones((batch, d), jnp.float32)
  ws = [jnp.full((d, d), 0.01, jnp.float32) for _ in range(layers)]

  def loss(ws, x):
    for w in ws:
      x = jnp.tanh(x @ w)
    return jnp.sum(x * x)

  step = jax.jit(jax.grad(loss))
  for _ in range(warmup):
    jax.block_until_ready(step(ws, x))
  faults = []
  for _ in range(calls):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(step(ws, x))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  temp = core.memory_plan(step.lower(ws, x).compile())["temp_bytes"]
  return {"applied": applied, "host_malloc": host_memory.describe(), "all_faults": faults,
          "temp_pages": temp / PAGE}


def run_child(mode: str, args: argparse.Namespace) -> dict:
  """`measure` in a fresh process under FLIX_HOST_MALLOC=mode (XLA:CPU, one host device)."""
  env = dict(os.environ, FLIX_HOST_MALLOC=mode, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  root = os.path.dirname(os.path.dirname(flix.__file__))  # This flix, not another install.
  env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
  sizes = [args.batch, args.d, args.layers, args.warmup, args.calls]
  out = subprocess.run([sys.executable, "-c", CHILD, *map(str, sizes)], env=env,
                       capture_output=True, text=True, timeout=args.timeout)
  if out.returncode:
    raise RuntimeError(f"memory bench ({mode}) failed:\n{out.stderr[-2000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
  load = os.getloadavg()
  records = []
  for mode in MODES:
    child = run_child(mode, args)
    faults = statistics.median(child["all_faults"])  # A call that grows the heap faults once.
    records.append({"mode": mode, "applied": child["applied"],
                    "host_malloc": child["host_malloc"], "faults_per_call": faults,
                    "all_faults": child["all_faults"], "temp_pages": child["temp_pages"],
                    "faults_per_temp_page": faults / child["temp_pages"]})
    core.log(f"memory: {mode}: {faults:.0f} faults per call")
  print(core.table([("FLIX_HOST_MALLOC", lambda r: r["mode"]),
                    ("applied", lambda r: r["applied"]),
                    ("faults/call", lambda r: f"{r['faults_per_call']:.0f}"),
                    ("temp pages", lambda r: f"{r['temp_pages']:.0f}"),
                    ("faults/temp page", lambda r: f"{r['faults_per_temp_page']:.3f}")], records))
  result = {"config": {
      "command": "memory", "batch": args.batch, "d": args.d, "layers": args.layers,
      "warmup": args.warmup, "calls": args.calls, "dtype": "float32",
      "step": "jit(grad(sum(mlp(x)**2))) w.r.t. the weights, tanh layers",
      "process": "fresh python per mode, JAX_PLATFORMS=cpu, XLA_FLAGS unset",
      "statistic": "median minor page faults (getrusage) over calls", "page_bytes": PAGE,
      **core.environment(load)},
      "records": records}
  core.write_json(args.json, result)
  return result


def add_parser(sub) -> None:
  p = sub.add_parser("memory", help="host page faults per step with FLIX_HOST_MALLOC=retain "
                                    "and =system")
  p.add_argument("--batch", type=int, default=8192)
  p.add_argument("--d", type=int, default=512, help="width of every layer")
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--warmup", type=int, default=3, help="untimed calls before counting")
  p.add_argument("--calls", type=int, default=9, help="calls whose faults are counted")
  p.add_argument("--timeout", type=float, default=300, help="seconds per child process")
  p.add_argument("--json", help="write the results here")
  p.set_defaults(run=run, check=check_args)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if min(args.batch, args.d, args.layers, args.calls) < 1 or args.warmup < 0:
    parser.error("--batch, --d, --layers and --calls must be >= 1, --warmup >= 0")
