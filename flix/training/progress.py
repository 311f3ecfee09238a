"""Training observability: a live progress line, TensorBoard event files and metrics JSONL."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Mapping

import numpy as np
import tensorflow as tf


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class MetricsLogger:
  """Writes scalars to MODEL_DIR/train (TensorBoard) and MODEL_DIR/metrics.jsonl, and prints
  `step 120/800 | 3.1 steps/s | 9.6k tokens/s | loss 1.234 | ETA 3m38s` to stderr.

  With `write_files=False` (processes other than 0 of a multi-process run) only the progress
  line is printed."""

  def __init__(self, model_dir: str, *, total_steps: int, start_step: int, tokens_per_step: int,
               stream=None, write_files: bool = True):
    self.total_steps, self.tokens_per_step = total_steps, tokens_per_step
    self.stream = stream or sys.stderr
    self.writer = self.jsonl = None
    if write_files:
      self.writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
      self.jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a", encoding="utf-8")
    self.last_step, self.last_time = start_step, time.perf_counter()

  def log(self, step: int, metrics: Mapping[str, np.ndarray]) -> dict[str, float]:
    now = time.perf_counter()
    steps_per_s = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    scalars = {k: float(v) for k, v in metrics.items()}
    scalars["steps_per_second"] = steps_per_s
    scalars["tokens_per_second"] = steps_per_s * self.tokens_per_step
    if self.writer is not None:
      with self.writer.as_default(step=step):
        for name, value in scalars.items():
          tf.summary.scalar(name, value)
      self.writer.flush()
      self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
      self.jsonl.flush()
    eta = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
    line = (f"step {step}/{self.total_steps} | {steps_per_s:.2f} steps/s | "
            f"{scalars['tokens_per_second'] / 1000:.1f}k tokens/s | loss {scalars['loss']:.4f} | "
            f"ETA {format_duration(eta) if eta != float('inf') else '?'}")
    print(line, file=self.stream, flush=True)
    return scalars

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.jsonl.close()
