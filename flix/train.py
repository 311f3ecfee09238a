"""`python -m flix.train --gin_file=experiments/offline_flix.gin --gin.MODEL_DIR="'/tmp/run'"`."""

import gin

from flix import gin_utils


def main() -> int:
  from flix.training import loop, partitioning
  partitioning.initialize_distributed()
  loop.train(gin_config=gin.config_str())
  return 0


if __name__ == "__main__":
  gin_utils.run(main)
