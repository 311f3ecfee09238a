"""`python -m flix.infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH="'...'"
--gin.INPUT_FILE="'requests.jsonl'" --gin.OUTPUT_FILE="'predictions.jsonl'"`

Requests are JSONL lines `{"inputs": "...", "features": {"task": "...", "lang": "..."}}`.
An input longer than TASK_FEATURE_LENGTHS['inputs'] is truncated, its record marked
`"truncated": true` and counted in the log; `--gin.TRUNCATION="'error'"` refuses it instead.
"""

from flix import gin_utils


def main() -> int:
  from flix import inference
  inference.infer_file()
  return 0


if __name__ == "__main__":
  gin_utils.run(main)
