"""A ('data', 'model') device mesh and T5X-style logical axis rules, extended for FLix axes."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flix.layers import FEATURE_AXIS, RANK_AXIS

MESH_AXES = ("data", "model")

# Logical axis -> mesh axis. Feature tables shard like their kernel on the base axes; the
# feature and rank axes stay whole so that every device can gather any feature's rows.
DEFAULT_RULES = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("embed", None),
    ("relpos_buckets", None),
    ("length", None),
    (FEATURE_AXIS, None),
    (RANK_AXIS, None),
)


@gin.configurable
def initialize_distributed(coordinator_address: str | None = None, num_processes: int = 1,
                           process_id: int = 0) -> None:
  """Starts jax.distributed for multi-host runs; a no-op for one process."""
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


@gin.configurable
@dataclasses.dataclass
class Partitioner:
  """Builds the mesh and turns logical axis names into shardings.

  Attributes:
    mesh_shape: (data, model) sizes; -1 takes the remaining devices. A mesh smaller than the
      device count uses the first devices (single-host only).
    rules: logical axis rules (logical name, mesh axis or None).
    devices: the devices to arrange (default `jax.devices()`); `flix.compile` passes a TPU
      topology's device descriptions (`flix.training.topology`).
  """

  mesh_shape: Sequence[int] = (-1, 1)
  rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES
  devices: Sequence[Any] | None = None

  def __post_init__(self):
    devices = list(jax.devices() if self.devices is None else self.devices)
    shape = list(self.mesh_shape)
    if len(shape) != 2 or shape.count(-1) > 1:
      raise ValueError(f"mesh_shape must be (data, model) with at most one -1, got {self.mesh_shape}")
    if -1 in shape:
      known = int(np.prod([s for s in shape if s != -1]))
      if len(devices) % known:
        raise ValueError(f"mesh_shape {tuple(self.mesh_shape)} does not divide {len(devices)} devices")
      shape[shape.index(-1)] = len(devices) // known
    needed = int(np.prod(shape))
    if needed > len(devices):
      raise ValueError(f"mesh_shape {tuple(shape)} needs {needed} devices, "
                       f"{len(devices)} are available")
    if needed < len(devices) and jax.process_count() > 1:
      raise ValueError(f"mesh_shape {tuple(shape)} must use all {len(devices)} devices of a "
                       "multi-host run")
    self.mesh = Mesh(np.asarray(devices[:needed]).reshape(shape), MESH_AXES)
    self.rules = tuple(tuple(r) for r in self.rules)

  @property
  def data_size(self) -> int:
    return self.mesh.shape["data"]

  def shardings(self, boxed_tree: Any) -> Any:
    """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (others replicated)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, self.mesh, self.rules)

  def batch_sharding(self) -> NamedSharding:
    """Leading (batch) axis over 'data'."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def on_mesh(self, tree: Any) -> Any:
    """Leaves already sharded over this mesh stay; others (e.g. optimizer step counters that
    jit placed on one device) are replicated over it."""
    def place(x):
      sharding = getattr(x, "sharding", None)
      if isinstance(sharding, NamedSharding) and sharding.mesh == self.mesh:
        return x
      return jax.device_put(x, self.replicated())
    return jax.tree.map(place, tree)

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's rows -> global arrays sharded over 'data' (multi-host ready)."""
    sharding = self.batch_sharding()
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
