# Quick start: `make demo` (set up + train on the embedded default), `make test` (set up + run the tests).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test bench-quick privacy clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # pinned: the CPU wheel; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/blindtrain train

test: $(STAMP)
	$(PY) -m pytest

bench-quick: $(STAMP)
	$(VENV)/bin/blindtrain bench --preset quick --protocols plain,enclave,otp,tempo,slalom --out docs/benchmarks/cpu-quick

privacy: $(STAMP)   # the privacy lab's quick preset: docs/privacy/{results.json,report.md,offload_vs_attack.png}
	$(PY) scripts/privacy_lab.py --preset quick --out docs/privacy

privacy-default: $(STAMP)   # the same on the default `blindtrain train` run (5 epochs): issue #11's acceptance view
	$(PY) scripts/privacy_lab.py --preset default --out docs/privacy/default

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
