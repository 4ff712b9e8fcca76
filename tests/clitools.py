"""Running the command-line tools as a user would, on a tiny grid: in subprocesses (``cli``,
``start``), or in this process (``here``) where an answer needs no process of its own."""

import contextlib
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


def here(tool: str, *args, capsys, cwd: Path, **env) -> subprocess.CompletedProcess:
    """``tool *args`` in this process, as its console script runs it: the exit code, stdout and
    stderr (captured by pytest's ``capsys``) of ``bptt_cli.cli.run_main`` or ``plot_main``.
    For input errors, listings and dry runs: no interpreter to start, and jax is imported
    already. The environment (which the command sets for jax), ``sys.argv`` and the working
    directory are restored afterwards. Signals, worker processes and what jax reads when it is
    imported need a real process: ``cli``."""
    from unittest import mock

    from bptt_cli import cli as entry_points

    main = {"bptt-run": entry_points.run_main, "bptt-plot": entry_points.plot_main}[tool]
    argv, before = sys.argv, os.getcwd()
    capsys.readouterr()
    with mock.patch.dict(os.environ, {"COLUMNS": "200", **env}):
        sys.argv = [tool, *map(str, args)]
        os.chdir(cwd)
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        finally:
            sys.argv = argv
            os.chdir(before)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([tool, *map(str, args)], code, out, err)


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


def freeze_when(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 300) -> list[int]:
    """Leave ``proc`` and the processes it started (its workers) stopped (SIGSTOP) at the first
    moment ``condition()`` holds; returns their pids, ``proc`` first. The condition is evaluated
    only while they are all stopped, so what it saw on disk is still true when the caller
    signals them: no race with their progress, however fast or slow the machine. Fails if
    ``proc`` exits first or the condition does not come in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frozen = _stop_tree(proc.pid)
        if condition():
            return frozen
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    kill_all(proc, [proc.pid, *_descendants(proc.pid)])
    raise AssertionError(f"condition not reached in {timeout} s: {proc.communicate()}")


def kill_all(proc: subprocess.Popen, pids: list[int]) -> None:
    """SIGKILL ``pids`` (``proc``'s tree) and wait until every one of them is gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    while any(_alive(pid) for pid in pids):
        time.sleep(0.01)


def _stop_tree(pid: int) -> list[int]:
    """SIGSTOP ``pid`` and then its descendants (it cannot start new ones once stopped), and
    wait until every thread of each is stopped (signals are delivered asynchronously)."""
    os.kill(pid, signal.SIGSTOP)
    _wait_stopped(pid)
    frozen = [pid]
    for child in _descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGSTOP)
            _wait_stopped(child)
            frozen.append(child)
    return frozen


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _wait_stopped(pid: int) -> None:
    """Until every thread of ``pid`` is stopped (or it is gone)."""
    tasks = Path(f"/proc/{pid}/task")
    while _alive(pid):
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
