"""Running the installed command-line tools in subprocesses, as a user would, on a tiny grid."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


def progress(folder: Path) -> list[int]:
    """Epochs done per run, as the sidecars under ``folder`` state them."""
    return [json.loads(p.read_text())["epochs_done"] for p in sorted(folder.glob("*.json"))]


def freeze_when(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 300) -> None:
    """Leave ``proc`` stopped (SIGSTOP) at the first moment ``condition()`` holds. The condition
    is evaluated only while the process is stopped, so what it saw on disk is still true when the
    caller signals the process: no race with the process's own progress, however fast or slow
    the machine. Fails if the process exits first or the condition does not come in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.send_signal(signal.SIGSTOP)
        _wait_stopped(proc)
        if condition():
            return
        proc.send_signal(signal.SIGCONT)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"condition not reached in {timeout} s: {proc.communicate()}")


def _wait_stopped(proc: subprocess.Popen) -> None:
    """Until every thread of ``proc`` is stopped (a signal is delivered asynchronously)."""
    tasks = Path(f"/proc/{proc.pid}/task")
    while proc.poll() is None:
        states = []
        for task in tasks.glob("*/stat"):
            try:
                states.append(task.read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue  # a thread that just ended
        if states and all(state in "tTZX" for state in states):
            return
        time.sleep(0.001)


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
