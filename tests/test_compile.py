"""flix.compile: a run's train step (and decode) compiled for a TPU topology without a TPU, and
for a CPU mesh, and the report it writes: the FLix tables keep their configured shardings, the
arguments hold at least the parameters, collectives appear on a model axis, and what cannot fit
is refused. TPU targets need libtpu (flix's test extra); those tests skip without it."""

import dataclasses
import importlib.util
import json
import re
import math
import os
import subprocess
import sys

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

from flix import compile as compile_entry
from flix import platforms
from flix.data.converter import feature_converter
from flix.data.offline import OfflineConfig
from flix.data.offline_tasks import register_offline
from flix.errors import DoesNotFitError
from flix.features import FeatureSpace
from flix.models.decoder import DecoderConfig
from flix.training import aot, auto_strategy, hlo_stats, hlo_text, loop, topology
from flix.training.batches import TrainBatches
from flix.training.optimizers import make_optimizer
from flix.training.partitioning import DEFAULT_RULES
from flix.training.step import StepConfig
import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(ROOT, "tests", "gin")
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason=f"libtpu is not installed ({topology.LIBTPU_PIN}, in flix's test extra): TPU "
           "topologies compile with it")

# Two adapted projections per layer (both families name them so): seconds-scale compiles.
TARGETS = ("*attention.query", "*mlp.wo")
SPACE = FeatureSpace.build({"task": [f"t{i}" for i in range(3)],
                            "lang": [f"l{i}" for i in range(5)]})
LENGTHS = {"inputs": 16, "targets": 8}
BATCH = 8
T5 = tiny.t5_config(emb_dim=64, num_heads=2, head_dim=32, mlp_dim=128, num_encoder_layers=1,
                    num_decoder_layers=1)
DECODER = DecoderConfig(vocab_size=128, emb_dim=64, num_heads=4, num_kv_heads=2, head_dim=16,
                        mlp_dim=128, num_layers=1)
REPORT_KEYS = {"topology", "chip", "mesh", "method", "strategy", "feature_values", "memory",
               "fits", "cost", "collectives", "flix_tables", "compile_seconds", "auto"}
MEMORY_KEYS = {"params_bytes", "opt_state_bytes", "batch_bytes", "temp_bytes", "output_bytes",
               "code_bytes", "total_bytes", "hbm_bytes"}
COST_KEYS = {"flops", "bytes_accessed", "xla_seconds", "roofline_seconds", "mfu", "bound",
             "model_flops_per_device"}
# Logical axes DEFAULT_RULES puts on 'model' (docs/tpu.md's table); every other is replicated.
MODEL_AXES = {"vocab", "mlp", "heads", "joined_kv"}


def build(config, target_name, mesh, method="flix", space=SPACE, strategy="auto",
          step_config=StepConfig()):
  target = aot.Target.of(target_name)
  adapters = loop.AdapterSettings(method=method, feature_ranks={"task": 2, "lang": 2},
                                  lora_rank=2, targets=TARGETS, strategy=strategy)
  program = loop.build_step_program(config, space, space.n_types, adapters, make_optimizer(),
                                    step_config, target.partitioner(mesh, DEFAULT_RULES))
  return program, target


def train_step(config, target_name, mesh):
  program, target = build(config, target_name, mesh)
  return program, aot.compile_train_step(program, program.batch(LENGTHS, BATCH, False), target)


@pytest.fixture(scope="module")
def t5_v5e():
  return train_step(T5, "v5e:2x2", (2, 2))


@pytest.fixture(scope="module")
def decoder_v5e():
  return train_step(DECODER, "v5e:2x2", (2, 2))


def check_report(report, topology_name, chip, mesh):
  assert set(report) == REPORT_KEYS
  assert set(report["memory"]) == MEMORY_KEYS and set(report["cost"]) == COST_KEYS
  assert report["topology"] == topology_name and report["chip"] == chip
  assert report["mesh"] == {"data": mesh[0], "model": mesh[1]}
  assert report["method"] == "flix" and report["feature_values"] == 8
  assert report["strategy"] in ("masked", "gather")
  assert report["fits"] is True
  memory = report["memory"]
  assert 0 < memory["params_bytes"] <= memory["total_bytes"] <= memory["hbm_bytes"]
  assert report["cost"]["flops"] > 0 and report["cost"]["bytes_accessed"] > 0
  assert report["compile_seconds"] > 0
  json.dumps(report)  # Plain JSON values only.


def expected_table_spec(name: str) -> list:
  """A table's PartitionSpec under DEFAULT_RULES: A `[F, r, d_in]` takes its kernel's input
  axis, B `[F, r, d_out]` its output axis; the query kernel is (embed, joined_kv), wo's is
  (mlp, embed)."""
  projection, leaf = name.split("/")[-2:]
  on_model = {("query", "a"): None, ("query", "b"): "model",
              ("wo", "a"): "model", ("wo", "b"): None}[projection, leaf.split("_")[1]]
  return [None, None, on_model]


@needs_libtpu
@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_tpu_report_and_table_shardings(family, request):
  program, compiled = request.getfixturevalue(f"{family}_v5e")
  report = compiled.report
  check_report(report, "v5e:2x2", "v5e", (2, 2))
  assert report["memory"]["hbm_bytes"] == 16 * 2 ** 30
  cost = report["cost"]
  compute = max(cost["flops"], cost["model_flops_per_device"]) / 197e12
  memory = cost["bytes_accessed"] / 819e9
  assert cost["roofline_seconds"] == pytest.approx(max(compute, memory))
  assert cost["bound"] == ("compute" if compute >= memory else "memory")
  assert cost["mfu"] == pytest.approx(
      cost["model_flops_per_device"] / (cost["roofline_seconds"] * 197e12))
  assert 0 < cost["mfu"] <= 1
  assert cost["xla_seconds"] is None or cost["xla_seconds"] > 0
  tables = report["flix_tables"]
  # A and B of both types per adapted projection: T5's 3 attention queries (encoder, decoder
  # self, cross) and 2 mlp.wo; the decoder's one of each.
  assert len(tables) == 4 * (5 if family == "t5" else 2)
  compiled_params = compiled.executable.input_shardings[0][0].params
  for table in tables:
    spec = expected_table_spec(table["name"])
    assert table["spec"] == spec, table["name"]
    assert table["shape"][:2] == [SPACE.type(table["name"].split("_")[-1]).size, 2]
    assert table["bytes_per_device"] == 4 * math.prod(table["shape"]) // (2 if spec[2] else 1)
    leaf = compiled_params
    for key in table["name"].split("/"):
      leaf = leaf[key]
    assert tuple(leaf.spec) + (None,) * (3 - len(leaf.spec)) == tuple(spec), table["name"]


def param_bytes_per_device(program, mesh_model: int) -> int:
  """Each parameter's bytes over the mesh, from its logical axes (not from its sharding)."""
  boxed = jax.eval_shape(lambda: program.model.init_params(jax.random.key(0)))
  axes = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(
      x, jax.sharding.PartitionSpec))
  total = 0
  for shape, names in zip(jax.tree.leaves(nn.unbox(boxed)), axes):
    split = math.prod(mesh_model for n in names if n in MODEL_AXES)
    total += 4 * math.prod(shape.shape) // split
  return total


@needs_libtpu
@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_arguments_hold_the_parameters_and_collectives_appear(family, request):
  program, compiled = request.getfixturevalue(f"{family}_v5e")
  memory = compiled.report["memory"]
  assert memory["params_bytes"] == param_bytes_per_device(program, 2)
  assert compiled.argument_bytes >= (memory["params_bytes"] + memory["opt_state_bytes"]
                                     + memory["batch_bytes"])
  kinds = {c["kind"]: c for c in compiled.report["collectives"]}
  assert "all-reduce" in kinds, compiled.report["collectives"]  # Gradients over 'data'.
  assert all(c["count"] >= 1 and c["bytes"] > 0 for c in kinds.values())
  # The model axis splits matmuls: partial products are reduced or gathered over it.
  assert sum(c["count"] for c in kinds.values()) > 1
  # FlixDense's layout constraints: no table is all-gathered to compute its examples' rows
  # (before them, each was gathered about 5 times); what remains is at most one gather per
  # table, of the tables replicated on the model axis whose update XLA splits over it, and a
  # few outside the adapters (the loss's; LoRA's step has 2).
  tables = len(compiled.report["flix_tables"])
  assert kinds.get("all-gather", {"count": 0})["count"] <= tables + 4, kinds


@needs_libtpu
def test_auto_picks_the_cheapest_compiled_strategy_on_tpu(decoder_v5e):
  """On v5e `auto` compiles masked, gather and ragged for the step's shapes and takes the
  least roofline time among those that fit; the pick is cached per shape (a second call
  compiles the pick alone)."""
  fixture = decoder_v5e[1]  # Strategy 'auto' resolved by the CPU rule: gather, compiled.
  assert fixture.report["strategy"] == "gather"
  done = {"gather": dataclasses.replace(fixture, report=dict(fixture.report))}
  compiles = []

  def compile_one(program):  # Each strategy's step compiled once (gather's by the fixture).
    strategy = program.flix.strategy
    compiles.append(strategy)
    if strategy not in done:
      done[strategy] = aot.compile_train_step(program, program.batch(LENGTHS, BATCH, False),
                                              target)
    return done[strategy]

  def build_with(strategy):
    return build(DECODER, "v5e:2x2", (2, 2), strategy=strategy or "auto")[0]

  _, target = build(DECODER, "v5e:2x2", (2, 2))
  key = ("test_compile", "decoder", "v5e:2x2")
  report = aot.compile_choosing(build_with, compile_one, target, key).report
  auto = report["auto"]
  assert [c["strategy"] for c in auto["candidates"]] == ["masked", "gather", "ragged"]
  assert compiles == ["masked", "gather", "ragged"]
  for c in auto["candidates"]:
    assert c["fits"] and c["flops"] > 0 and c["temp_bytes"] >= 0
    assert c["roofline_seconds"] == pytest.approx(max(
        max(c["flops"], c["model_flops_per_device"]) / 197e12, c["bytes_accessed"] / 819e9))
  best = min(auto["candidates"], key=lambda c: (c["roofline_seconds"], c["flops"]))
  assert auto["pick"] == best["strategy"] == report["strategy"]
  assert report["cost"]["flops"] == best["flops"]
  again = aot.compile_choosing(build_with, compile_one, target, key).report
  assert compiles[3:] == [auto["pick"]] and again["auto"] == auto

  # A candidate that XLA fails to compile (as libtpu 0.0.42.1 fails `ragged_dot` over 9,984
  # groups: docs/tpu.md) is kept with its error and never picked; the others still compete.
  def compile_failing_ragged(program):
    if program.flix.strategy == "ragged":
      raise jax.errors.JaxRuntimeError("INTERNAL: during context [post-optimization]: Bitcast "
                                       "cannot have different shape sizes\nmore lines")
    return compile_one(program)

  failing = aot.compile_choosing(build_with, compile_failing_ragged, target,
                                 key + ("ragged fails",)).report["auto"]
  ragged = failing["candidates"][2]
  assert ragged["fits"] is False and ragged["roofline_seconds"] is None
  assert ragged["error"] == (f"{auto_strategy.COMPILE_FAILED}: INTERNAL: during context "
                             "[post-optimization]: Bitcast cannot have different shape sizes")
  assert failing["candidates"][:2] == auto["candidates"][:2]
  assert all(c["error"] is None for c in failing["candidates"][:2])
  assert failing["pick"] == min(auto["candidates"][:2],
                                key=lambda c: (c["roofline_seconds"], c["flops"]))["strategy"]


@needs_libtpu
def test_decode_compiles_with_its_cache():
  program, target = build(DECODER, "v5e:2x2", (2, 2))
  report = aot.compile_decode(program, BATCH, LENGTHS["inputs"], LENGTHS["targets"],
                              target).report
  check_report(report, "v5e:2x2", "v5e", (2, 2))
  assert report["memory"]["opt_state_bytes"] == 0
  # Prompts [8, 17] and their lengths [8], feature ids [8, 2], int32, over 2 data shards.
  assert report["memory"]["batch_bytes"] == 4 * (8 * 17 + 8 + 8 * 2) // 2


def test_too_large_model_is_refused_before_compiling():
  huge = tiny.t5_config(vocab_size=250112, emb_dim=32768, num_heads=2, head_dim=32,
                        mlp_dim=128, num_encoder_layers=1, num_decoder_layers=1)
  program, _ = build(huge, "cpu:8", (4, 2), method="lora")
  chip = topology.Chip("v5e", 197e12, 16 * 2 ** 30, 819e9)  # The figures alone: no libtpu.
  target = aot.Target("v5e:2x2", [], chip)
  with pytest.raises(DoesNotFitError) as e:
    aot.compile_train_step(program, program.batch(LENGTHS, BATCH, False), target)
  message = str(e.value)
  assert "\n" not in message
  for text in ("the lora train step on v5e:2x2 does not fit: parameters ", " per chip before ",
               "over the v5e chip's 16.00 GiB of HBM; levers: ", "a larger MODEL in --mesh"):
    assert text in message, message


@needs_libtpu
def test_xla_out_of_memory_is_refused():
  program, target = build(DECODER, "v5e:2x2", (2, 2))
  # Attention weights [4, 4, 65544, 65544] per data shard: XLA refuses in seconds.
  batch = program.batch({"inputs": 65536, "targets": 8}, BATCH, False)
  with pytest.raises(DoesNotFitError, match="does not fit the v5e chip's 16.00 GiB of HBM: XLA"):
    aot.compile_train_step(program, batch, target)


def run_cli(*args) -> tuple[int, str]:
  import contextlib
  import io
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      compile_entry.main(list(args))
      code = 0
    except SystemExit as e:
      code = e.code
  return code, err.getvalue()


def test_cli_report_on_a_cpu_mesh(tmp_path):
  out = str(tmp_path / "report.json")
  code, err = run_cli(f"--gin_search_paths={GIN_DIR}", f"--gin_file={GIN_DIR}/tiny_decoder.gin",
                      "--topology=cpu:8", "--mesh=4,2", "--feature_space=task:3,lang:5",
                      f"--gin.TARGETS={TARGETS!r}", f"--json={out}")
  assert code == 0, err
  with open(out) as f:
    report = json.load(f)
  check_report(report, "cpu:8", "cpu", (4, 2))
  assert report["cost"]["roofline_seconds"] is None and report["cost"]["mfu"] is None
  assert report["cost"]["bound"] is None
  assert any(c["kind"] == "all-reduce" for c in report["collectives"])
  assert {tuple(t["spec"]) for t in report["flix_tables"]} == {(None, None, None),
                                                               (None, None, "model")}
  # On CPU `auto` resolves by FlixConfig's rule (task 3 x 2 + lang 5 x 2 = 16 columns, at
  # most 2x an example's 4: no; so gather), without compiling candidates.
  assert report["auto"] is None and report["strategy"] == "gather"


def test_cli_reports_sharded_feature_tables_and_2d_parameters(tmp_path):
  """lang's 16-row tables shard their feature axis over all 8 devices; task's 3 rows stay
  whole, and with 2-D partitioning the query's A `[F, r, d_in = embed]` is split over data."""
  out = str(tmp_path / "sharded.json")
  code, err = run_cli(f"--gin_search_paths={GIN_DIR}", f"--gin_file={GIN_DIR}/tiny_decoder.gin",
                      "--topology=cpu:8", "--mesh=4,2", "--feature_space=task:3,lang:16",
                      f"--gin.TARGETS={TARGETS!r}", "--gin.Partitioner.feature_shard_rows=8",
                      "--gin.Partitioner.parameter_partitioning_dims=2", f"--json={out}")
  assert code == 0, err
  with open(out) as f:
    report = json.load(f)
  specs = {}
  for table in report["flix_tables"]:
    total = 4 * math.prod(table["shape"])
    specs["/".join(table["name"].split("/")[-3:])] = table["spec"]
    if table["name"].endswith("_lang"):
      assert table["spec"][0] == ["data", "model"], table
      assert table["bytes_per_device"] <= 2 * total / 8
  assert specs["attention/query/lora_a_task"] == [None, None, "data"]
  assert specs["mlp/wo/lora_b_task"] == [None, None, "data"]
  assert specs["attention/query/lora_b_task"] == [None, None, "model"]
  assert any(c["kind"] == "all-reduce" for c in report["collectives"])


def test_cli_refuses_after_compiling_and_keeps_the_report(tmp_path):
  out = str(tmp_path / "report.json")
  code, err = run_cli(f"--gin_search_paths={GIN_DIR}", f"--gin_file={GIN_DIR}/tiny_decoder.gin",
                      "--topology=cpu:8", "--mesh=8,1", "--feature_space=task:3,lang:5",
                      f"--gin.TARGETS={TARGETS!r}", "--gin.BATCH_SIZE=65536",
                      "--gin.TASK_FEATURE_LENGTHS={'inputs': 2048, 'targets': 2048}",
                      f"--json={out}")
  line = err.strip().splitlines()[-1]
  assert code == 1 and line.startswith("error: DoesNotFitError: the flix train step on cpu:8 "
                                       "does not fit: it needs "), err
  assert "of host memory (RAM / 8); levers: " in line and f"(report: {out})" in line
  with open(out) as f:
    assert json.load(f)["fits"] is False


@pytest.mark.parametrize("config,pack", [(T5, False), (DECODER, True)])
def test_abstract_batch_is_the_converters_batch(config, pack):
  registration = register_offline(
      OfflineConfig(tasks=("cardinal", "ordinal"), langs=("en", "fr"), unseen_langs=(),
                    n_train=16, n_validation=2, n_test=2, input_length=24, target_length=48),
      prefix=f"flix_test_compile_{int(pack)}")
  program, _ = build(config, "cpu:8", (4, 2), space=registration.space)
  lengths = registration.task_feature_lengths
  batches = TrainBatches(registration.train_mixture, lengths, BATCH,
                         feature_converter(program.model, program.n_types, pack=pack), seed=0)
  try:
    real = next(batches)
  finally:
    batches.close()
  abstract = program.batch(lengths, BATCH, pack)
  assert {k: (v.shape, v.dtype) for k, v in abstract.items()} == {
      k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in real.items()}


def test_topology_names():
  assert topology.parse("cpu:8") == ("cpu", 8)
  assert topology.parse("v5e:16x16") == ("v5e", 256)
  assert topology.parse("v4:2x2x2") == ("v4", 8)
  for bad in ("v5e", "tpu:4", "cpu:0", "v7:2x2", "v5e:2x"):
    with pytest.raises(ValueError, match="is not a topology"):
      topology.parse(bad)
  with pytest.raises(ValueError, match="needs 16 CPU devices but JAX has 8"):
    topology.target_devices("cpu:16")


def test_collectives_of_hlo_text():
  hlo = """
  %all-reduce.1 = (f32[128,128]{1,0:T(8,128)}, bf16[4,32]{1,0}) all-reduce(%a, %b), channel_id=2
  ROOT %all-gather.3 = f32[10,4,128]{0,1,2:T(4,128)S(1)} all-gather(%p), dimensions={2}
  %ags = (bf16[8,64]{1,0}, bf16[16,64]{1,0}) all-gather-start(%x), dimensions={0}
  %agd = bf16[16,64]{1,0} all-gather-done(%ags)
  %cp = (f32[2]{0}, f32[2]{0}, u32[], u32[]) collective-permute-start(%y)
  %fusion.7 = f32[4]{0} fusion(%all-reduce.1), kind=kLoop
  """
  assert hlo_stats.collectives(hlo) == [
      {"kind": "all-reduce", "count": 1, "executions": 1, "bytes": 128 * 128 * 4 + 4 * 32 * 2},
      {"kind": "all-gather", "count": 2, "executions": 2,
       "bytes": 10 * 4 * 128 * 4 + 16 * 64 * 2},
      {"kind": "collective-permute", "count": 1, "executions": 1, "bytes": 8}]


# A scanned stack as XLA:TPU prints it: the loop's condition compares the counter with the
# layer count (no known_trip_count annotation); a second loop carries XLA's annotation; a
# third (a decode loop) stops on a flag, so its trip count is unknown.
LOOPS_HLO = """
%body (p: (s32[], bf16[8,16])) -> (s32[], bf16[8,16]) {
  %p = (s32[], bf16[8,16]{1,0}) parameter(0)
  %x = bf16[8,16]{1,0} get-tuple-element(%p), index=1
  %ag = bf16[32,16]{1,0} all-gather(%x), dimensions={0}
  %inner = bf16[8,16]{1,0} fusion(%ag), kind=kLoop, calls=%fused
  ROOT %t = (s32[], bf16[8,16]{1,0}) tuple(%i, %inner)
}

%fused (a: bf16[32,16]) -> bf16[8,16] {
  %a = bf16[32,16]{1,0} parameter(0)
  ROOT %ar = bf16[8,16]{1,0} all-reduce(%a), to_apply=%add
}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

%cond (p: (s32[], bf16[8,16])) -> pred[] {
  %limit = s32[]{:T(128)} constant(24)
  %p = (s32[], bf16[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %limit), direction=LT, metadata={op_name="cond"}
}

%flag_cond (p: (s32[], bf16[8,16])) -> pred[] {
  %p = (s32[], bf16[8,16]{1,0}) parameter(0)
  ROOT %done = pred[] custom-call(%p), custom_call_target="not_done"
}

ENTRY %main (w: bf16[8,16]) -> bf16[8,16] {
  %w = bf16[8,16]{1,0} parameter(0)
  %scanned = (s32[], bf16[8,16]{1,0}) while(%init), condition=%cond, body=%body
  %annotated = (s32[], bf16[8,16]{1,0}) while(%init), condition=%flag_cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %decode = (s32[], bf16[8,16]{1,0}) while(%init), condition=%flag_cond, body=%body
  ROOT %ag0 = bf16[32,16]{1,0} all-gather(%w), dimensions={0}
}
"""


def test_collectives_run_once_per_loop_trip():
  from flix.training import hlo_text
  module = hlo_text.parse(LOOPS_HLO)
  assert module.entry == "main"
  assert module.executions["body"] == 24 + 3 + 1 and module.executions["fused"] == 28
  assert module.unknown_loops == ["decode"]
  gathered, reduced = 32 * 16 * 2, 8 * 16 * 2
  assert hlo_stats.collectives(LOOPS_HLO) == [
      {"kind": "all-reduce", "count": 1, "executions": 28, "bytes": 28 * reduced},
      {"kind": "all-gather", "count": 2, "executions": 29, "bytes": 29 * gathered}]


@pytest.mark.skipif(platforms.has_tpu_chip() or platforms.has_gpu(),
                    reason="an accelerator host: JAX is meant to start its runtime there")
def test_cpu_users_see_no_tpu_runtime_warnings():
  """With libtpu installed on a host without TPU chips, `import flix` keeps JAX on the CPU."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  code = "import flix, jax; print(jax.devices()[0].platform)"
  run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=ROOT, check=True)
  assert run.stdout.strip() == "cpu"
  for text in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "libtpu"):
    assert text not in run.stderr, run.stderr


# Published parameter counts (model cards and papers) of the model gins at the sizes users run.
PUBLISHED = {"t5_1_1_small": 77e6, "t5_1_1_base": 248e6, "t5_1_1_large": 783e6,
             "t5_1_1_xl": 2.85e9, "t5_1_1_xxl": 11.1e9, "mt5_small": 300e6, "mt5_base": 580e6,
             "mt5_large": 1.23e9, "mt5_xl": 3.7e9, "mt5_xxl": 13e9, "llama3_8b": 8.03e9,
             "gemma_2b": 2.51e9, "qwen2_7b": 7.62e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_model_gins_have_the_published_sizes(name):
  import copy
  import gin
  from flix import gin_utils
  from flix.models.model import make_model
  gin_utils.parse_gin([f"models/{name}.gin"], [], [], require_macros=False)
  config = copy.deepcopy(gin.query_parameter("%MODEL_CONFIG"))
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(make_model(config).abstract_params()))
  assert count == pytest.approx(PUBLISHED[name], rel=0.02)


@needs_libtpu
@pytest.mark.parametrize("config", [T5, DECODER], ids=["t5", "decoder"])
def test_2d_partitioning_never_gathers_the_whole_batch(config):
  """With `embed` over `data` (2-D partitioning) the networks constrain their activations as
  T5X does (embedded inputs, layer outputs, logits on (batch, length, ...)), so XLA gathers the
  weights where they are used. Without the constraints it all-gathered the whole batch's
  logits on every chip (mT5-XXL on v5e:16x16 at (256, 1): 33.7 GB of temporaries)."""
  target = aot.Target.of("v5e:2x2")
  adapters = loop.AdapterSettings(method="lora", lora_rank=2, targets=TARGETS)
  program = loop.build_step_program(
      config, SPACE, SPACE.n_types, adapters, make_optimizer(), StepConfig(),
      target.partitioner((4, 1), DEFAULT_RULES, parameter_partitioning_dims=2))
  compiled = aot.compile_train_step(program, program.batch(LENGTHS, BATCH, False), target)
  module = hlo_text.parse(compiled.executable.as_text())
  shapes = [tuple(int(d) for d in dims.split(",") if d)
            for c in module.computations.values() for i in c if i.op.startswith("all-gather")
            for dims in re.findall(r"\[([0-9,]*)\]", i.type)]
  assert shapes  # 2-D partitioning gathers weights where they are used.
  whole_batch = [s for s in shapes if len(s) == 3 and s[0] == BATCH and s[-1] == config.vocab_size]
  assert not whole_batch, whole_batch


@needs_libtpu
def test_v4_devices_are_tensorcores_with_half_a_chip_each():
  """libtpu describes v4:2x2x2 (8 chips of 2 TensorCores) as 16 devices, and XLA gives each
  half of the chip's 32 GiB; a v5e chip is one device."""
  devices, chip = topology.target_devices("v4:2x2x2")
  assert len(devices) == 16
  assert (chip.name, chip.hbm_bytes, chip.peak_flops) == ("v4", 16 * 2 ** 30, 137.5e12)
  assert chip.hbm_bandwidth == 600e9 and "2 TensorCores" in chip.memory
  devices, chip = topology.target_devices("v5e:2x2")
  assert len(devices) == 4 and chip.hbm_bytes == 16 * 2 ** 30 and chip.peak_flops == 197e12
