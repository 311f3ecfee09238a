"""Ahead-of-time compilation of a run's train step (or its decoding) for a target that need
not be present, and the report `python -m flix.compile` writes.

The step compiled is `TrainProgram.step_fn()` (`flix.training.program`), the function
`flix.train` runs: same model object, optimizer (dense or row-sparse step), FLix strategy,
shardings and donation, lowered for the program's abstract state and the feature converter's
batch shapes. `--decode` compiles the model family's decode (`flix.models.decode_fns`: encoder
pass or prompt prefill, KV cache, greedy search) for abstract inputs.

Memory (per device): parameters, optimizer state and batch are the arguments' shard bytes from
their shapes and shardings (`state_bytes_per_device`: no layout padding); temporaries, outputs,
generated code and the total come from XLA's `memory_analysis()`, the total being arguments +
outputs - aliased (donated) outputs + temporaries + code. A configuration whose parameters and
optimizer state alone exceed the chip's HBM is refused before compiling; one whose total does,
after (`DoesNotFitError`, one line with the need, the HBM and the levers).

Cost (per device): XLA's `cost_analysis()` flops and bytes accessed; its `optimal_seconds` only
where positive (deviceless TPU compiles have given negative values); the step's model flops
(`flix.training.jaxpr_flops`: matmul flops of its jaxpr, every scan body times its length).
XLA counts a loop body once, so for a scanned stack its flops and bytes cover about one layer.
The roofline time is max(compute, memory): compute = max(XLA flops, model flops) / peak bf16
FLOP/s, memory = bytes accessed / HBM bandwidth, with the chip's published peaks
(`flix.training.topology`); `bound` names the larger term. MFU = model flops / (roofline
seconds x peak). The roofline assumes every flop runs at the bf16 peak (float32 matmuls run
slower), every byte moves at the HBM bandwidth, compute and memory traffic overlap perfectly,
and collectives cost nothing (their bytes per step are in `collectives`): it is a lower bound
on the step time, and its MFU an upper bound; for a scanned step the memory term is itself a
lower bound. CPU targets have no published peaks: roofline, bound and MFU are None.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from flix.decoding import DecodeOptions
from flix.errors import DoesNotFitError
from flix.features import FeatureSpace
from flix.layers import table_type
from flix.models import decode_fns
from flix.models.model import EncoderDecoderModel
from flix.training import auto_strategy, hlo_stats, jaxpr_flops, topology
from flix.training.partitioning import Partitioner
from flix.training.program import TrainProgram, state_bytes_per_device

GIB = topology.GIB
# What would help, by what does not fit.
STATE_LEVERS = ("shard the parameters over more chips (a larger MODEL in --mesh=DATA,MODEL, "
                "or 2-D partitioning: --gin.Partitioner.parameter_partitioning_dims=2), train "
                "adapters only (METHOD 'flix' or 'lora': no optimizer state for the base), "
                "shard large FLix tables' feature axis (--gin.Partitioner.feature_shard_rows=N), "
                "factor their Adafactor statistics "
                "(--gin.make_optimizer.table_min_dim_size_to_factor=1), "
                "fewer feature values or lower ranks")
STEP_LEVERS = ("a larger MODEL in --mesh=DATA,MODEL, a smaller BATCH_SIZE or "
               "TASK_FEATURE_LENGTHS, ACTIVATION_DTYPE 'bfloat16', rematerialisation "
               "(--gin.StepConfig.remat_policy='full' with train.step_config = @StepConfig()), "
               "2-D parameter partitioning (--gin.Partitioner.parameter_partitioning_dims=2), "
               "the row-sparse step (runs/row_sparse.gin) or strategy 'gather' for large FLix "
               "tables")


@dataclasses.dataclass(frozen=True)
class Target:
  """A compile target: its topology name (`flix.training.topology.parse`), devices and chip."""

  name: str
  devices: list[Any]
  chip: topology.Chip

  @classmethod
  def of(cls, name: str) -> "Target":
    devices, chip = topology.target_devices(name)
    return cls(name, devices, chip)

  def partitioner(self, mesh_shape, rules, **options) -> Partitioner:
    """The (data, model) mesh over all of this target's devices (-1: the rest); `options`: the
    Partitioner's other fields (parameter_partitioning_dims, feature_shard_rows)."""
    partitioner = Partitioner(mesh_shape=tuple(mesh_shape), rules=rules, devices=self.devices,
                              **options)
    used = partitioner.mesh.devices.size
    if used != len(self.devices):
      raise ValueError(f"--mesh={','.join(map(str, mesh_shape))} uses {used} devices, but "
                       f"{self.name} has {len(self.devices)}: DATA x MODEL must be "
                       f"{len(self.devices)}")
    return partitioner


def feature_space_of_counts(text: str) -> FeatureSpace:
  """`task:100,lang:10000` -> a FeatureSpace with types task (task_0 .. task_99) and lang
  (lang_0 .. lang_9999), in that order: tables sized without reading data."""
  types = {}
  for item in text.split(","):
    name, _, count = item.strip().partition(":")
    if not name or not count.isdigit() or int(count) < 1 or name in types:
      raise ValueError(f"--feature_space={text!r}: expected TYPE:COUNT[,TYPE:COUNT...] with "
                       "distinct types and counts >= 1, e.g. task:100,lang:10000")
    types[name] = [f"{name}_{i}" for i in range(int(count))]
  return FeatureSpace.build(types)


def gib(n: float) -> str:
  return f"{n / GIB:.2f} GiB"


def check_fits_before_compiling(params: Any, opt_state: Any, chip: topology.Chip,
                                what: str) -> None:
  """Refuses (DoesNotFitError) before compiling when the parameters and optimizer state per
  chip (abstract, sharded) already exceed the chip's HBM."""
  p, o = state_bytes_per_device(params), state_bytes_per_device(opt_state)
  if p + o > chip.hbm_bytes:
    raise DoesNotFitError(
        f"{what} does not fit: parameters {gib(p)} + optimizer state {gib(o)} = {gib(p + o)} "
        f"per chip before any activation, over the {chip.name} chip's {gib(chip.hbm_bytes)} "
        f"of {chip.memory}; levers: {STATE_LEVERS}")


@dataclasses.dataclass(frozen=True)
class Compiled:
  """A compile's outcome. report: the JSON object `flix.compile` writes (module docstring);
  what: the step and target, in words; chip: the target's chip; argument_bytes: XLA's argument
  bytes per device (with layout padding, so at least params + optimizer state + batch);
  executable: jax's compiled object (its input_shardings, as_text(), ...)."""

  report: dict
  what: str
  chip: topology.Chip
  argument_bytes: int
  executable: Any

  def refusal(self) -> str:
    """The one-line refusal of a compiled step whose total exceeds the chip's HBM."""
    m = self.report["memory"]
    return (f"{self.what} does not fit: it needs {gib(m['total_bytes'])} per chip (parameters "
            f"{gib(m['params_bytes'])}, optimizer state {gib(m['opt_state_bytes'])}, batch "
            f"{gib(m['batch_bytes'])}, temporaries {gib(m['temp_bytes'])}), over the "
            f"{self.chip.name} chip's {gib(m['hbm_bytes'])} of {self.chip.memory}; levers: "
            f"{STEP_LEVERS}")


@contextlib.contextmanager
def _without_persistent_cache(chip: topology.Chip) -> Iterator[None]:
  """A deviceless TPU executable cannot be read back from JAX's persistent compilation cache
  (reading fails: "PjRtCompiler must be constructed with a Client", and JAX warns), so TPU
  targets compile without it; CPU targets keep it."""
  if chip.name == "cpu":
    yield
    return
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)


def _compile(trace: Callable[[], jax.stages.Traced], what: str,
             chip: topology.Chip) -> tuple[Any, float, float]:
  """(compiled, seconds to trace, lower and compile, the traced step's matmul flops
  (`jaxpr_flops`)); XLA's own out-of-memory is a DoesNotFitError."""
  start = time.perf_counter()
  try:
    with _without_persistent_cache(chip):
      traced = trace()
      compiled = traced.lower().compile()
  except Exception as e:  # pylint: disable=broad-except
    message = str(e)
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
      raise
    first = message.strip().splitlines()[0]
    raise DoesNotFitError(f"{what} does not fit the {chip.name} chip's "
                          f"{gib(chip.hbm_bytes)} of {chip.memory}: XLA: {first}; levers: "
                          f"{STEP_LEVERS}") from None
  return compiled, time.perf_counter() - start, jaxpr_flops.matmul_flops(traced.jaxpr)


def compile_train_step(program: TrainProgram, batch: dict, target: Target) -> Compiled:
  """The report of `program`'s train step compiled for `target` on the batch `batch` (abstract,
  `TrainProgram.batch`). Refuses before compiling when the state alone cannot fit."""
  what = f"the {program.method} train step on {target.name}"
  check_fits_before_compiling(program.state.params, program.state.opt_state, target.chip, what)
  compiled, seconds, model_flops = _compile(
      lambda: program.step_fn().trace(program.state, batch), what, target.chip)
  return _report(program, target, compiled, seconds, model_flops, what=what,
                 params=program.state.params, opt_state=program.state.opt_state,
                 batch=batch)


def compile_choosing(build: Callable[[str | None], TrainProgram],
                     compile_one: Callable[[TrainProgram], Compiled], target: Target,
                     key: Any) -> Compiled:
  """`compile_one(build(None))` (the configured strategy; `build(s)`: the program with FLix
  strategy `s`), except that on a TPU target with strategy 'auto' the strategy is
  `flix.training.auto_strategy`'s pick, compiled per candidate (cached by `key`); the report's
  `auto` holds the candidates' costs and the pick (None where `auto` is not chosen so)."""
  program = build(None)
  if not auto_strategy.applies(program.flix, target.chip):
    return compile_one(program)
  auto, compiled = auto_strategy.choose(program.flix, key,
                                        lambda strategy: compile_one(build(strategy)),
                                        what=f"{program.method} on {target.name}")
  result = compiled.get(auto["pick"]) or compile_one(build(auto["pick"]))
  result.report["auto"] = auto
  return result


def decode_inputs(program: TrainProgram, batch_size: int, input_length: int) -> dict:
  """The abstract inputs of a decode of `batch_size` examples of `input_length` input tokens,
  sharded over 'data': encoder tokens (T5) or prompts `[b, 1 + input_length]` (the start token,
  as `inputs_batch` writes) and their lengths (decoder-only), plus feature ids when the model
  has feature types."""
  sharding = program.partitioner.batch_sharding()
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
  if isinstance(program.model, EncoderDecoderModel):
    inputs = {"encoder_input_tokens": spec(batch_size, input_length)}
  else:
    inputs = {"prompt_tokens": spec(batch_size, input_length + 1),
              "prompt_lengths": spec(batch_size)}
  if program.model.n_types:
    inputs["feature_ids"] = spec(batch_size, program.model.n_types)
  return inputs


def compile_decode(program: TrainProgram, batch_size: int, input_length: int, max_length: int,
                   target: Target) -> Compiled:
  """The report of the family's greedy decode (KV cache of `max_length` positions) of
  `batch_size` examples, compiled for `target`."""
  what = f"the {program.method} decode on {target.name}"
  check_fits_before_compiling(program.state.params, {}, target.chip, what)
  inputs = decode_inputs(program, batch_size, input_length)
  model, params = program.model, program.state.params
  options = DecodeOptions(max_length=max_length)
  ids = inputs.get("feature_ids")
  if isinstance(model, EncoderDecoderModel):
    trace = lambda: decode_fns.trace_encoder_decoder(
        model.module, params, inputs["encoder_input_tokens"], ids, options)
  else:
    trace = lambda: decode_fns.trace_decoder_only(
        model.module, params, inputs["prompt_tokens"], inputs["prompt_lengths"], ids, options,
        bidirectional=model.inputs_bidirectional_attention)
  compiled, seconds, model_flops = _compile(trace, what, target.chip)
  return _report(program, target, compiled, seconds, model_flops, what=what, params=params,
                 opt_state={},
                 batch=inputs)


def flix_tables(params: Any) -> list[dict]:
  """[{name, shape, spec, bytes_per_device}] of every FLix feature table in abstract `params`
  (name: the parameter's path joined by '/'; spec: its PartitionSpec, one entry per axis)."""
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if table_type(path[-1].key) is None:
      continue
    spec = list(leaf.sharding.spec) + [None] * (len(leaf.shape) - len(leaf.sharding.spec))
    out.append({"name": "/".join(str(k.key) for k in path), "shape": list(leaf.shape),
                "spec": [list(s) if isinstance(s, tuple) else s for s in spec],
                "bytes_per_device": state_bytes_per_device(leaf)})
  return out


def _report(program: TrainProgram, target: Target, compiled, seconds: float,
            model_flops: float, *, what: str, params, opt_state, batch) -> Compiled:
  chip = target.chip
  memory = hlo_stats.memory(compiled)
  cost = hlo_stats.cost(compiled)
  flops, moved = cost["flops"], cost["bytes_accessed"]
  mesh = program.partitioner.mesh
  per_device = model_flops / mesh.devices.size
  roofline = mfu = bound = None
  if chip.peak_flops and chip.hbm_bandwidth and flops is not None and moved is not None:
    compute = max(flops, per_device) / chip.peak_flops
    memory_time = moved / chip.hbm_bandwidth
    roofline, bound = max(compute, memory_time), "compute" if compute >= memory_time else "memory"
    mfu = per_device / (roofline * chip.peak_flops) if roofline > 0 else None
  optimal = cost["optimal_seconds"]
  flix = program.flix
  space = flix.space if flix is not None else FeatureSpace()
  report = {
      "topology": target.name,
      "chip": chip.name,
      "mesh": {"data": int(mesh.shape["data"]), "model": int(mesh.shape["model"])},
      "method": program.method,
      "strategy": flix.resolved_strategy() if flix is not None and space.n_types else None,
      "feature_values": int(sum(space.sizes)),
      "memory": {"params_bytes": state_bytes_per_device(params),
                 "opt_state_bytes": state_bytes_per_device(opt_state),
                 "batch_bytes": state_bytes_per_device(batch),
                 "temp_bytes": memory["temp"], "output_bytes": memory["output"],
                 "code_bytes": memory["code"], "total_bytes": memory["total"],
                 "hbm_bytes": int(chip.hbm_bytes)},
      "fits": memory["total"] <= chip.hbm_bytes,
      "cost": {"flops": flops, "bytes_accessed": moved,
               "xla_seconds": optimal if optimal is not None and optimal > 0 else None,
               "roofline_seconds": roofline, "mfu": mfu, "bound": bound,
               "model_flops_per_device": per_device},
      "collectives": hlo_stats.collectives(compiled.as_text()),
      "flix_tables": flix_tables(params),
      "compile_seconds": round(seconds, 3),
      "auto": None,  # Set by compile_choosing where `auto` is chosen by compiling.
  }
  return Compiled(report, what, chip, memory["argument"], compiled)
