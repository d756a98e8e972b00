# Each target creates .venv on first use, so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
PEERS := $(VENV)/.peers-installed
BENCH := $(VENV)/.bench-installed

.PHONY: install test demo bench bench-quality clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# k-diffusion cannot be an ordinary requirement (see requirements-peers.txt).
$(PEERS): requirements-peers.txt $(STAMP)
	$(PY) -m pip install -q --no-deps -r requirements-peers.txt
	touch $@

# diffusers, the second peer, with its pinned dependencies (requirements-bench.txt).
$(BENCH): requirements-bench.txt $(STAMP)
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

install: $(STAMP)
	$(PY) -m pip install -q --no-build-isolation --no-deps .

# lint-imports checks the import layers of pyproject.toml before the tests run.
test: install $(PEERS) $(BENCH)
	$(VENV)/bin/lint-imports --no-cache
	cd tests && ../$(PY) -m pytest -n 2 -q

demo: install
	$(VENV)/bin/scoreops demo --out runs/demo

bench: install
	$(VENV)/bin/scoreops bench --out benchmarks/results

# Quality per NFE against k-diffusion; trains the digits model once (cached) and caches every run.
bench-quality: install $(PEERS) $(BENCH)
	$(PY) benchmarks/bench_quality.py --out benchmarks/results --figures-dir docs/figures

clean:
	rm -rf build dist *.egg-info runs
