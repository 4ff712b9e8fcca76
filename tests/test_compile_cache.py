"""Compiled programs kept across processes (jax's persistent compilation cache, as bptt-run sets
it up): where the folder comes from, two processes compiling the same program at once, a third
reading it back, and a damaged entry compiled again with one warning line."""

import subprocess
import sys

import pandas as pd
import pytest
from clitools import cli, env_for, metrics, start

from bptt_cli.core import compile_cache

ONE = """
problem = "cartpole"
[grid]
levels = [1]
flows = ["R"]
clips = ["NORM"]
[train]
epochs = 2
seeds = 2
seed = 0
data_seed = 1
n_data = 16
batch_size = 8
[diagnostics]
enabled = false
"""


def test_the_folder_comes_from_the_option_then_the_environment_then_jax_then_the_user_cache(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert compile_cache.resolve(None, env) == (tmp_path / "xdg" / "bptt-cli" / "jax", "default")
    assert compile_cache.resolve(None, {**env, "BPTT_CACHE_DIR": "/c"})[0].as_posix() == "/c/jax"
    env["JAX_COMPILATION_CACHE_DIR"] = "/jax"
    assert compile_cache.resolve(None, env)[0].as_posix() == "/jax"
    env["BPTT_COMPILE_CACHE"] = "/shared/cache"
    assert compile_cache.resolve(None, env)[0].as_posix() == "/shared/cache"
    assert compile_cache.resolve("/mine", env)[0].as_posix() == "/mine"
    assert compile_cache.resolve("OFF", env)[0] is None
    assert compile_cache.resolve(None, {**env, "BPTT_COMPILE_CACHE": "off"})[0] is None


def test_off_turns_jax_cache_off(tmp_path):
    code = (
        "from bptt_cli.core import compile_cache; import jax; compile_cache.use(); "
        "print(jax.config.jax_enable_compilation_cache)"
    )
    env = env_for(tmp_path, BPTT_COMPILE_CACHE="off")
    env.pop("JAX_COMPILATION_CACHE_DIR")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.slow  # three processes compiling into and reading one cache, ~20 s (make test-slow, CI)
def test_processes_share_compiled_programs_and_a_damaged_entry_is_compiled_again(tmp_path, jax_cache):
    """Two processes start at once on one empty cache and compile the same program (as two
    workers, or two SLURM tasks, of one grid would); a third reads it back; every entry of the
    cache damaged, a fourth compiles again, says so in one line and leaves the cache whole."""
    path = tmp_path / "one.toml"
    path.write_text(ONE)
    cache = tmp_path / "cache"

    def command(k: int):
        return (
            "bptt-run",
            path,
            "--out",
            tmp_path / f"out{k}",
            "--compile-cache",
            cache,
            "--tensorboard",
            "off",
        )

    pair = [start(*command(k), cache=jax_cache, cwd=tmp_path) for k in (0, 1)]
    for proc in pair:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "warning" not in err, err
    reference = metrics(tmp_path / "out0" / "one")
    pd.testing.assert_frame_equal(metrics(tmp_path / "out1" / "one"), reference)
    entries = sorted(cache.glob("*-cache"))
    assert entries and compile_cache.repair(cache) == []  # every entry whole

    third = cli(*command(2), cache=jax_cache, cwd=tmp_path, JAX_LOG_COMPILES="1")
    assert third.returncode == 0, third.stderr
    hits = [line for line in third.stderr.splitlines() if "Persistent compilation cache hit" in line]
    assert any("train_chunk" in line for line in hits), third.stderr[-3000:]

    for entry in entries:  # torn writes: each entry cut to half
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    fourth = cli(*command(3), cache=jax_cache, cwd=tmp_path)
    assert fourth.returncode == 0, fourth.stderr
    warned = [line for line in fourth.stderr.splitlines() if "warning" in line]
    assert len(warned) == 1 and "damaged entry of the compilation cache" in warned[0], fourth.stderr
    assert "Traceback" not in fourth.stderr
    pd.testing.assert_frame_equal(metrics(tmp_path / "out3" / "one"), reference)
    assert sorted(cache.glob("*-cache")) and compile_cache.repair(cache) == []  # written again, whole
