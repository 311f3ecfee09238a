"""The train state: everything a step reads and writes, and everything resume restores."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar; params: plain param tree; opt_state: optax state; rng: uint32 [2]."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
