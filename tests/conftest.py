"""Strict defaults for the whole suite: CPU only, float32 unless a test asks for float64, and one
persistent compilation cache for the session, shared by the tests and the command-line
subprocesses they start (the same program is often compiled by several tests)."""

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite's programs are tiny and compiled once each: skipping LLVM's optimizations makes the
# suite about a quarter faster. Values are compared only within the suite, under the same flags.
FAST_COMPILE = "--xla_backend_optimization_level=0"
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
# One cache for the session: pytest-xdist's workers inherit the controller's environment.
OWN_CACHE = "BPTT_TEST_JAX_CACHE" not in os.environ
os.environ.setdefault("BPTT_TEST_JAX_CACHE", tempfile.mkdtemp(prefix="bptt-test-jax-cache-"))
CACHE = Path(os.environ["BPTT_TEST_JAX_CACHE"])
# bptt-run's own cache setting (core/compile_cache.py) points there too, never to the user's
# cache folder; nothing is logged to Weights & Biases unless a test asks.
os.environ["BPTT_COMPILE_CACHE"] = str(CACHE)
# The suite's grids are tiny: keep them on the CPU layout they test (test_grouping checks the
# layout a tiny grid gets by default).
os.environ["BPTT_TINY_STEPS"] = "0"
os.environ.pop("BPTT_WANDB", None)
os.environ.pop("BPTT_TENSORBOARD", None)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", str(CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Start jax's CPU backend now, with one device: a command run in process (clitools.here) would
# otherwise give the whole test process the device count its own grid asks for, whichever test
# happens to start jax first. Tests that need several devices start bptt-run as a process.
jax.devices()


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (gradient checks)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def jax_cache():
    """The session's persistent compilation cache (subprocesses get it through their env)."""
    return CACHE


def pytest_sessionfinish(session):
    """The process that made the cache removes it (the controller, under pytest-xdist)."""
    if OWN_CACHE:
        shutil.rmtree(CACHE, ignore_errors=True)
