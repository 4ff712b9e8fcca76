# Two commands for a newcomer: `make reproduce` (the paper) and `make test` (the checks).
# Every target creates the local virtual environment .venv on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SEEDS  ?= 3
OUT    ?= results
EXPERIMENTS := cartpole guidance quantum

.PHONY: install install-gpu test test-all reproduce quick smoke bench lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-gpu: install  ## CUDA build of jax (Linux, NVIDIA driver present)
	$(BIN)/python -m pip install --quiet -e ".[gpu,dev]"

test: install  ## the fast suite (what CI runs)
	$(BIN)/python -m pytest -q

test-all: install  ## including the tests marked slow
	$(BIN)/python -m pytest -q -m ""

reproduce: install  ## the whole paper: toy figures, three grids at paper scale, figures, summary
	$(BIN)/bptt-run toy --out $(OUT)
	for e in $(EXPERIMENTS); do $(BIN)/bptt-run $$e --scale paper --seeds $(SEEDS) --out $(OUT) || exit $$?; done
	$(BIN)/bptt-plot $(OUT)

quick: install  ## the same at the reduced `quick` scale (about 20 minutes on 2 CPU cores)
	$(BIN)/bptt-run toy --out $(OUT)
	for e in $(EXPERIMENTS); do $(BIN)/bptt-run $$e --scale quick --seeds $(SEEDS) --out $(OUT) || exit $$?; done
	$(BIN)/bptt-plot $(OUT)

smoke: install  ## a minute-scale check that everything runs
	for e in $(EXPERIMENTS); do $(BIN)/bptt-run $$e --scale smoke --out $(OUT) || exit $$?; done
	$(BIN)/bptt-plot $(OUT)

bench: install  ## speed figures (CPU, and GPU when jax sees one)
	$(BIN)/python bench/bench.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
