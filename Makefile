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

# pip's own output goes to $(VENV)/install.log (shown if a step fails); the first setup downloads
# several GB (PyTorch's CUDA build) and takes minutes.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (pip log: $(VENV)/install.log)"
	@$(PIP) install --upgrade "pip>=24" setuptools wheel > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@$(PIP) install -e ".[dev,datasets]" >> $(VENV)/install.log 2>&1 || { tail -50 $(VENV)/install.log; exit 1; }
	@# musicnn ships the pretrained audio-tagging checkpoints; its metadata demands tensorflow and
	@# numpy<1.17, which fusionrec does not need (it reads the checkpoints without TensorFlow).
	@$(PIP) install --no-deps musicnn==0.1.0 >> $(VENV)/install.log 2>&1 || { tail -50 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)
	@echo "$(VENV) ready"

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
	$(VENV)/bin/fusionrec pipeline compile   # pipelines/fusionrec_pipeline.yaml + components/<step>/component.yaml

clean:
	rm -rf artifacts .pytest_cache build *.egg-info src/*.egg-info
