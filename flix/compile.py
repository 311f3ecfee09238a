"""`python -m flix.compile`: compile a run's train step (or decode) for a TPU topology or a CPU
mesh without the hardware, and write what it costs.

    python -m flix.compile --gin_file=FILE [--gin_search_paths=DIR] [--gin.NAME=VALUE ...] \\
      --topology=v5e:16x16 --mesh=DATA,MODEL [--feature_space=task:100,lang:10000] [--decode] \\
      --json=OUT

The gin files are `flix.train`'s; compile reads what `train` would be given (model, method and
adapters, optimizer, step config, BATCH_SIZE, TASK_FEATURE_LENGTHS, PACK, the partitioner's
rules) and never MODEL_DIR or the data. --topology: `cpu:N` (N host devices) or a TPU slice,
e.g. v5e:2x2, v4:2x2x2 (libtpu needed, no TPU). --mesh: the (data, model) mesh over all of its
devices (-1: the rest). --feature_space: the feature types and their value counts, sizing the
tables without reading data (task_0 .. task_99, ...); default: the gin's registration
(train.registration). --decode: the greedy decode with its KV cache at BATCH_SIZE examples,
TASK_FEATURE_LENGTHS['inputs'] input tokens and ['targets'] new tokens, instead of the train
step. OUT: one JSON object (`flix.training.aot`); docs/tpu.md explains each field. A step that
does not fit the chip is refused (after writing OUT when it compiled), exit status 1.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Sequence

from flix import gin_utils
from flix.training import topology

FLAGS = ("--topology", "--mesh", "--feature_space", "--decode", "--json")
TRAIN_ARGUMENTS = ("model_config", "adapters", "optimizer", "step_config", "batch_size",
                   "task_feature_lengths", "pack", "mixture_or_task_name",
                   "mixture_or_task_module", "use_cached_tasks")
PARTITIONER_ARGUMENTS = ("rules", "parameter_partitioning_dims", "feature_shard_rows")


def split_flags(argv: Sequence[str]) -> tuple[dict, list[str]]:
  """(compile's own options, the gin flags) of `argv`; its own are checked here, before JAX
  starts, so that `cpu:N` can set the host device count."""
  options = {"decode": False, "feature_space": None}
  rest, args = [], list(argv)
  while args:
    arg = args.pop(0)
    name, eq, value = arg.partition("=")
    if name not in FLAGS:
      rest.append(arg)
    elif name == "--decode":
      if eq:
        raise ValueError(f"--decode takes no value, got {arg!r}")
      options["decode"] = True
    else:
      if not eq and args and not args[0].startswith("--"):
        value = args.pop(0)  # --topology v5e:2x2
      if not value:
        raise ValueError(f"{name} needs a value: {name}=...")
      options[name[2:]] = value
  for name in ("topology", "mesh", "json"):
    if name not in options:
      raise ValueError(f"--{name} is required: python -m flix.compile --gin_file=FILE "
                       "--topology=v5e:2x2 --mesh=DATA,MODEL --json=OUT")
  topology.parse(options["topology"])
  options["mesh"] = parse_mesh(options["mesh"])
  return options, rest


def parse_mesh(text: str) -> tuple[int, int]:
  parts = text.split(",")
  try:
    shape = tuple(int(p) for p in parts)
  except ValueError:
    shape = ()
  if len(shape) != 2 or any(s < 1 and s != -1 for s in shape) or shape.count(-1) > 1:
    raise ValueError(f"--mesh={text!r}: expected DATA,MODEL (ints >= 1, at most one -1), "
                     "e.g. --mesh=2,2")
  return shape


def compile_from_gin(options: dict) -> int:
  """Builds `train`'s program from the parsed gin config and compiles it (see the module
  docstring); writes options['json']."""
  from flix import files
  from flix.checks import check_counts
  from flix.data.pairs import import_task_modules
  from flix.errors import DoesNotFitError
  from flix.training import aot, loop, partitioning

  args = gin_utils.bound_arguments(loop.train, TRAIN_ARGUMENTS)
  lengths, batch_size = args["task_feature_lengths"], args["batch_size"]
  check_counts(BATCH_SIZE=batch_size, **{f"TASK_FEATURE_LENGTHS[{k!r}]": v
                                          for k, v in dict(lengths).items()})
  target = aot.Target.of(options["topology"])
  layout = gin_utils.bound_arguments(partitioning.Partitioner, PARTITIONER_ARGUMENTS)
  partitioner = target.partitioner(options["mesh"], **layout)
  if batch_size % partitioner.data_size:
    raise ValueError(f"BATCH_SIZE {batch_size} is not divisible by the mesh's data axis "
                     f"({partitioner.data_size})")
  if options["feature_space"] is not None:
    space = aot.feature_space_of_counts(options["feature_space"])
    n_types = space.n_types
  else:
    import_task_modules(args["mixture_or_task_module"])
    registration = gin_utils.bound_arguments(loop.train, ["registration"])["registration"]
    space, n_types = loop.data_features(registration, args["mixture_or_task_name"],
                                        args["use_cached_tasks"])
  adapters = args["adapters"]

  def build(strategy: str | None):
    settings = adapters if strategy is None else dataclasses.replace(adapters, strategy=strategy)
    return loop.build_step_program(args["model_config"], space, n_types, settings,
                                   args["optimizer"], args["step_config"], partitioner)

  if options["decode"]:
    shapes = (batch_size, lengths["inputs"], lengths["targets"])
    compile_one = lambda program: aot.compile_decode(program, *shapes, target)
  else:
    pack, _ = loop.resolve_pack(args["pack"], adapters, None)
    shapes = (tuple(sorted(dict(lengths).items())), batch_size, pack)
    compile_one = lambda program: aot.compile_train_step(
        program, program.batch(lengths, batch_size, pack), target)
  key = repr((options["topology"], options["mesh"], layout, args["model_config"], adapters,
              id(args["optimizer"]), args["step_config"], options["decode"], shapes,
              None if space is None else [(t.name, t.size) for t in space.types]))
  result = aot.compile_choosing(build, compile_one, target, key)
  files.write_json(options["json"], result.report)
  report = result.report
  print(f"{result.what}: {report['memory']['total_bytes'] / topology.GIB:.2f} GiB per chip "
        f"of {report['memory']['hbm_bytes'] / topology.GIB:.2f}, {report['cost']['flops']:.3g} "
        f"flops, compiled in {report['compile_seconds']:.1f} s; wrote {options['json']}")
  if not report["fits"]:
    raise DoesNotFitError(result.refusal() + f" (report: {options['json']})")
  return 0


def main(argv: Sequence[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    options, gin_argv = split_flags(argv)
  except ValueError as e:
    print(f"error: ValueError: {e}", file=sys.stderr)
    sys.exit(1)
  kind, count = topology.parse(options["topology"])
  if kind == "cpu":  # Read when JAX starts its backend (not yet: nothing has asked for devices).
    os.environ["XLA_FLAGS"] = topology.with_host_devices(os.environ.get("XLA_FLAGS", ""), count)
  gin_utils.run(lambda: compile_from_gin(options), gin_argv, require_macros=False)


if __name__ == "__main__":
  main()
