"""The exceptions a user can meet, in one leaf module that every layer may import.

Each is a ValueError or RuntimeError subclass, so a caller that catches those keeps working;
the entry points (`flix.gin_utils.run`) print them as one `error: Name: message` line.
"""

from __future__ import annotations

import signal


class UnknownFeatureError(ValueError):
  """A feature value (or type) that the feature space does not know."""


class CheckpointError(ValueError):
  """A checkpoint directory that is missing, incomplete or inconsistent."""


class DamagedCheckpointError(CheckpointError):
  """Array files of a checkpoint that cannot be read (missing, truncated or corrupted).

  Attributes: `checkpoint` (the checkpoint directory), `arrays` ({name: reason}, names like
  `params/encoder/layers_0/mlp/wi/kernel`, relative to the checkpoint).
  """

  def __init__(self, checkpoint: str, arrays: dict[str, str], advice: str = ""):
    names = list(arrays)
    more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
    super().__init__(f"checkpoint {checkpoint} is damaged: cannot read {', '.join(names[:3])}"
                     f"{more}: {arrays[names[0]]}" + (f". {advice}" if advice else ""))
    self.checkpoint, self.arrays = checkpoint, arrays


class HFConversionError(ValueError):
  """A Hugging Face directory, config field or weight that cannot be converted."""


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
  """SIGTERM/SIGINT arrived during training; a checkpoint was saved at `path`."""

  def __init__(self, signum: int, path: str):
    super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint saved at {path}")
    self.signum, self.path = signum, path


class DoesNotFitError(ValueError):
  """A step whose memory per chip exceeds the chip's HBM (`flix.compile`); the message gives
  the need, the chip's HBM and the levers that would help."""
