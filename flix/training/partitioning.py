"""A ('data', 'model') device mesh and T5X-style logical axis rules, extended for FLix axes.

Parameters are laid out by their logical axis names under `Partitioner.param_rules`:
`Partitioner.rules`, plus, with `parameter_partitioning_dims=2` (T5X's switch), the `embed` axis
over `data` (FSDP-style: every weight is split over both mesh axes and gathered where it is
used). Feature tables of at least `feature_shard_rows` rows have their feature axis split over
the mesh first (`feature_axes`). Activations are constrained with the same rules while a step
traces (`activation_rules`); the batch takes `data` first, so an activation's `embed` stays
whole. Optimizer state is laid out like its parameter (`like_params`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from typing import Any, Iterator, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flix.layers import FEATURE_AXIS, RANK_AXIS
from flix.models.scan import LAYER_AXIS

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
    (LAYER_AXIS, None),  # The stacked axis of scanned layers (flix.models.scan).
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
    parameter_partitioning_dims: 1 (`rules` as given) or 2 (T5X's 2-D parameter partitioning:
      `embed` over `data` as well, FSDP-style; see the module docstring).
    feature_shard_rows: feature tables with at least this many rows have their feature axis
      sharded over the mesh (`feature_axes`); None: never (the rules' FEATURE_AXIS entry holds).
  """

  mesh_shape: Sequence[int] = (-1, 1)
  rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES
  devices: Sequence[Any] | None = None
  parameter_partitioning_dims: int = 1
  feature_shard_rows: int | None = None

  def __post_init__(self):
    if self.parameter_partitioning_dims not in (1, 2):
      raise ValueError("Partitioner.parameter_partitioning_dims must be 1 (the rules as given) "
                       "or 2 (embed over data, FSDP-style), got "
                       f"{self.parameter_partitioning_dims!r}")
    if self.feature_shard_rows is not None and (
        isinstance(self.feature_shard_rows, bool) or not isinstance(self.feature_shard_rows, int)
        or self.feature_shard_rows < 1):
      raise ValueError("Partitioner.feature_shard_rows must be an int >= 1 (tables of at least "
                       f"that many rows shard their feature axis) or None, got "
                       f"{self.feature_shard_rows!r}")
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

  @property
  def param_rules(self) -> tuple[tuple[str, Any], ...]:
    """The rules parameters (and activations) are laid out by: `rules`, with `("embed",
    "data")` for 2-D parameter partitioning ahead of the rules' own `embed` entry and after
    their `batch` entries (so that an activation's batch keeps `data`)."""
    if self.parameter_partitioning_dims == 1:
      return self.rules
    names = [name for name, _ in self.rules]
    at = max(names.index("embed") if "embed" in names else len(names),
             max((i + 1 for i, n in enumerate(names) if n == "batch"), default=0))
    return self.rules[:at] + (("embed", "data"),) + self.rules[at:]

  def feature_axes(self, rows: int) -> tuple[str, ...] | None:
    """The mesh axes a table of `rows` rows shards its feature axis over: every mesh axis whose
    sizes' product divides `rows` (jit needs even shards), the most devices first (data and
    model, else the larger of them); None below `feature_shard_rows` or where no axis of size
    > 1 divides."""
    if self.feature_shard_rows is None or rows < self.feature_shard_rows:
      return None
    sizes = {a: self.mesh.shape[a] for a in MESH_AXES if self.mesh.shape[a] > 1}
    choices = [c for n in range(len(sizes), 0, -1) for c in itertools.combinations(sizes, n)
               if rows % int(np.prod([sizes[a] for a in c])) == 0]
    if not choices:
      return None
    return max(choices, key=lambda c: int(np.prod([sizes[a] for a in c])))

  def shardings(self, boxed_tree: Any) -> Any:
    """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (others replicated) of
    `jax.ShapeDtypeStruct`s or arrays: `param_rules`, feature axes first (`feature_axes`)."""
    def place(leaf):
      if not isinstance(leaf, nn.Partitioned):
        return self.replicated()
      names, rules = tuple(leaf.names), self.param_rules
      if FEATURE_AXIS in names:
        axes = self.feature_axes(leaf.value.shape[names.index(FEATURE_AXIS)])
        if axes is not None:
          rules = ((FEATURE_AXIS, axes),) + rules
      spec = nn.logical_to_mesh_axes(names, rules)
      return NamedSharding(self.mesh, spec)
    return jax.tree.map(place, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))

  @contextlib.contextmanager
  def activation_rules(self) -> Iterator[None]:
    """While a step traces: `nn.with_logical_constraint` lays activations out by `param_rules`
    over this mesh (flix.layers constrains FLix's activations)."""
    with nn.logical_axis_rules(self.param_rules), jax.sharding.use_abstract_mesh(
        self.mesh.abstract_mesh):
      yield

  def like_params(self, tree: Any, params: Any) -> Any:
    """NamedShardings for `tree` (e.g. optimizer state shapes): each leaf whose path holds a
    parameter's path (its dict keys, in order) is sharded like that parameter where the shapes
    allow: the same shape takes its spec; the shape with one axis removed (Adafactor's
    factored rows and columns), its spec without that axis; the leading axis alone (a
    per-row count `[F]`), the leading entry. Every other leaf is replicated."""
    by_path = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
      spec = tuple(leaf.sharding.spec) + (None,) * (len(leaf.shape) - len(leaf.sharding.spec))
      by_path[_dict_keys(path)] = (tuple(leaf.shape), spec)

    def place(path, leaf):
      keys = _dict_keys(path)
      for start in range(len(keys)):
        for stop in range(len(keys), start, -1):
          if keys[start:stop] in by_path:
            spec = _derived_spec(*by_path[keys[start:stop]], tuple(leaf.shape))
            return NamedSharding(self.mesh, PartitionSpec(*spec)) if spec else self.replicated()
      return self.replicated()
    return jax.tree_util.tree_map_with_path(place, tree)

  def batch_sharding(self) -> NamedSharding:
    """Leading (batch) axis over 'data'."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's rows -> global arrays sharded over 'data' (multi-host ready)."""
    sharding = self.batch_sharding()
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def _dict_keys(path) -> tuple:
  """The dict keys of a tree path, in order (a parameter's path is all dict keys)."""
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _derived_spec(shape: tuple, spec: tuple, leaf_shape: tuple) -> tuple | None:
  """The spec of a leaf `leaf_shape` derived from a parameter's (see `Partitioner.like_params`);
  None to replicate."""
  if leaf_shape == shape:
    return spec
  if len(leaf_shape) == len(shape) - 1:
    for axis in range(len(shape)):
      if shape[:axis] + shape[axis + 1:] == leaf_shape:
        return spec[:axis] + spec[axis + 1:]
  if len(shape) > 1 and leaf_shape == shape[:1]:
    return spec[:1]
  return None
