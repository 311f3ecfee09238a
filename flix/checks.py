"""Argument checks shared by the library's entry functions (a leaf: imports nothing of flix)."""

from __future__ import annotations


def check_counts(**values) -> None:
  """Each keyword (named as the user sets it, e.g. `TRAIN_STEPS`) must be an int >= 1."""
  for name, value in values.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
