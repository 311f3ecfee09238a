"""`python -m experiments.study`: does FLix generalise better than LoRA? Seeds x methods x grids.

  methods.py   the compared methods and levers (adapter ranks, shared adapter, feature dropout,
               derived features, LoRA ranks, information-matched and structural baselines),
               at LoRA's per-example rank unless rank-exempt
  grids.py     the grids (offline benchmark, SIGMORPHON / WikiPron morphology; offline2 and
               morph2 with distinct validation and test held-out cells): data per seed, base
               model, budgets
  holdouts.py  offline2 / morph2's hold-out design: distinct validation and test cells
  runs.py      one fine-tuning run + evaluation, cached by the hash of its whole configuration
  stats.py     hierarchical bootstrap over seeds, cells and examples; sign-flip test; Holm
  report.py    study.json (pinned schema), study.md, plots
  cli.py       the command line and the progress line across runs
  compare.py   one lever's paired effect from archived runs (python -m experiments.study.compare)
  sweep.py     the sweep table (validation means per configuration) and each side's choice
               from archived runs (python -m experiments.study.sweep)
  confirm.py   the pre-registered endpoints from archived runs (python -m
               experiments.study.confirm -> docs/study/confirmatory/study.json)
"""
