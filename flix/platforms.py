"""Keeps JAX off a TPU runtime the host cannot run.

libtpu, which `flix.compile` needs to compile for TPU topologies without a TPU, comes with
flix's test extra. Once installed, JAX's first backend start on any machine tries the TPU
runtime, and on a host without TPU chips libtpu prints warnings about TPU_ACCELERATOR_TYPE and
TPU_WORKER_HOSTNAMES before JAX falls back to the CPU. `import flix` runs `skip_absent_tpu`
first: where libtpu is installed but the host has no TPU chip (no PCI device of Google's vendor
id, the test JAX itself makes) and no GPU device, and JAX_PLATFORMS is unset, JAX is pointed at
the CPU, the backend it would have ended on. TPU and GPU hosts, and a JAX_PLATFORMS the user set,
are left alone. Deviceless TPU compiles work on the CPU platform (`flix.training.topology`).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

GOOGLE_PCI_VENDOR_ID = "0x1ae0"  # TPU chips; JAX's own test (jax._src.hardware_utils).
GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def has_tpu_chip() -> bool:
  """Whether a PCI device of Google's vendor id (a TPU chip) is attached."""
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(path) as f:
        if f.read().strip() == GOOGLE_PCI_VENDOR_ID:
          return True
    except OSError:
      continue
  return False


def has_gpu() -> bool:
  return any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def skip_absent_tpu() -> bool:
  """Sets JAX's platforms to "cpu" where libtpu is installed on a host without TPU chips or
  GPUs and JAX_PLATFORMS is unset (see the module docstring); returns whether it did."""
  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return False
  if has_tpu_chip() or has_gpu():
    return False
  jax = sys.modules.get("jax")
  if jax is None:
    os.environ["JAX_PLATFORMS"] = "cpu"  # Read when jax is imported.
    return True
  if jax.config.jax_platforms:
    return False
  jax.config.update("jax_platforms", "cpu")  # No effect once a backend has started.
  return True
