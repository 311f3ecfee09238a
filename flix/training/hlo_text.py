"""Optimized HLO text read as computations, instructions and how often each runs per step.

XLA's `cost_analysis()` and a plain scan of the HLO text count a loop body once. A scanned
layer stack (`StepConfig.scan_layers`) is a `while` loop whose body runs L times, so per-step
figures need each computation's *executions per step*: 1 for the entry computation, and for
a computation called from one that runs w times, w (call, fusion, reducer, async wrapper) or
w x N for the body of a `while` of trip count N. N is the loop's `known_trip_count` where
XLA annotates it, else read from its condition: `ROOT compare(counter, constant(N)),
direction=LT` (the form JAX's `scan` and `fori_loop` lower to, counting from 0). A loop of
unknown trip count (a decode loop that stops early) counts once and is listed in
`Module.unknown_loops`.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

_HEADER = re.compile(r"^(ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+"
                          r"(?P<op>[a-z][\w\-]*)\((?P<rest>.*)$")
_CALLEE = re.compile(r"\b(?P<attr>calls|to_apply|body|condition|branch_computations|"
                     r"called_computations|async_execution_thread_computation)="
                     r"(?P<value>\{[^}]*\}|%?[\w.\-]+)")
_NAME = re.compile(r"%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  type: str  # The HLO type text (`bf16[8,128]{1,0}` or a tuple of them).
  op: str
  operands: tuple[str, ...]
  callees: tuple[tuple[str, str], ...]  # (attribute, computation name)
  text: str


@dataclasses.dataclass
class Module:
  computations: dict[str, list[Instruction]]
  entry: str
  executions: dict[str, int]  # Executions per step of each computation reached from the entry.
  unknown_loops: list[str]  # `while` instructions whose trip count is unknown (counted once).


def _operands(rest: str) -> tuple[str, ...]:
  """The `%name` operands before the closing parenthesis of the operand list."""
  depth, end = 1, len(rest)
  for i, ch in enumerate(rest):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      end = i
      break
  return tuple(m.group(1) for m in re.finditer(r"%([\w.\-]+)", rest[:end]))


def _callees(rest: str) -> tuple[tuple[str, str], ...]:
  out = []
  for m in _CALLEE.finditer(rest):
    for name in _NAME.findall(m.group("value").strip("{}")):
      out.append((m.group("attr"), name))
  return tuple(out)


def parse(hlo_text: str) -> Module:
  """The computations of an HLO module's text and their executions per step (see the module
  docstring). Text without computation headers is read as one entry computation."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line) if not line.startswith((" ", "\t")) else None
    if header:
      current = header.group("name")
      computations[current] = []
      if header.group(1):
        entry = current
      continue
    m = _INSTRUCTION.match(line)
    if m is None:
      continue
    if current is None:
      current = entry = "entry"
      computations[current] = []
    rest = m.group("rest")
    computations[current].append(Instruction(m.group("name"), m.group("type"), m.group("op"),
                                             _operands(rest), _callees(rest), line))
  if entry is None:
    entry = next(iter(computations), "entry")
    computations.setdefault(entry, [])
  executions, unknown = _executions(computations, entry)
  return Module(computations, entry, executions, unknown)


def trip_count(instruction: Instruction, computations: dict[str, list[Instruction]]
               ) -> int | None:
  """A `while` instruction's trip count (see the module docstring), or None if unknown."""
  known = _TRIP.search(instruction.text)
  if known:
    return int(known.group(1))
  condition = dict(instruction.callees).get("condition")
  body = computations.get(condition, [])
  if not body:
    return None
  by_name = {i.name: i for i in body}
  root = next((i for i in body if i.text.lstrip().startswith("ROOT")), body[-1])
  if root.op != "compare" or "direction=LT" not in root.text or len(root.operands) != 2:
    return None
  bound = by_name.get(root.operands[1])
  if bound is None or bound.op != "constant":
    return None
  literal = re.match(r"\s*(-?\d+)\s*\)", bound.text.split("constant(", 1)[1])
  return int(literal.group(1)) if literal else None


def _executions(computations, entry):
  """Executions per step of every computation reached from `entry` (callers before callees:
  HLO computations form a DAG)."""
  edges: dict[str, list[tuple[str, int]]] = defaultdict(list)
  unknown = []
  for name, instructions in computations.items():
    for inst in instructions:
      trips = None
      if inst.op == "while":
        trips = trip_count(inst, computations)
        if trips is None:
          unknown.append(inst.name)
      for attr, callee in inst.callees:
        times = (trips if trips is not None else 1) if attr == "body" else 1
        edges[name].append((callee, times))
  order, seen = [], set()

  def visit(name):  # Post-order DFS; reversed, callers come before their callees.
    if name in seen:
      return
    seen.add(name)
    for callee, _ in edges.get(name, ()):
      visit(callee)
    order.append(name)

  visit(entry)
  executions = defaultdict(int, {entry: 1})
  for name in reversed(order):
    for callee, times in edges.get(name, ()):
      executions[callee] += executions[name] * times
  return dict(executions), unknown
