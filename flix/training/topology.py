"""Compile targets without the hardware: a TPU topology's devices, or a mesh of CPU host devices,
and each chip's published figures.

`target_devices("v5e:16x16")` returns the 256 device descriptions libtpu gives for that slice
(`jax.experimental.topologies.get_topology_desc`; no TPU needed, JAX may run on the CPU), to
lower and compile for but not to run on. `target_devices("cpu:8")` returns 8 CPU devices of
this process (`--xla_force_host_platform_device_count`, set before JAX starts; `flix.compile`
does it).

Chip figures (per chip; Cloud TPU system architecture pages, cited in docs/tpu.md): peak bf16
FLOP/s, HBM capacity, HBM bandwidth. Where libtpu describes each TensorCore of a chip as a device
(v4: `v4:4x4x4` is 128 devices of 64 chips), each device gets its share (`Chip.per_core`). HBM capacities are taken in GiB (2^30 bytes). A CPU
"chip" has no published peak or bandwidth (None); its memory is the host's physical memory
shared by the N devices, i.e. RAM / N each.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any

import jax

from flix import platforms

GIB = 2 ** 30
LIBTPU_PIN = "libtpu==0.0.42.1"  # The libtpu of the jax pin (jax[tpu]==0.10.2).


@dataclasses.dataclass(frozen=True)
class Chip:
  """One chip's figures. peak_flops: bf16 FLOP/s; hbm_bytes: memory per chip; hbm_bandwidth:
  bytes/s. None where unknown (CPU). memory: what hbm_bytes is, in words."""

  name: str
  peak_flops: float | None
  hbm_bytes: int
  hbm_bandwidth: float | None
  memory: str = "HBM"

  def per_core(self, cores: int) -> "Chip":
    """This chip's figures for one of its `cores` TensorCores, where each is a device of its
    own (libtpu describes a v4 slice that way: v4:2x2x2 is 16 devices of 8 chips)."""
    if cores == 1:
      return self
    return dataclasses.replace(
        self, peak_flops=self.peak_flops / cores, hbm_bytes=self.hbm_bytes // cores,
        hbm_bandwidth=self.hbm_bandwidth / cores,
        memory=f"HBM (a {self.name} chip's {self.hbm_bytes // GIB} GiB over its {cores} "
               "TensorCores, each a device)")


# device_kind (what libtpu's device descriptions say) -> the chip.
TPU_CHIPS = {
    "TPU v4": Chip("v4", 275e12, 32 * GIB, 1200e9),
    "TPU v5 lite": Chip("v5e", 197e12, 16 * GIB, 819e9),
    "TPU v5": Chip("v5p", 459e12, 95 * GIB, 2765e9),
    "TPU v5p": Chip("v5p", 459e12, 95 * GIB, 2765e9),
    "TPU v6 lite": Chip("v6e", 918e12, 32 * GIB, 1638e9),
}
# Topology name prefix -> Cloud's accelerator-type prefix (and TensorCores per chip), for the
# TPU_ACCELERATOR_TYPE that keeps libtpu quiet on a host without TPUs.
_ACCELERATOR_TYPES = {"v4": ("v4", 2), "v5p": ("v5p", 2), "v5e": ("v5litepod", 1),
                      "v6e": ("v6e", 1)}
_TOPOLOGY = re.compile(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+)+)")
_CPU = re.compile(r"cpu:(\d+)")


def parse(name: str) -> tuple[str, int]:
  """("cpu" or the TPU generation, devices) of a topology name: `cpu:N` or `GEN:AxB[xC]`
  with GEN one of v4, v5e, v5p, v6e. Raises ValueError naming the accepted forms."""
  if m := _CPU.fullmatch(name):
    count = int(m.group(1))
    if count >= 1:
      return "cpu", count
  elif m := _TOPOLOGY.fullmatch(name):
    count = 1
    for size in m.group(2).split("x"):
      count *= int(size)
    if count >= 1:
      return m.group(1), count
  raise ValueError(f"--topology={name!r} is not a topology: expected cpu:N (N host devices) or "
                   f"GEN:AxB[xC] with GEN one of {sorted(_ACCELERATOR_TYPES)} (e.g. v5e:2x2, "
                   "v5e:16x16, v4:2x2x2, v5p:2x2x2)")


def host_device_flag(count: int) -> str:
  return f"--xla_force_host_platform_device_count={count}"


def with_host_devices(xla_flags: str, count: int) -> str:
  """`xla_flags` with its host device count set to `count`."""
  kept = [f for f in xla_flags.split() if not f.startswith(
      "--xla_force_host_platform_device_count")]
  return " ".join([*kept, host_device_flag(count)])


def target_devices(name: str) -> tuple[list[Any], Chip]:
  """(devices, chip) of topology `name` (see `parse`)."""
  kind, count = parse(name)
  if kind == "cpu":
    devices = jax.devices("cpu")
    if len(devices) < count:
      raise ValueError(
          f"--topology={name} needs {count} CPU devices but JAX has {len(devices)}: set "
          f"XLA_FLAGS={host_device_flag(count)} before JAX starts (python -m flix.compile "
          "does)")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return list(devices[:count]), Chip("cpu", None, memory // count, None,
                                       f"host memory (RAM / {count})")
  if importlib.util.find_spec("libtpu") is None:
    raise ValueError(f"--topology={name} compiles with libtpu, which is not installed: pip "
                     f"install '{LIBTPU_PIN}' (flix's test extra brings it); --topology=cpu:N "
                     "needs nothing")
  _quiet_libtpu(kind, count)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  devices = list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
  kinds = {d.device_kind for d in devices}
  chip = TPU_CHIPS.get(next(iter(kinds))) if len(kinds) == 1 else None
  if chip is None:
    raise ValueError(f"--topology={name} gave devices of kind {sorted(kinds)}, whose figures "
                     f"flix does not know (known: {sorted(TPU_CHIPS)})")
  cores = len(devices) // count if len(devices) % count == 0 else 1
  return devices, chip.per_core(cores)


def _quiet_libtpu(kind: str, count: int) -> None:
  """On a host without TPU chips, libtpu looks for the TPU VM's accelerator type and worker
  hostnames and warns when they are missing; a local, single-worker value silences it (and
  the lockfile is not taken: no chip is used). TPU
  VMs (whose runtime sets them) and values the user set are left alone."""
  if platforms.has_tpu_chip():
    return
  prefix, cores = _ACCELERATOR_TYPES[kind]
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{prefix}-{count * cores}")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # libtpu takes /tmp/libtpu_lockfile so that one process owns a host's chips; a deviceless
  # compile owns none, and two of them (or a process that loaded libtpu without flix) would
  # otherwise fail with "Internal error when accessing libtpu multi-process lockfile".
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
