"""`python -m flix.study`: see flix.study.cli."""
import sys

from flix.study.cli import main

sys.exit(main())
