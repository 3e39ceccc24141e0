# Two commands: `make demo` and `make test`. Both set everything up first (idempotent: the
# virtual environment is rebuilt only when pyproject.toml changes) and then do their job.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.fusionrec-installed
DEMO_OUT ?= artifacts/demo
PYTEST_ARGS ?=

.PHONY: demo test setup lint bench clean compile help

help:
	@echo "make demo   set up, then run the whole pipeline on the built-in demo catalog and query Triton"
	@echo "make test   set up, then run the test suite"
	@echo "make setup  only create/update the virtual environment ($(VENV))"
	@echo "make bench  run the benchmarks (prints figures, saves JSON under benchmarks/results/)"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24" setuptools wheel
	$(PIP) install --quiet -e ".[dev,datasets]"
	# musicnn ships the pretrained audio-tagging checkpoints; its metadata demands tensorflow and
	# numpy<1.17, which we do not need (fusionrec reads the checkpoints without TensorFlow).
	$(PIP) install --quiet --no-deps musicnn==0.1.0
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fusionrec demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/encode.py
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/ab.py

compile: $(STAMP)
	$(VENV)/bin/fusionrec pipeline compile pipelines/fusionrec_pipeline.yaml

clean:
	rm -rf artifacts .pytest_cache build *.egg-info src/*.egg-info
