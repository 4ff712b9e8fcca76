"""Strict defaults for the whole suite: CPU only, float32 unless a test asks for float64, and one
persistent compilation cache for the session, shared by the tests and the command-line
subprocesses they start (the same program is often compiled by several tests)."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
CACHE = Path(tempfile.mkdtemp(prefix="bptt-test-jax-cache-"))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", str(CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (gradient checks)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def jax_cache():
    """The session's persistent compilation cache (subprocesses get it through their env)."""
    return CACHE
