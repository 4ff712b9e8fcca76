"""Running the installed command-line tools in subprocesses, as a user would, on a tiny grid."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

BIN = Path(sys.executable).parent


def env_for(cache: Path, **extra) -> dict:
    """CPU only, a shared persistent compilation cache, unbuffered output, wide lines."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    if "XLA_FLAGS" in extra:  # added to the suite's own flags (see conftest.py)
        extra["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {extra['XLA_FLAGS']}".strip()
    env.update(extra)
    return env


def cli(tool: str, *args, cache: Path, cwd: Path, timeout=300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / tool), *map(str, args)],
        cwd=cwd,
        env=env_for(cache, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(tool: str, *args, cache: Path, cwd: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / tool), *map(str, args)],
        cwd=cwd,
        env=env_for(cache, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


TINY = """
problem = "cartpole"
description = "tiny test grid"

[grid]
levels = [1]
flows = ["R", "C"]
clips = ["NORM", "NONE"]

[train]
epochs = {epochs}
seeds = {seeds}
seed = 0
data_seed = 1
n_data = 16
batch_size = 8
optimizer = "adam"
learning_rate = 1e-3
clip_value = 1.0
clip_norm = 1.0

[summary]
threshold = 1.9
"""


def definition(tmp_path: Path, epochs=3, seeds=2, name="tiny", diagnostics=True) -> Path:
    """The tiny grid; without ``diagnostics`` it skips their (slow) compilation."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        TINY.format(epochs=epochs, seeds=seeds)
        + ("" if diagnostics else "\n[diagnostics]\nenabled = false\n")
    )
    return path


def metrics(folder: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in sorted(folder.glob("*.csv")) if not p.name.endswith(".diagnostics.csv")]
    return (
        pd.concat(frames)
        .drop(columns="epoch_seconds")
        .sort_values(["run_id", "seed", "epoch"])
        .reset_index(drop=True)
    )
