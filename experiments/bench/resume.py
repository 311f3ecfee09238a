"""`python -m experiments.bench resume`: what a resume costs the input pipeline, at two data positions.

The offline benchmark's training mixture (`flix.data.offline`, all its tasks x languages by
default), the T5 feature converter, `--batch` rows per batch, one data shard. For each data
position N in `--positions` (default 10 and 10,000 batches): a `TrainBatches` stream is read N
batches and its iterator state saved (untimed); then, in interleaved rounds, the time from
nothing to the first resumed batch in hand:
  restore   a new `TrainBatches`, `restore` from the saved state, first batch (the default
            resume: `train.save_data_iterator`);
  skip      a new `TrainBatches` that skips N batches, first batch (checkpoints without
            iterator state; flix before it had one).
Both give the same batch (asserted). Constant-time resume means `restore` is flat in N.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from experiments.bench import core


def _stream(registration, batch: int, skip: int = 0):
  from flix.data.converter import FlixEncDecFeatureConverter
  from flix.training.batches import TrainBatches
  return TrainBatches(registration.train_mixture, registration.task_feature_lengths, batch,
                      FlixEncDecFeatureConverter(registration.space.n_types), seed=0, skip=skip)


def run(args: argparse.Namespace) -> dict:
  from flix.data.offline_tasks import register_offline
  load = os.getloadavg()
  registration = register_offline()
  records = []
  with tempfile.TemporaryDirectory() as tmp:
    for n in args.positions:
      state = os.path.join(tmp, f"position_{n}")
      start = time.perf_counter()
      stream = _stream(registration, args.batch)
      for _ in range(n):
        next(stream)
      stream.save(state)
      expected = next(stream)
      core.log(f"resume: read {n} batches and saved in {time.perf_counter() - start:.1f} s")

      def restore(state=state):
        resumed = _stream(registration, args.batch)
        resumed.restore(state)
        return next(resumed)

      def skip(n=n):
        return next(_stream(registration, args.batch, skip=n))

      for got in (restore(), skip()):
        for k in expected:
          np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{k} at position {n}")
      cases = [core.Case("resume", "flix", how, {"data_position": n}, 0, call)
               for how, call in (("restore", restore), ("skip", skip))]
      core.time_cases(cases, args.repeats, warmup=0, label=f"resume at {n}")
      records += [{k: v for k, v in c.record().items() if k not in ("tokens", "tokens_per_s")}
                  for c in cases]
  print(core.table([("data position (batches)", lambda r: r["data_position"]),
                    ("resume", lambda r: r["method"]),
                    ("seconds to first batch (median)", lambda r: f"{r['seconds']:.2f}")],
                   records))
  result = {"bench": "resume", "settings": {
      "grid": "offline (default OfflineConfig)", "batch": args.batch, "repeats": args.repeats,
      "statistic": "median seconds from a new pipeline to its first batch",
      **core.environment(load)}, "records": records}
  core.write_json(args.json, result)
  return result


def add_parser(sub) -> None:
  p = sub.add_parser("resume", help="input pipeline resume time: iterator state vs skipping, "
                                    "at two data positions")
  p.add_argument("--positions", type=core.int_list, default=[10, 10_000],
                 help="data positions (batches) to resume at")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3, help="timed rounds")
  p.add_argument("--json", help="write the results here")
  p.set_defaults(run=run, check=check_args)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if not args.positions or min(args.positions) < 0 or args.batch < 1 or args.repeats < 1:
    parser.error(f"--positions must be >= 0 (got {args.positions}), --batch and --repeats >= 1")
