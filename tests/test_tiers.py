"""tests/tiers.py names tests that exist: a renamed or deleted test cannot leave a stale
entry behind (and quietly move nothing)."""

import os
import re

from tiers import TIER2

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def test_every_tier2_entry_names_a_test_function():
  for node in TIER2:
    if "::" not in node:  # A whole file.
      assert os.path.isfile(os.path.join(TESTS_DIR, node)) and node.startswith("test_"), node
      continue
    filename, name = node.split("::")
    function = re.sub(r"\[.*\]$", "", name)
    with open(os.path.join(TESTS_DIR, filename), encoding="utf-8") as f:
      source = f.read()
    assert re.search(rf"^def {function}\(", source, re.M), node
    if name != function:  # A parametrized case: its id must be one the file can produce.
      assert all(part in source for part in name[len(function) + 1:-1].split("-")), node
