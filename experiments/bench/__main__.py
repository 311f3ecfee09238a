"""`python -m experiments.bench <bench> [flags]`: one subcommand per bench module."""

from __future__ import annotations

import argparse
from typing import Sequence

from flix import host_memory
from experiments.bench import decode, layer, memory, packing, peft, resume, study_step, train

BENCHES = (layer, train, peft, decode, memory, packing, resume, study_step)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m experiments.bench",
                                   description="flix benchmarks (see experiments/bench/__init__.py)")
  sub = parser.add_subparsers(dest="command", required=True)
  for bench in BENCHES:
    bench.add_parser(sub)
  args = parser.parse_args(argv)
  args.check(parser, args)
  return args


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  host_memory.retain_freed_memory()  # Before JAX starts its backend.
  return args.run(args)


if __name__ == "__main__":
  main()
