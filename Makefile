# `make test` and `make demo` create .venv on first use and install flix into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-tier2 test-slow demo bench clean

# Re-installs when setup.py (the ranges) or constraints.txt (the exact versions) change.
$(STAMP): setup.py constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,hf]'
	touch $(STAMP)

# The layer contract (.importlinter), then the tests.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests

# The tests moved out of make test (tests/tiers.py says why each moved); CI runs them next.
test-tier2: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m tier2 --durations=10 tests

# Everything make test leaves out: the second tier, end-to-end runs of minutes, benchmarks.
test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "slow or bench or tier2" tests

demo: $(STAMP)
	$(PY) -m experiments.demo --out out/demo-$$(date +%Y%m%d-%H%M%S)

bench: $(STAMP)
	$(PY) -m experiments.bench layer --json bench_layer.json

clean:
	rm -rf $(VENV) build *.egg-info
