"""Several workers on one grid and one results folder: shares, lock files, a killed worker's
runs taken over, and the bad input of this part (shards, lock files, folders without locks)."""

import itertools
import json
import os
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from clitools import cli, freeze_when, here, kill_all, progress, start

from bptt_cli import cli as bptt_cli_module
from bptt_cli import config, results

GRID = """
problem = "cartpole"
description = "workers test grid"
[grid]
levels = [1]
flows = ["R", "C"]
clips = ["NORM", "NONE", "VALUE"]
[train]
epochs = {epochs}
seeds = 1
seed = 0
data_seed = 1
n_data = 16
batch_size = 8
optimizer = "adam"
learning_rate = 1e-3
clip_value = 1.0
clip_norm = 1.0
[diagnostics]
enabled = false
"""
N_RUNS = 6


def grid(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / "w.toml"
    path.write_text(GRID.format(epochs=epochs))
    return path


def sidecars(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def counts(stderr: str) -> tuple[int, int, int]:
    """(trained, found complete, left to other workers) from a worker's closing line."""
    line = next(line for line in stderr.splitlines() if line.startswith("done:"))
    words = line.replace(",", "").replace(";", "").split()
    return int(words[1]), int(words[4]), int(words[7])


def assert_complete_once_each(folder: Path, epochs: int) -> dict[str, list]:
    metas = sidecars(folder)
    assert len(metas) == N_RUNS
    for run_id, meta in metas.items():
        assert meta["status"] == "complete" and meta["epochs_done"] == epochs, run_id
        # The epochs trained by the workers that touched the run tile 0 ... epochs exactly once.
        spans = [(h["from_epoch"], h["to_epoch"]) for h in meta["history"]]
        assert spans[0][0] == 0 and spans[-1][1] == epochs, (run_id, spans)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), (run_id, spans)
        rows = pd.read_csv(folder / f"{run_id}.csv")
        assert sorted(rows["epoch"]) == list(range(1, epochs + 1)), run_id
    assert not list(folder.glob("*.lock")), "finished runs leave no lock file"
    return {run_id: meta["history"] for run_id, meta in metas.items()}


# Slow (three commands of three processes each on a 2-core machine); the fast suite's CLI smoke
# run is a pool of workers sharing a folder, and shares are checked in process (test_grouping.py).
@pytest.mark.slow
def test_three_workers_at_once_train_every_run_exactly_once(tmp_path, jax_cache):
    path, out = grid(tmp_path, epochs=30), tmp_path / "res"
    workers = [
        start("bptt-run", path, "--out", out, *args, cache=jax_cache, cwd=tmp_path, BPTT_CHUNK_EPOCHS="1")
        for args in (["--shard", "1/2"], ["--shard", "2/2"], [])
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
    tallies = [counts(stderr) for _, stderr in outputs]
    histories = assert_complete_once_each(out / "w", 30)
    assert all(len(h) == 1 for h in histories.values())  # nobody resumed anybody: one trainer each
    assert sum(trained for trained, _, _ in tallies) == N_RUNS
    assert [sum(t) for t in tallies] == [3, 3, 6]  # every run of a worker's share is accounted for
    assert "share 1/2 of 6" in outputs[0][1]


# Slow (two commands of three processes each); the fast suite kills a commit at every write in
# process (test_damage.py) and claims a lock file an interrupted run left (below).
@pytest.mark.slow
def test_a_killed_workers_run_is_taken_over(tmp_path, jax_cache):
    path, out = grid(tmp_path, epochs=40), tmp_path / "res"
    worker = start("bptt-run", path, "--out", out, cache=jax_cache, cwd=tmp_path, BPTT_CHUNK_EPOCHS="1")
    # Killed while some run is part-way: its sidecar states epochs, so it must be resumable.
    frozen = freeze_when(worker, lambda: any(0 < done < 40 for done in progress(out / "w")))
    kill_all(worker, frozen)
    stale = list((out / "w").glob("*.lock"))
    assert stale, "the killed worker's lock files stay behind"
    for lock in stale:
        assert json.loads(lock.read_text())["tool"] == "bptt-cli"

    rerun = cli("bptt-run", path, "--out", out, cache=jax_cache, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    trained, complete, left = counts(rerun.stderr)
    assert left == 0 and trained + complete == N_RUNS and trained >= 1
    histories = assert_complete_once_each(out / "w", 40)
    taken_over = [h for h in histories.values() if len(h) == 2]
    assert taken_over, "some run was resumed by the second worker"
    for first, second in taken_over:
        assert first["worker"] != second["worker"]


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0/2", "3/2", "a/b", "2"])
def test_bad_shard(value, tmp_path, capsys):
    result = here(
        "bptt-run",
        grid(tmp_path, 2),
        "--shard",
        value,
        "--out",
        tmp_path / "out",
        capsys=capsys,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"invalid shard {value!r}; allowed: K/N with 1 <= K <= N" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["foreign", "unreadable"])
def test_foreign_or_unreadable_lock_file(kind, tmp_path, capsys):
    path = grid(tmp_path, 2)
    run_id = config.resolve(config.load(str(path)))[3].run_id
    folder = tmp_path / "out" / "w"
    folder.mkdir(parents=True)
    lock = folder / f"{run_id}.lock"
    if kind == "foreign":
        lock.write_text("held by my own scheduler\n")
    else:
        lock.mkdir()  # a folder in its place: cannot be read as a file, even by root
    result = here("bptt-run", path, "--out", tmp_path / "out", capsys=capsys, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    message = "was not written by bptt-cli" if kind == "foreign" else "is not readable"
    assert f"lock file {str(lock)!r} {message}" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == [lock.name]  # nothing written


def test_folder_without_working_locks(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(sys, "argv", ["bptt-run", str(grid(tmp_path, 2)), "--out", str(tmp_path / "out")])
    with (
        pytest.raises(SystemExit) as exit_info,
        mock.patch.dict(os.environ),  # what it sets for jax: restored
    ):
        bptt_cli_module.run_main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "filesystem without working file locks (No locks available)" in err
    assert not (tmp_path / "out").exists()


def test_lock_claims_are_exclusive_and_survive_a_vanishing_file(tmp_path):
    path = tmp_path / "r.lock"
    first = results.RunLock.claim(path, "r")
    assert first is not None and results.RunLock.claim(path, "r") is None
    first.release(done=True)
    assert not path.exists()
    again = results.RunLock.claim(path, "r")
    assert again is not None and json.loads(path.read_text())["run_id"] == "r"
    again.release(done=False)
    assert path.exists()  # an interrupted run keeps its (now free) lock file
    assert results.RunLock.claim(path, "r") is not None
