"""Layouts of a run's state over a CPU mesh (`flix.training.partitioning`): 2-D (FSDP-style)
parameter partitioning, optimizer state sharded like its parameters, FLix tables sharded on
their feature axis, rematerialised layer blocks. Each trains as one device does, and a
checkpoint written in one layout restores into another."""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from flix.features import FeatureSpace
from flix.models.t5 import T5 as T5Network
from flix.training import loop
from flix.training.checkpointer import Checkpointer
from flix.training.optimizers import make_optimizer
from flix.training.partitioning import Partitioner
from flix.training.program import initial_state, state_bytes_per_device
from flix.training.step import StepConfig
import tiny

# task: 8 values (a multiple of the 8 devices, so its tables can shard their feature axis over
# the whole (4, 2) mesh); lang: 3 values (stays whole).
SPACE = FeatureSpace.build({"task": [f"t{i}" for i in range(8)],
                            "lang": [f"l{i}" for i in range(3)]})
T5 = tiny.t5_config(emb_dim=64, num_heads=2, head_dim=32, mlp_dim=128, num_encoder_layers=1,
                    num_decoder_layers=1)
LENGTHS = {"inputs": 12, "targets": 8}
BATCH = 8
# Layouts against the (1, 1) run: the (4, 2) mesh with 2-D parameter partitioning and the task
# tables' feature axis over every device; one device with every layer block rematerialised;
# the (4, 2) mesh with both and the layers scanned (nn.scan, remat inside the scan).
LAYOUTS = {"2d_and_feature_sharded": ((4, 2), dict(parameter_partitioning_dims=2,
                                                   feature_shard_rows=8), "none"),
           "remat_full": ((1, 1), {}, "full"),
           "scanned_2d_remat": ((4, 2), dict(parameter_partitioning_dims=2,
                                             feature_shard_rows=8), "full", True)}


def program_of(mesh, options=None, remat_policy="none", method="flix", optimizer=None,
               scan_layers=False):
  adapters = loop.AdapterSettings(method=method, feature_ranks={"task": 2, "lang": 2},
                                  feature_dropout=0.0)
  partitioner = Partitioner(mesh_shape=mesh, devices=jax.devices()[:math.prod(mesh)],
                            **(options or {}))
  return loop.build_step_program(T5, SPACE, SPACE.n_types, adapters,
                                 optimizer or make_optimizer(),
                                 StepConfig(remat_policy=remat_policy, scan_layers=scan_layers),
                                 partitioner)


def batches(program, count: int):
  """`count` seeded batches of the program's shapes: tokens 1..99, every loss weight 1."""
  rng = np.random.default_rng(0)
  out = []
  for _ in range(count):
    batch = {}
    for name, spec in program.batch(LENGTHS, BATCH, False).items():
      if name == "feature_ids":
        batch[name] = np.stack([rng.integers(0, t.size, BATCH) for t in SPACE.types], 1)
      elif "weights" in name:
        batch[name] = np.ones(spec.shape, np.int32)
      else:
        batch[name] = rng.integers(1, 100, spec.shape).astype(np.int32)
    out.append(batch)
  return out


def train(program, steps: int = 3):
  """(losses, final state, the step's flops per device) of `steps` steps from the seeded
  fresh state."""
  params = nn.unbox(program.model.init_params(jax.random.key(0)))
  state = initial_state(program, params, random_seed=0)
  step = program.step_fn()
  losses = []
  for batch in batches(program, steps):
    batch = program.partitioner.global_batch(batch)
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  # The step compiled again: a hit in the tests' persistent compilation cache (conftest).
  cost = step.lower(state, batch).compile().cost_analysis()
  return losses, state, float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


@pytest.fixture(scope="module")
def one_device():
  return train(program_of((1, 1)))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_trains_as_one_device(layout, one_device):
  mesh, options, remat_policy, *scanned = LAYOUTS[layout]
  program = program_of(mesh, options, remat_policy, scan_layers=bool(scanned))
  losses, state, flops = train(program)
  ref_losses, ref_state, ref_flops = one_device
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert losses[-1] != losses[0]
  # Sharded reductions reorder float32 sums; Adafactor rescales updates (as test_training).
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
               jax.device_get(state.params), jax.device_get(ref_state.params))
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(program.state)):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
  if remat_policy == "full" and mesh == (1, 1):  # Each block's forward runs again.
    assert flops > 1.1 * ref_flops, (flops, ref_flops)


def test_two_d_partitioning_puts_embed_on_data():
  one, two = (program_of((4, 2), dict(parameter_partitioning_dims=d)) for d in (1, 2))
  layer = lambda p: p.state.params["encoder"]["layers_0"]
  spec = lambda p, *keys: tuple(_leaf(layer(p), keys).sharding.spec)
  assert spec(one, "mlp", "wi_0", "kernel") == (None, "model")
  assert spec(two, "mlp", "wi_0", "kernel") == ("data", "model")
  assert spec(two, "attention", "out", "kernel") == ("model", "data")
  # A [F, r, d_in = embed] over data; B [F, r, d_out = mlp] keeps model.
  assert spec(two, "mlp", "wi_0", "lora_a_task") in (("data",), (None, None, "data"))
  assert spec(two, "mlp", "wi_0", "lora_b_task") == (None, None, "model")
  assert (state_bytes_per_device(two.state.params)
          < state_bytes_per_device(one.state.params) / 2)
  with pytest.raises(ValueError, match="parameter_partitioning_dims must be 1 .* or 2 .*, got 3"):
    Partitioner(mesh_shape=(1, 1), parameter_partitioning_dims=3)


@pytest.mark.parametrize("per_row", [True, False])
def test_optimizer_state_is_sharded_like_its_parameters(per_row):
  """Full fine-tuning at widths where Adafactor factors the kernels' second moments (both dims
  >= 128): every state leaf of a parameter's shape has its spec, a factored v_row / v_col its
  spec less the factored axis, and the state per device is a quarter of the replicated one
  (8 devices; only the [d] norms' and scalar leaves stay whole)."""
  wide = tiny.t5_config(emb_dim=128, num_heads=2, head_dim=64, mlp_dim=256,
                        num_encoder_layers=1, num_decoder_layers=1)
  adapters = loop.AdapterSettings(method="full")
  program = loop.build_step_program(
      wide, None, 0, adapters, make_optimizer(per_row=per_row), StepConfig(lazy_rows=False),
      Partitioner(mesh_shape=(4, 2), devices=jax.devices()[:8],
                  parameter_partitioning_dims=2))
  params = {_keys(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(
      program.state.params)}
  matched = factored = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(program.state.opt_state):
    keys = _keys(path)
    owner = next((params[keys[i:j]] for i in range(len(keys))
                  for j in range(len(keys), i, -1) if keys[i:j] in params), None)
    if owner is None or leaf.ndim == 0:
      assert leaf.sharding.is_fully_replicated
      continue
    spec = _full_spec(owner)
    if leaf.shape == owner.shape:
      matched += 1
      assert _full_spec(leaf) == spec, (keys, leaf.sharding)
    elif leaf.shape in {owner.shape[:a] + owner.shape[a + 1:] for a in range(owner.ndim)}:
      factored += 1
      assert _full_spec(leaf) in {spec[:a] + spec[a + 1:] for a in range(owner.ndim)}
    else:  # Adafactor's [1] placeholders of unfactored leaves.
      assert leaf.sharding.is_fully_replicated, (keys, leaf.shape)
  # Every parameter has either a full second moment or a factored pair (v_row, v_col).
  assert matched + factored // 2 == len(params) and factored >= 8, (matched, factored)
  replicated = sum(math.prod(x.shape) * x.dtype.itemsize
                   for x in jax.tree.leaves(program.state.opt_state))
  assert state_bytes_per_device(program.state.opt_state) < replicated / 4


def test_feature_tables_shard_their_feature_axis():
  """Tables of >= feature_shard_rows rows hold 1/8 of their bytes per device on 8 devices;
  the rest keep the rules' layout (feature axis whole)."""
  program = program_of((4, 2), dict(feature_shard_rows=8))
  tables = [(p, leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(program.state.params)
            if str(p[-1].key).startswith(("lora_a_", "lora_b_"))]
  assert len(tables) == 2 * 2 * len(T5Network.projection_names(T5))
  for path, leaf in tables:
    total = math.prod(leaf.shape) * 4
    if path[-1].key.endswith("task"):
      assert _full_spec(leaf)[0] == ("data", "model")
      assert state_bytes_per_device(leaf) <= 2 * total / 8
    else:
      assert _full_spec(leaf)[0] is None
  partitioner = program.partitioner
  assert partitioner.feature_axes(7) is None and partitioner.feature_axes(8) == ("data", "model")
  assert partitioner.feature_axes(12) == ("data",)  # 12 rows: 4 divides, 8 does not.
  with pytest.raises(ValueError, match="feature_shard_rows must be an int >= 1 .*, got 0"):
    Partitioner(mesh_shape=(1, 1), feature_shard_rows=0)


def test_checkpoints_restore_across_layouts(tmp_path, one_device):
  """A (1, 1) checkpoint restores into the 2-D, feature-sharded layout with that layout's
  shardings and the same values, and back."""
  _, state, _ = one_device
  sharded = program_of(*LAYOUTS["2d_and_feature_sharded"][:2])
  plain = program_of((1, 1))
  for source, target, name in ((state, sharded, "a"), (None, plain, "b")):
    checkpointer = Checkpointer(str(tmp_path / name), T5, target.flix)
    if source is None:  # Write what was restored into the sharded layout; read it back.
      source = restored
    path = checkpointer.save(source, 0)
    restored, position = checkpointer.restore(path, target.state)
    assert position == 0
    for got, want, abstract in zip(jax.tree.leaves(restored), jax.tree.leaves(state),
                                   jax.tree.leaves(target.state)):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
      assert got.sharding.is_equivalent_to(abstract.sharding, got.ndim)


def test_unknown_remat_policy_is_refused():
  with pytest.raises(ValueError, match="unknown remat policy 'some'; expected one of"):
    program_of((1, 1), remat_policy="some")


def _keys(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _leaf(tree, keys):
  for key in keys:
    tree = tree[key]
  return tree


def _full_spec(leaf) -> tuple:
  spec = tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))
  return tuple(tuple(s) if isinstance(s, list) else s for s in spec)
