"""`python -m experiments.demo [--quick] [--out DIR] [--methods M,...|--ablation A]`: FLix vs LoRA.

1. Pretrains a small byte-level T5 on the offline benchmark's unlabelled corpus (the train
   split's input and target texts of every cell as separate, unpaired texts; spans replaced by
   sentinels, the whole text reconstructed; cached under --cache_dir by config hash).
2. Fine-tunes, from that base and with the same steps, batch and learning rate, the study's
   methods (`experiments.study.methods`, every one at LoRA's per-example rank 16): by default
   `lora` and `flix_derived_p0.0` (the setting the study chose on validation: a shared
   adapter, task and language adapters, and family and script adapters derived from the
   language, so the unseen language keeps two of them; no feature dropout);
   `--methods lora,flix,flix_derived_p0.0` adds the paper's plain task + language adapters
   with dropout 0.3.
3. Evaluates the untrained base and every method by greedy decoding on seen pairs, held-out
   (unseen) pairs and the unseen language; writes results.json, heatmap.png and report.md.

Every method is evaluated on validation cells (used to choose settings; reported as
`validation_summary`) and on test cells (the reported `cells` and `summary`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from flix import files, host_memory  # noqa: E402
from flix.data.offline import OfflineConfig  # noqa: E402
from flix.models.t5 import T5Config  # noqa: E402
from experiments.study.grids import SMALL_T5, TINY_T5  # noqa: E402  The study's bases.

KIND_NAMES = {"seen_pair": "seen", "unseen_pair": "unseen_pair", "unseen_language": "unseen_lang"}
ACCURACY = "sequence_accuracy"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Everything that decides the demo's numbers (the pretraining part keys the cache)."""

  offline: OfflineConfig
  model: T5Config
  pretrain_steps: int
  pretrain_learning_rate: float
  finetune_steps: int
  finetune_learning_rate: float
  batch_size: int
  methods: tuple[str, ...] = ("lora", "flix", "flix_derived")  # experiments.study.methods names.
  pretrain_objective: str = "reconstruction"  # flix.data.span_corruption.OBJECTIVES
  pretrain_fields: tuple[str, ...] = ("inputs", "targets")  # Unpaired texts of the corpus.
  pretrain_optimizer: str = "adamw"
  pretrain_schedule: str = "constant"  # After a linear warmup over the first 10% of steps.
  finetune_optimizer: str = "adamw"
  eval_split: str = "test"
  eval_batch_size: int = 64
  seed: int = 0

  def pretrain_key(self) -> str:
    keyed = {"offline": dataclasses.asdict(self.offline), "model": dataclasses.asdict(self.model),
             "steps": self.pretrain_steps, "lr": self.pretrain_learning_rate,
             "objective": self.pretrain_objective, "fields": list(self.pretrain_fields),
             "optimizer": self.pretrain_optimizer,
             "schedule": self.pretrain_schedule,
             "batch": self.batch_size, "seed": self.seed}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


# Chosen on validation cells (docs/demo_history.md, now in git history only): a small, fast
# base learns to copy from reconstruction over inputs and targets (AdamW 1e-3); adapters train
# stably at 1e-3 (FLix diverged at 3e-3). decimal (6-8 digit copies) stays near 0 exact match
# for both methods at this budget, but it is kept: with only two tasks, each unseen pair's
# language is trained with a single task, and its language adapter learns that task's format
# (validation: month_year-en came out as English long dates). The budget (1000 pretraining
# steps, 800 fine-tuning steps, LoRA and FLix derived only, byte lengths 25 = the longest text
# + EOS) is what fits 15 minutes on a 2-core machine (3000 + 3 x 2000 steps took 46 min;
# 1500 + 2 x 1000 steps 18 min).
# The FLix method follows the study's validation choice (docs/study.md run 6): FLix derived
# without feature dropout since 2026-12-06 (with dropout 0.3 before).
FULL = DemoConfig(
    offline=OfflineConfig(tasks=("month_year", "long_date", "decimal"),
                          langs=("en", "fr", "de", "es", "it", "nl", "pt"), prefix="task_lang",
                          n_train=300, input_length=25, target_length=25),
    model=SMALL_T5,
    pretrain_steps=1000, pretrain_learning_rate=1e-3, pretrain_optimizer="adamw",
    pretrain_schedule="constant",
    finetune_steps=800, finetune_learning_rate=1e-3,
    batch_size=32, methods=("lora", "flix_derived_p0.0"))

QUICK = DemoConfig(
    offline=OfflineConfig(tasks=("month_year", "long_date"), langs=("en", "fr", "de", "pt"),
                          prefix="task_lang", n_train=48, n_validation=8, n_test=8,
                          input_length=32, target_length=32),
    model=TINY_T5,
    pretrain_steps=150, pretrain_learning_rate=1e-3, pretrain_optimizer="adamw",
    pretrain_schedule="constant",
    finetune_steps=150, finetune_learning_rate=1e-3,
    batch_size=16, eval_batch_size=32)


def stage(message: str) -> None:
  print(f"\n== {message}", file=sys.stderr, flush=True)


def pretrain(cfg: DemoConfig, reg, cache_dir: str) -> str:
  """The pretrained base checkpoint, trained now or reused from the cache."""
  from flix.training import loop, optimizers
  model_dir = os.path.join(cache_dir, f"pretrain-{cfg.pretrain_key()}")
  path = os.path.join(model_dir, f"checkpoint_{cfg.pretrain_steps}")
  if os.path.isdir(path):
    stage(f"pretraining: reusing {path}")
    return path
  stage(f"pretraining the base ({cfg.pretrain_steps} steps, {cfg.pretrain_objective}) -> "
        f"{model_dir}")
  schedule = optimizers.learning_rate_schedule(cfg.pretrain_learning_rate, cfg.pretrain_schedule,
                                               warmup_steps=max(cfg.pretrain_steps // 10, 1),
                                               decay_steps=cfg.pretrain_steps)
  loop.train(model_dir=model_dir, mixture_or_task_name=reg.pretrain.name,
             task_feature_lengths=dict(reg.pretrain.feature_lengths),
             train_steps=cfg.pretrain_steps, batch_size=cfg.batch_size, model_config=cfg.model,
             registration=reg,
             adapters=loop.AdapterSettings(method="full"),
             optimizer=optimizers.make_optimizer(cfg.pretrain_optimizer, schedule),
             checkpoint_period=cfg.pretrain_steps, log_period=max(cfg.pretrain_steps // 20, 1),
             random_seed=cfg.seed, gin_config=f"# experiments.demo pretraining: {cfg}\n")
  return path


def finetune(cfg: DemoConfig, reg, base: str, spec, model_dir: str) -> tuple[str, int]:
  """Fine-tunes the study method `spec` from `base`; returns (checkpoint, trained parameters)."""
  import jax
  from flix import checkpoints
  from flix.training import loop, optimizers
  ranks = ", ".join(f"{t} {r}" for t, r in spec.feature_ranks)
  stage(f"fine-tuning {spec.name} ({cfg.finetune_steps} steps; "
        + (f"rank {spec.shared_rank})" if spec.method == "lora" else
           f"shared {spec.shared_rank}, {ranks}, feature dropout {spec.feature_dropout})"))
  loop.train(model_dir=model_dir, mixture_or_task_name=reg.train_mixture,
             task_feature_lengths=reg.task_feature_lengths, train_steps=cfg.finetune_steps,
             batch_size=cfg.batch_size, model_config=cfg.model, registration=reg,
             adapters=spec.adapters(), initial_checkpoint_path=base,
             optimizer=optimizers.make_optimizer(cfg.finetune_optimizer,
                                                cfg.finetune_learning_rate),
             checkpoint_period=cfg.finetune_steps, log_period=max(cfg.finetune_steps // 10, 1),
             random_seed=cfg.seed, pack=False,  # As the study: equal examples per step.
             gin_config=f"# experiments.demo {spec.name}: {cfg}\n")
  path = os.path.join(model_dir, f"checkpoint_{cfg.finetune_steps}")
  _, _, params = checkpoints.load_model(path)
  trained = sum(v.size for v in jax.tree.leaves(checkpoints.adapter_leaves(params)))
  return path, int(trained)


def train_losses(model_dir: str) -> dict[str, float]:
  """The first and last logged training loss of a run (`metrics.jsonl`): did it learn?"""
  with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
    losses = [json.loads(line)["loss"] for line in f if line.strip()]
  return {"first": losses[0], "last": losses[-1]}


def evaluate(cfg: DemoConfig, reg, checkpoint: str, out_dir: str, split: str,
             evaluators: dict) -> dict[str, Any]:
  """Greedy decoding on every pair of `split`; returns the method's results record.

  evaluators: PairEvaluators of this run by (eval mixture, split), built on first use and
  reused (building one traces every pair's input pipeline: most of an evaluation's time at
  the demo's model size).
  """
  from flix import checkpoints, evaluation
  from flix.data.converter import converter_class
  from flix.models.model import make_model
  model_config, flix, params = checkpoints.load_model(checkpoint)
  model = make_model(model_config, flix)
  key = (reg.eval_mixture, split)
  if key not in evaluators:
    evaluators[key] = evaluation.PairEvaluator(
        reg.eval_mixture, feature_lengths=reg.task_feature_lengths,
        batch_size=cfg.eval_batch_size, holdout=reg.holdout, split=split,
        feature_converter_cls=converter_class(model))
  report = evaluators[key].evaluate(model, params, out_dir=out_dir)
  cells = []
  for name, metrics in sorted(report.per_pair.items()):
    info = report.pairs[name]
    cells.append({"task": info["task"], "lang": info["lang"], "split": KIND_NAMES[info["kind"]],
                  "metric": "exact_match", "value": metrics[ACCURACY] / 100.0,
                  "n": int(info["n_examples"])})
  # Means over the pairs of each kind (flix.data.aggregate); character error rate (%) shows
  # learning where exact match is still 0 (the --quick run).
  kinds = {KIND_NAMES[kind]: means for kind, means in report.by_kind.items()}
  nan = float("nan")
  summary = {kind: kinds[kind][ACCURACY] / 100.0 if kind in kinds else nan
             for kind in KIND_NAMES.values()}
  summary_cer = {kind: kinds[kind]["cer"] if kind in kinds else nan
                 for kind in KIND_NAMES.values()}
  return {"cells": cells, "summary": summary, "summary_cer": summary_cer}


def summary_table(methods: dict[str, dict[str, Any]]) -> str:
  rows = ["| method | trained params | seen | unseen pair | unseen language |",
          "| --- | ---: | ---: | ---: | ---: |"]
  for name, m in methods.items():
    s = m["summary"]
    rows.append(f"| {name} | {m['params_trained']:,} | {s['seen']:.3f} | "
                f"{s['unseen_pair']:.3f} | {s['unseen_lang']:.3f} |")
  return "\n".join(rows)


def heatmap(methods: dict[str, dict[str, Any]], path: str) -> None:
  """Task x language exact match, one panel per method; held-out cells outlined."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  first = next(iter(methods.values()))["cells"]
  tasks = list(dict.fromkeys(c["task"] for c in first))
  langs = list(dict.fromkeys(c["lang"] for c in first))
  # Task names label the first panel only (they overlapped the neighbouring panel before), and
  # the constrained layout keeps labels, titles and the colour bar apart.
  fig, axes = plt.subplots(1, len(methods), sharey=True, squeeze=False, layout="constrained",
                           figsize=(1.8 + 0.55 * len(langs) * len(methods),
                                    1.4 + 0.45 * len(tasks)))
  for i, (ax, (name, m)) in enumerate(zip(axes[0], methods.items())):
    grid = np.full((len(tasks), len(langs)), np.nan)
    for c in m["cells"]:
      grid[tasks.index(c["task"]), langs.index(c["lang"])] = c["value"]
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for c in m["cells"]:
      y, x = tasks.index(c["task"]), langs.index(c["lang"])
      ax.text(x, y, f"{c['value']:.2f}", ha="center", va="center", fontsize=6,
              color="white" if c["value"] < 0.5 else "black")
      if c["split"] != "seen":
        style = "-" if c["split"] == "unseen_pair" else ":"
        ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red",
                                   linewidth=1.5, linestyle=style))
    ax.set_xticks(range(len(langs)), langs, fontsize=7)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    ax.tick_params(axis="y", labelleft=i == 0)
    ax.set_title(f"{name} (exact match)", fontsize=9)
  fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
  fig.suptitle("red solid: unseen pair; red dotted: unseen language; blank: absent cell",
               fontsize=7)
  files.save_figure(fig, path, dpi=130)
  plt.close(fig)


def register(cfg: DemoConfig, derived: tuple[str, ...] = ()):
  """The offline benchmark's registration; `derived` adds language-table feature types."""
  from flix.data import offline, offline_tasks
  space = (offline.generate(cfg.offline).feature_space(derived=derived)
           if derived else None)
  return offline_tasks.register_offline(
      cfg.offline, space, prefix="flix_demo" + "".join(f"_{d}" for d in derived),
      pretrain_objective=cfg.pretrain_objective, pretrain_fields=cfg.pretrain_fields)


def method_specs(names) -> list:
  """The study's MethodSpecs for `names`, at LoRA's per-example rank (ValueError otherwise)."""
  from experiments.study import methods as study_methods
  specs = [study_methods.method(n) for n in names]
  study_methods.check_budget(specs)
  return specs


def run(cfg: DemoConfig, out: str, cache_dir: str, ablation: str | None = None) -> dict:
  start = time.time()
  specs = method_specs(cfg.methods)
  os.makedirs(out, exist_ok=True)
  stage("generating the offline benchmark")
  reg = register(cfg)
  print(f"{len(reg.tasks)} cells; absent: "
        f"{sorted(f'{p.task}-{p.lang}' for p in reg.data.absent)}; unseen pairs: "
        f"{sorted(f'{p.task}-{p.lang}' for p in reg.holdout.unseen_pairs)}; unseen "
        f"languages: {sorted(reg.holdout.unseen_langs)}", file=sys.stderr)
  base_checkpoint = pretrain(cfg, reg, cache_dir)
  stage(f"evaluating the untrained base on the {cfg.eval_split} split (the floor)")
  evaluators = {}
  base = evaluate(cfg, reg, base_checkpoint, os.path.join(out, "base", f"eval_{cfg.eval_split}"),
                  cfg.eval_split, evaluators)
  methods = {}
  for spec in specs:
    spec_reg = register(cfg, spec.derived) if spec.derived else reg
    ckpt, trained = finetune(cfg, spec_reg, base_checkpoint, spec, os.path.join(out, spec.name))
    stage(f"evaluating {spec.name} on the validation split (for choosing settings)")
    validation = evaluate(cfg, spec_reg, ckpt, os.path.join(out, spec.name, "eval_validation"),
                          "validation", evaluators)
    result = validation
    if cfg.eval_split != "validation":
      stage(f"evaluating {spec.name} on the {cfg.eval_split} split (reported)")
      result = evaluate(cfg, spec_reg, ckpt,
                        os.path.join(out, spec.name, f"eval_{cfg.eval_split}"), cfg.eval_split,
                        evaluators)
    methods[spec.name] = {"params_trained": trained, **result,
                          "validation_summary": validation["summary"],
                          "train_loss": train_losses(os.path.join(out, spec.name)),
                          "spec": dataclasses.asdict(spec)}
    print(summary_table({spec.name: methods[spec.name]}), file=sys.stderr)
  results = {"wall_seconds": time.time() - start, "base": base, "methods": methods,
             "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
             "holdout": reg.holdout.to_dict()}
  files.write_json(os.path.join(out, "results.json"), results, indent=2)
  heatmap(methods, os.path.join(out, "heatmap.png"))
  table = summary_table({"untrained base": {"params_trained": 0, **base}, **methods})
  files.write_text(os.path.join(out, "report.md"),
                   f"# flix demo ({'ablation: ' + ablation if ablation else 'FLix vs LoRA'})\n\n"
                   f"Exact match on the {cfg.eval_split} split, mean over cells of each kind.\n\n"
                   f"{table}\n\nWall time: {results['wall_seconds']:.0f} s. Heatmap: "
                   "heatmap.png.\n")
  print(f"\n{table}\n\nwrote {out}/results.json, heatmap.png, report.md in "
        f"{results['wall_seconds']:.0f} s", flush=True)
  return results


def main(argv=None) -> int:
  host_memory.retain_freed_memory()  # Before JAX (imported with experiments.study) starts its backend.
  from experiments.study import methods as study_methods
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="reduced version (the tests run it)")
  parser.add_argument("--out", default="out/demo", help="output directory")
  parser.add_argument("--cache_dir", default=os.path.join(os.path.expanduser("~"), ".cache",
                                                          "flix", "demo"),
                      help="where pretrained bases are kept, keyed by config")
  parser.add_argument("--methods", default=None,
                      help="comma-separated experiments.study methods (default: "
                      f"{','.join(FULL.methods)})")
  parser.add_argument("--ablation", choices=sorted(study_methods.ABLATIONS), default=None,
                      help="the study's ablation methods instead (dropout: FLix with feature "
                      "dropout 0 / 0.3 / 0.5 / 0.7; ranks: task vs language rank; shared: a "
                      "shared adapter x dropout; no_dropout: plain, shared and derived FLix)")
  parser.add_argument("--split", choices=("validation", "test"), default=None,
                      help="evaluation split (default: test; use validation to tune)")
  parser.add_argument("--finetune_steps", type=int, default=None,
                      help="fine-tuning steps of each method (default: 800; --quick: 150)")
  args = parser.parse_args(argv)
  from absl import logging as absl_logging  # seqio's "uncached FunctionDataset" notes.
  absl_logging.set_verbosity(absl_logging.ERROR)
  cfg = QUICK if args.quick else FULL
  if args.split:
    cfg = dataclasses.replace(cfg, eval_split=args.split)
  if args.finetune_steps is not None:
    if args.finetune_steps < 1:
      parser.error(f"--finetune_steps must be >= 1, got {args.finetune_steps}")
    cfg = dataclasses.replace(cfg, finetune_steps=args.finetune_steps)
  if args.methods and args.ablation:
    parser.error("give --methods or --ablation, not both")
  if args.methods or args.ablation:
    names = (study_methods.ABLATIONS[args.ablation] if args.ablation else
             tuple(n.strip() for n in args.methods.split(",") if n.strip()))
    try:
      method_specs(names)
    except ValueError as e:
      parser.error(f"--methods: {e}")
    cfg = dataclasses.replace(cfg, methods=tuple(names))
  if os.path.exists(os.path.join(args.out, "results.json")):
    print(f"error: {args.out}/results.json exists; choose another --out or remove it",
          file=sys.stderr)
    return 1
  run(cfg, args.out, args.cache_dir, args.ablation)
  return 0


if __name__ == "__main__":
  sys.exit(main())
