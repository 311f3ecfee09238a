# `make test` and `make demo` create .venv on first use and install flix into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-slow demo bench clean

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

test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "slow or bench" tests

demo: $(STAMP)
	$(PY) -m experiments.demo --out out/demo-$$(date +%Y%m%d-%H%M%S)

bench: $(STAMP)
	$(PY) -m experiments.bench layer --json bench_layer.json

clean:
	rm -rf $(VENV) build *.egg-info
