"""Strict defaults for the whole suite: CPU only, float32 unless a test asks for float64."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (gradient checks)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    """A persistent compilation cache shared by the subprocesses of the whole session."""
    return tmp_path_factory.mktemp("jax-cache")
