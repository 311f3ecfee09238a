"""`python -m flix.eval --gin_file=runs/eval.gin --gin.CHECKPOINT_PATH="'...'" ...`

Decodes every task-language pair of a mixture with a checkpoint and writes per-pair
predictions (JSONL), per-pair metrics and an aggregate report per task, language and split
kind (report.json, report.md) into EVAL_OUTPUT_DIR.
"""

from flix import gin_utils


def main() -> int:
  from flix import evaluation
  evaluation.evaluate_checkpoint()
  return 0


if __name__ == "__main__":
  gin_utils.run(main)
