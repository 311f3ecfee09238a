"""`python -m experiments.study`: see experiments.study.cli."""
import sys

from experiments.study.cli import main

sys.exit(main())
