"""Experiments on top of the flix library: the study (FLix vs LoRA), the benches and the demo.

They are run from a checkout (`python -m experiments.study`, `python -m experiments.bench`,
`python -m experiments.demo`) and are not installed with flix; the library never imports them.
"""
