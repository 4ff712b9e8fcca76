# Two commands for a newcomer: `make reproduce` (the paper) and `make test` (the checks).
# Every target creates the local virtual environment .venv on first use. Where an NVIDIA driver
# answers (nvidia-smi), the CUDA build of jax is installed for the CUDA major version the driver
# supports, so that runs go to the GPU; GPU=0 forces the CPU build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SEEDS  ?= 3
OUT    ?= results
PAPER  := cartpole guidance quantum
BEYOND := lqr pendulum

CUDA_MAJOR := $(shell nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -n 1)
GPU ?= $(if $(CUDA_MAJOR),1,0)
ifeq ($(GPU),1)
JAX_BUILD := cuda$(if $(filter 12,$(CUDA_MAJOR)),12,13)
JAX_EXTRA := "jax[$(JAX_BUILD)]"
else
JAX_BUILD := cpu
JAX_EXTRA :=
endif
STAMP := $(VENV)/.installed-$(JAX_BUILD)

.PHONY: install test test-all test-lowest reproduce beyond quick smoke bench lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" $(JAX_EXTRA)
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)  ## the package and its test tools into .venv (CUDA jax with an NVIDIA driver)

test: install  ## the fast suite (what CI runs)
	$(BIN)/python -m pytest -q

test-all: install  ## including the tests marked slow
	$(BIN)/python -m pytest -q -m ""

reproduce: install  ## the whole paper: toy figures, three grids at paper scale, figures, summary
	$(BIN)/bptt-run toy --out $(OUT)
	for e in $(PAPER); do $(BIN)/bptt-run $$e --scale paper --seeds $(SEEDS) --out $(OUT) || exit $$?; done
	$(BIN)/bptt-plot $(OUT)

beyond: install  ## the experiments beyond the paper (LQR with its optimum, chained pendulum) at full scale
	for e in $(BEYOND); do $(BIN)/bptt-run $$e --scale paper --seeds $(SEEDS) --out $(OUT) || exit $$?; done
	$(BIN)/bptt-plot $(OUT)

quick: install  ## every experiment at the reduced `quick` scale (about 20 minutes on 2 CPU cores)
	$(BIN)/bptt-run toy --out $(OUT)
	for e in $(PAPER) $(BEYOND); do $(BIN)/bptt-run $$e --scale quick --seeds $(SEEDS) --out $(OUT) || exit $$?; done
	$(BIN)/bptt-plot $(OUT)

smoke: install  ## a minute-scale check that everything runs
	for e in $(PAPER) $(BEYOND); do $(BIN)/bptt-run $$e --scale smoke --out $(OUT) || exit $$?; done
	$(BIN)/bptt-plot $(OUT)

bench: install  ## speed figures (CPU, and GPU when jax sees one); stores them for --dry-run estimates
	$(BIN)/python bench/bench.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
