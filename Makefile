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
NEWEST := .venv-newest
NEWEST_PYTHON ?= $(shell .ci/newest_python.sh)
GPU_VENV := .venv-gpu
GPU_TARGETS := h100 a100
GPU_GRIDS := $(PAPER) $(BEYOND) examples/heat/heat.toml

.PHONY: install test test-slow test-all test-lowest test-newest slurm-test gpu-compile reproduce paper-norm beyond census figures quick smoke bench bench-release lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" $(JAX_EXTRA)
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)  ## the package and its test tools into .venv (CUDA jax with an NVIDIA driver)

# The suite on two processes, a test file to each. Tests marked `slow` (end-to-end runs of several
# commands, the previous release's metrics) are left out of `make test` and run by `make test-slow`,
# a step of .ci/run of its own; `make test-all` runs both at once.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10

test: install  ## the fast suite, without the tests marked slow (about 5 min on 2 cores)
	$(PYTEST) -m "not slow"

# Test by test (--dist load), not file by file: the previous release's three problems are the
# longest tests and share no fixture, so that they go to both processes.
test-slow: install  ## only the tests marked slow (a step of .ci/run)
	$(BIN)/python -m pytest -q -n 2 --dist load -m slow

test-all: install  ## the whole suite: the fast one and the tests marked slow
	$(PYTEST)

# The lowest versions pyproject.toml allows, pinned by .ci/lowest.py from its `>=` bounds (CPU jax,
# own venv): raising a bound there is the only edit. A fast subset that touches every dependency.
LOWEST       := .venv-lowest
LOWEST_TESTS := tests/test_flows.py tests/test_cartpole.py tests/test_optim.py tests/test_summary.py \
                tests/test_toy.py tests/test_plotting_trajectories.py \
                tests/test_train.py::test_nan_seed_is_flagged_and_isolated \
                tests/test_train.py::test_clip_value_rows_share_the_program_and_differ \
                tests/test_train.py::test_chunk_length_is_traced_not_recompiled \
                tests/test_runner.py::test_numeric_levels_and_clips_share_one_program \
                tests/test_quantum.py::test_step_gradients_in_float64 \
                tests/test_cli.py::test_bad_input_is_one_line_exit_2_nothing_written \
                tests/test_cli.py::test_list_and_help_do_not_need_jax \
                tests/test_tracking.py::test_event_files_hold_each_epoch_committed_while_the_grid_trains \
                tests/test_tracking.py::test_wandb_offline_one_run_per_run_grouped_by_experiment

$(LOWEST)/.installed: pyproject.toml .ci/lowest.py
	rm -rf $(LOWEST)
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST)/bin/python .ci/lowest.py >$(LOWEST)/constraints.txt
	$(LOWEST)/bin/python -m pip install --quiet -e ".[dev]" -c $(LOWEST)/constraints.txt
	touch $@

test-lowest: $(LOWEST)/.installed  ## a fast subset against the lowest supported versions (.venv-lowest)
	$(LOWEST)/bin/python .ci/lowest.py --check
	$(LOWEST)/bin/python -m pytest -q -n 2 --dist loadfile $(LOWEST_TESTS)

# The newest versions the registry serves, on the newest Python this machine has: what a
# newcomer installing today gets. The lowest versions' subset plus the command line end to end
# (a real run, bptt-plot, published data) and the docs' options against --help: not the whole
# suite a second time.
NEWEST_TESTS := $(filter-out tests/test_cli.py::%,$(LOWEST_TESTS)) tests/test_cli.py tests/test_published.py tests/test_docs.py
$(NEWEST)/.installed: pyproject.toml
	rm -rf $(NEWEST)
	$(NEWEST_PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST)/bin/python -m pip install --quiet --upgrade -e ".[dev]"
	touch $@

test-newest:  ## a subset against the newest versions, on the newest Python here (.venv-newest)
	@if [ -z "$(NEWEST_PYTHON)" ]; then echo "test-newest: skipped: no Python 3.11 or later found"; \
	else $(MAKE) --no-print-directory $(NEWEST)/.installed && \
	  $(NEWEST)/bin/python -c "import sys, jax, jaxlib; print('test-newest: Python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__)" && \
	  $(NEWEST)/bin/python -m pytest -q -n 2 --dist loadfile $(NEWEST_TESTS); fi

# A throwaway one-node SLURM cluster (Debian's slurm-wlm and munge, installed if missing; needs
# root) runs examples/slurm/reproduce.sbatch as a 2-task array on a smoke grid, then plot.sbatch.
slurm-test: install  ## the SLURM recipe on a real one-node cluster (root; skipped where apt cannot install SLURM)
	.ci/slurm_test.sh

# The CUDA build of the same jax version, in its own venv (about 5.5 GB), only to compile: XLA
# compiles for a described GPU (bptt_cli/targets/) without one; no kernel runs.
$(GPU_VENV)/.installed: pyproject.toml $(STAMP)
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install --quiet -e . "jax[cuda12]==$$($(BIN)/python -c 'import jax; print(jax.__version__)')"
	touch $@

gpu-compile: $(GPU_VENV)/.installed  ## compile every paper and beyond program at paper scale for an H100 and an A100, without a GPU
	tmp=$$(mktemp -d) && for t in $(GPU_TARGETS); do for g in $(GPU_GRIDS); do \
	  $(GPU_VENV)/bin/bptt-run $$g --scale paper --dry-run --target $$t --out $$tmp || exit $$?; done; done

reproduce: install  ## the whole paper: toy figures, three grids at paper scale, figures, summary
	$(BIN)/bptt-run toy --out $(OUT)
	for e in $(PAPER); do $(BIN)/bptt-run $$e --scale paper --seeds $(SEEDS) --out $(OUT) || exit $$?; done
	$(BIN)/bptt-plot $(OUT)

# One clip mode of the paper grid at full length, what a 2-core machine can do: cart-pole (1-4
# poles) and guidance (4 rc) complete, the README's leading figures. It trains into their
# published data, docs/data/paper-norm, taking the runs published there as complete (a campaign
# cut short continues where the committed data end), publishes what it finished and redraws the
# figures from the published data alone. Quantum's n = 4 panel is `make census`.
PAPER_NORM_DATA ?= docs/data/paper-norm
paper-norm: install  ## the paper's cart-pole and guidance at full length for clip NORM, resuming from docs/data/paper-norm
	$(BIN)/bptt-run cartpole --scale paper --clip NORM --seeds $(SEEDS) --out $(PAPER_NORM_DATA)
	$(BIN)/bptt-run guidance --scale paper --clip NORM --seeds $(SEEDS) --out $(PAPER_NORM_DATA)
	$(BIN)/bptt-plot $(PAPER_NORM_DATA) --publish $(PAPER_NORM_DATA)
	$(MAKE) --no-print-directory figures

# The questions beyond the paper at full length, what a 2-core machine can do: LQR (both clip
# modes; each seed starts from its own small K, so that seeds differ: docs/model.md's K = 0 makes them
# identical) and the chaotic 2- and 3-link pendulum for clip NORM. Figures into docs/.
BEYOND_OUT ?= results/beyond
LQR_INIT   ?= 0.1
beyond: install  ## the experiments beyond the paper at full length (LQR, 2- and 3-link pendulum) into docs/
	$(BIN)/bptt-run lqr --scale paper --option init_scale=$(LQR_INIT) --seeds $(SEEDS) --out $(BEYOND_OUT)
	$(BIN)/bptt-run pendulum --scale paper --level 2 --level 3 --clip NORM --seeds $(SEEDS) --out $(BEYOND_OUT)
	$(BIN)/bptt-plot $(BEYOND_OUT)
	for f in lqr lqr_diagnostics pendulum pendulum_diagnostics; do cp $(BEYOND_OUT)/figures/$$f.png docs/$${f}_paper.png; done

# The quantum census: target n = 4, clip NORM, Keras' Adam, 300 epochs, flows R, M, C, S, 12
# seeds in blocks of 3 (each block a run, so that finished blocks can be committed), each block
# on one jax CPU device; then its two follow-ups on the same seeds: C and R in float64 (does
# rounding decide the basin?) and C with the previous Adam rule, adam-optax (does the
# optimizer?). It trains into its published data, docs/data/quantum-census, taking the runs
# published there as complete: a census cut short continues where the committed data end. Then
# it publishes the new runs and draws the figure from the published data alone.
CENSUS_OUT    ?= docs/data/quantum-census
CENSUS_BLOCKS ?= 42 45 48 51
CENSUS_RUN     = $(BIN)/bptt-run quantum --scale paper --level 4 --clip NORM --seeds 3 --epochs 300 \
                 --devices 1 --out $(CENSUS_OUT)
census: install  ## the quantum census at n = 4 (12 seeds, 300 epochs, and its float64 and adam-optax follow-ups), resuming from docs/data/quantum-census
	for s in $(CENSUS_BLOCKS); do $(CENSUS_RUN) --seed $$s || exit $$?; done
	for s in $(CENSUS_BLOCKS); do $(CENSUS_RUN) --seed $$s --flow C --optimizer adam-optax || exit $$?; \
	  $(CENSUS_RUN) --seed $$s --flow C --flow R --precision float64 || exit $$?; done
	$(BIN)/bptt-plot $(CENSUS_OUT) --publish $(CENSUS_OUT)
	$(MAKE) --no-print-directory figures

# Every README figure drawn from published data alone (no training).
figures: install  ## the README's figures from the published data in docs/data/ (no training)
	$(BIN)/bptt-plot $(CENSUS_OUT) --out results/figures-census
	for f in quantum; do cp results/figures-census/$$f.png docs/$${f}_census.png; done
	if [ -d $(PAPER_NORM_DATA) ]; then $(BIN)/bptt-plot $(PAPER_NORM_DATA) --out results/figures-paper-norm && \
	  for f in cartpole guidance; do [ ! -f results/figures-paper-norm/$$f.png ] || \
	    cp results/figures-paper-norm/$$f.png docs/$${f}_paper_norm.png; done; fi

quick: install  ## every experiment at the reduced `quick` scale (22 min on 2 CPU cores from a fresh clone, measured)
	$(BIN)/bptt-run toy --out $(OUT)
	for e in $(PAPER) $(BEYOND); do $(BIN)/bptt-run $$e --scale quick --seeds $(SEEDS) --out $(OUT) || exit $$?; done
	$(BIN)/bptt-plot $(OUT)

smoke: install  ## a minute-scale check that everything runs
	for e in $(PAPER) $(BEYOND); do $(BIN)/bptt-run $$e --scale smoke --out $(OUT) || exit $$?; done
	$(BIN)/bptt-plot $(OUT)

bench: install  ## speed figures (CPU, and GPU when jax sees one); stores them for --dry-run estimates
	$(BIN)/python bench/bench.py

RELEASE ?= 0.2.0
bench-release: install  ## only section r of make bench: this checkout against release $(RELEASE), side by side
	$(BIN)/python bench/release.py --release $(RELEASE)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(LOWEST) $(NEWEST) $(GPU_VENV) build *.egg-info .pytest_cache .ruff_cache
