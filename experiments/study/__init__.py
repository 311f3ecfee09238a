"""`python -m experiments.study`: does FLix generalise better than LoRA? Seeds x methods x grids.

  methods.py  the compared methods and levers (adapter ranks, shared adapter, feature dropout,
              derived features), all at LoRA's per-example rank
  grids.py    the two grids (offline benchmark, SIGMORPHON / WikiPron morphology): data per seed
              (random hold-out), base model, budgets
  runs.py     one fine-tuning run + evaluation, cached by the hash of its whole configuration
  stats.py    paired hierarchical bootstrap over seeds and examples
  report.py   study.json (pinned schema), study.md, plots
  cli.py      the command line and the progress line across runs
  compare.py  one lever's paired effect from archived runs (python -m experiments.study.compare)
"""
