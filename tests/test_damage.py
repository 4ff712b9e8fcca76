"""Damaged files and a full disk (issue 32).

Whatever single file of a run is damaged (checkpoint, metrics CSV, diagnostics CSV, sidecar,
lock file, trajectories), a rerun ends with every (run, seed, epoch) row exactly once, the
values of an undamaged run, no traceback, one warning line for the file, and the file set aside
rather than deleted. A kill or a full disk at any write of a chunk commit leaves files that
agree (no damage found) and resume to the same rows. ``bptt-plot`` names each damaged file of a
published folder in one line.
"""

import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clitools import cli, freeze_when, progress, start

from bptt_cli import config, results, runner
from bptt_cli.core.plan import Chunk
from bptt_cli.core.spec import RunSpec

GRID = """
problem = "cartpole"
[grid]
levels = [1]
flows = ["R"]
clips = ["NONE"]
[train]
epochs = 6
seeds = 2
seed = 42
data_seed = 1
n_data = 16
batch_size = 8
optimizer = "adam"
learning_rate = 1e-3
clip_value = 1.0
clip_norm = 1.0
[diagnostics]
epochs = [0, 1, 4]
"""
EPOCHS, SEEDS = 6, (42, 43)


class Killed(BaseException):
    """A process killed at this point (nothing of it runs any more: no ``except`` catches it)."""


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The run trained to the end (``complete``), and killed in its 4th commit between the
    rows and the checkpoint (``partial``: checkpoint at epoch 3, rows of epoch 4 in flight)."""
    folder = tmp_path_factory.mktemp("damage")
    (folder / "d.toml").write_text(GRID)
    specs = config.resolve(config.load(str(folder / "d.toml")))
    cache = runner.ProgramCache()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BPTT_CHUNK_EPOCHS", "1")
        runner.run(specs, folder / "complete", cache=cache)
        save, calls = results.files.save_checkpoint, []

        def dying_save(*args, **kwargs):
            calls.append(args)
            if len(calls) == 4:
                raise Killed
            save(*args, **kwargs)

        patch.setattr(results.files, "save_checkpoint", dying_save)
        with pytest.raises(Killed):
            runner.run(specs, folder / "partial", cache=cache)
    return folder, specs, cache


def rows(folder: Path, diagnostics: bool = False) -> pd.DataFrame:
    suffix = ".diagnostics.csv" if diagnostics else ".csv"
    keys = ["seed", "epoch", "t"] if diagnostics else ["seed", "epoch"]
    paths = [p for p in folder.glob(f"*{suffix}") if diagnostics or not p.name.endswith(".diagnostics.csv")]
    frame = pd.concat(pd.read_csv(p) for p in paths)
    assert not frame.duplicated(["run_id", *keys]).any()
    return (
        frame.drop(columns="epoch_seconds", errors="ignore")
        .sort_values(["run_id", *keys])
        .reset_index(drop=True)
    )


# --- the damage: each a function of a run's files ------------------------------------------


def cut_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def cut_inside_line(number: int):
    """Keep lines before ``number`` (1-based) and a few bytes of it: a torn line."""

    def damage(path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        path.write_bytes(b"\n".join(lines[: number - 1]) + b"\n" + lines[number - 1][:7])

    return damage


def nul_line(number: int):
    """Line ``number`` zeroed out, as a crash can leave a block of a file."""

    def damage(path: Path) -> None:
        lines = path.read_bytes().split(b"\n")
        lines[number - 1] = b"\0" * len(lines[number - 1])
        path.write_bytes(b"\n".join(lines))

    return damage


def duplicate_rows(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data + data[data.index(b"\n") + 1 :][:400].rsplit(b"\n", 1)[0] + b"\n")


def edit_checkpoint(change):
    def damage(path: Path) -> None:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        change(arrays)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    return damage


def other_run(arrays) -> None:
    arrays["run_id"] = np.asarray("cartpole-n_poles1-C-NORM-0123456789")


def wider_leaf(arrays) -> None:
    leaf = arrays["leaf_1"]
    arrays["leaf_1"] = np.concatenate([leaf, leaf], axis=-1)


def fewer_leaves(arrays) -> None:
    del arrays[f"leaf_{sum(key.startswith('leaf_') for key in arrays) - 1}"]


def other_sidecar(path: Path) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), "run_id": "another-run"}))


def torn_lock(path: Path) -> None:
    path.write_bytes(b'{"tool": "bptt-cli", "run_')


CASES = {
    # name: (snapshot, file suffix, damage, warning lines, set aside)
    "checkpoint truncated": ("partial", ".ckpt.npz", cut_half, 1, True),
    "checkpoint of another run": ("partial", ".ckpt.npz", edit_checkpoint(other_run), 1, True),
    "checkpoint of other shapes": ("partial", ".ckpt.npz", edit_checkpoint(wider_leaf), 1, True),
    "checkpoint missing a leaf": ("partial", ".ckpt.npz", edit_checkpoint(fewer_leaves), 1, True),
    "committed CSV line torn": ("partial", ".csv", cut_inside_line(6), 1, False),
    "CSV line zeroed": ("partial", ".csv", nul_line(3), 1, False),
    "in-flight CSV line torn": ("partial", ".csv", cut_inside_line(10), 0, False),
    "diagnostics CSV halved": ("partial", ".diagnostics.csv", cut_half, 1, False),
    "sidecar truncated": ("partial", ".json", cut_half, 1, True),
    "sidecar of another run": ("partial", ".json", other_sidecar, 1, True),
    "lock record torn": ("partial", ".lock", torn_lock, 1, False),
    "complete: checkpoint truncated": ("complete", ".ckpt.npz", cut_half, 1, True),
    "complete: last CSV line torn": ("complete", ".csv", cut_inside_line(13), 1, False),
    "complete: CSV rows duplicated": ("complete", ".csv", duplicate_rows, 1, False),
    "complete: diagnostics line zeroed": ("complete", ".diagnostics.csv", nul_line(100), 1, False),
    "complete: sidecar truncated": ("complete", ".json", cut_half, 1, True),
    "complete: trajectories truncated": ("complete", ".trajectories.npz", cut_half, 1, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_file_is_set_aside_and_its_rows_recomputed(case, grid, tmp_path, capsys):
    folder, specs, cache = grid
    snapshot, suffix, damage, n_warnings, aside = CASES[case]
    out = tmp_path / "out"
    shutil.copytree(folder / snapshot, out)
    run_id = specs[0].run_id
    damaged = out / "d" / f"{run_id}{suffix}"
    damage(damaged)
    before = damaged.read_bytes()
    capsys.readouterr()

    report = runner.run(specs, out, cache=cache)

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == n_warnings, warnings
    if n_warnings:
        assert warnings[0].startswith(f"warning: {damaged}: ") and run_id in warnings[0], warnings
    kept = list((out / "d").glob(f"{damaged.name}.damaged-*"))
    if aside or (n_warnings and suffix.endswith(".csv")):  # the damaged file itself, or a copy
        assert [p.read_bytes() for p in kept] == [before], case
    else:
        assert not kept
    assert report.trained == [run_id] or report.found_complete == [run_id]
    pd.testing.assert_frame_equal(rows(out / "d"), rows(folder / "complete" / "d"))
    pd.testing.assert_frame_equal(rows(out / "d", True), rows(folder / "complete" / "d", True))
    state = results.inspect_run(specs[0], out / "d")
    assert state.complete and not state.damage
    meta = json.loads((out / "d" / f"{run_id}.json").read_text())
    assert meta["status"] == "complete" and meta["epochs_done"] == EPOCHS
    spans = [(h["from_epoch"], h["to_epoch"]) for h in meta["history"]]
    assert spans[0][0] == 0 and spans[-1][1] == EPOCHS
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), spans


def test_which_rows_a_torn_line_held_is_said(grid, tmp_path, capsys):
    folder, specs, cache = grid
    out = tmp_path / "out"
    shutil.copytree(folder / "partial", out)
    csv = out / "d" / f"{specs[0].run_id}.csv"
    # Rows are appended chunk by chunk (one epoch here), seed after seed: line 6 is seed 42's
    # epoch 3, torn, and seed 43's epoch 3 (line 7) went with it; the checkpoint claims 3 epochs.
    cut_inside_line(6)(csv)
    state = results.inspect_run(specs[0], out / "d")
    assert [d.path for d in state.damage] == [csv]
    assert state.damage[0].lost == "seed 42 epoch 3; seed 43 epoch 3"
    assert state.start == 2 and state.checkpoint.name.endswith(".ckpt.previous.npz")
    runner.run(specs, out, cache=cache)
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert "last line (6) torn" in warning and "rows recomputed: seed 42 epoch 3; seed 43 epoch 3" in warning
    assert "resumes from epoch 2 (its previous checkpoint)" in warning
    pd.testing.assert_frame_equal(rows(out / "d"), rows(folder / "complete" / "d"))


# --- a kill or a full disk at any write of a commit ------------------------------------------

SPEC = RunSpec(
    experiment="d",
    problem="cartpole",
    level_key="n_poles",
    level=1,
    flow="R",
    clip="NONE",
    epochs=4,
    seeds=(0, 1),
    data_seed=1,
    n_data=8,
    batch_size=8,
    optimizer="adam",
    learning_rate=1e-3,
    clip_value=1.0,
    clip_norm=1.0,
    diagnostics=(0, 1, 3),
)
N_STEPS = 3


def leaves(epoch: int) -> list[np.ndarray]:
    """The training state after ``epoch``: what a checkpoint must restore."""
    return [np.full((2, 3), float(epoch)), np.arange(2.0) + epoch]


def chunk(epoch: int) -> Chunk:
    """Epoch ``epoch`` alone, with values that depend on (seed, epoch) only."""
    seeds = np.array([[0.0], [1.0]])
    diagnosed = [(e, {"grad_norm_R": seeds + e + np.zeros((2, N_STEPS))}) for e in (epoch - 1, epoch)]
    diagnosed = [(e, arrays) for e, arrays in diagnosed if e in SPEC.diagnostics and (e == epoch or e == 0)]
    return Chunk(
        start=epoch - 1,
        n=1,
        metrics={"test_loss": seeds / 10 + epoch, "train_loss": seeds + 1 / epoch},
        diverged=np.zeros((2, 1), bool),
        leaves=leaves(epoch),
        diagnostics=diagnosed,
        trajectories=(np.zeros((2, 1, N_STEPS + 1, 4)), np.zeros((2, 1, N_STEPS, 1))) if epoch == 4 else None,
        seconds=0.0,
    )


def train(out: Path) -> None:
    """What the runner does with the chunks of ``SPEC``, from where its files stand."""
    folder = out / SPEC.experiment
    state = results.inspect_run(SPEC, folder)
    results.repair(SPEC, folder, state)
    if state.start:
        assert results.saved_states([SPEC], out)[SPEC.run_id][1].tolist() == leaves(state.start)[1].tolist()
    record = results.ProgramRecord({SPEC.run_id: slice(0, 2)}, state.start, N_STEPS, {}, {})
    writer = results.ProgramWriter(out, [SPEC], record, {})
    for epoch in range(state.start + 1, SPEC.epochs + 1):
        writer.commit(chunk(epoch))


class Faults:
    """Counts the writes, fsyncs and renames into ``folder``; the ``at``-th one fails: as a kill
    (half of an append written, then nothing more), or as a full disk (``OSError``)."""

    def __init__(self, folder: Path, at: int, how: str) -> None:
        self.folder, self.at, self.how, self.count = str(folder), at, how, 0
        self.write, self.fsync, self.replace = os.write, os.fsync, os.replace

    def _mine(self, target) -> bool:
        path = os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else os.fspath(target)
        return path.startswith(self.folder)

    def _due(self, target) -> bool:
        if not self._mine(target):
            return False
        self.count += 1
        return self.count == self.at

    def fail(self) -> None:
        if self.how == "kill":
            raise Killed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def patched_write(self, fd, data):
        if self._due(fd):
            if self.how == "kill":
                self.write(fd, bytes(data)[: len(data) // 2])
            self.fail()
        return self.write(fd, data)

    def patched_fsync(self, fd):
        if self._due(fd):
            self.fail()
        return self.fsync(fd)

    def patched_replace(self, source, target):
        if self._due(target):
            self.fail()
        return self.replace(source, target)


def crash_at(out: Path, at: int, how: str, monkeypatch) -> Faults:
    faults = Faults(out, at, how)
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", faults.patched_write)
        patch.setattr(os, "fsync", faults.patched_fsync)
        patch.setattr(os, "replace", faults.patched_replace)
        try:
            train(out)
        except Killed:
            assert how == "kill"
        except results.DiskError as err:
            assert how == "full" and str(err).startswith(
                f"cannot write to results folder {str(out / 'd')!r}: "
            )
            assert "No space left on device" in str(err)
    return faults


@pytest.mark.parametrize("how", ["kill", "full"])
def test_a_commit_cut_at_any_write_leaves_files_that_agree(how, tmp_path, monkeypatch):
    train(tmp_path / "ref")
    reference = rows(tmp_path / "ref" / "d"), rows(tmp_path / "ref" / "d", True)
    total = crash_at(tmp_path / "count", 10**9, how, monkeypatch).count
    assert total > 30  # every write of 4 commits, the last one's trajectories and sorting
    for at in range(1, total + 1):
        out = tmp_path / f"at{at}"
        crash_at(out, at, how, monkeypatch)
        state = results.inspect_run(SPEC, out / "d")
        assert not state.damage, (at, state.damage)  # an interrupted commit is no damage
        if state.start:  # the rows of every epoch the checkpoint claims are there, once
            assert rows(out / "d")["epoch"].max() >= state.start
        train(out)
        assert not list((out / "d").glob(".*.tmp")), at
        pd.testing.assert_frame_equal(rows(out / "d"), reference[0], obj=f"metrics, cut at {at}")
        pd.testing.assert_frame_equal(rows(out / "d", True), reference[1], obj=f"diagnostics, cut at {at}")


# --- a full disk, for real: a small tmpfs ---------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own (needs root: skipped where it cannot be mounted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or 'mount failed'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow  # two workers filling a real disk; a full disk at every write is checked in process above
def test_a_full_disk_is_one_line_and_the_rerun_completes(small_disk, tmp_path, jax_cache):
    """Two workers on two flows; the disk fills up while a run trains (filled by the test while
    the workers are stopped): exit 2 and one line naming the folder, everything committed still
    valid; once space is freed, the same command completes the grid, each row once."""
    path = tmp_path / "d.toml"
    grid = GRID.replace('flows = ["R"]', 'flows = ["R", "C"]').replace("epochs = 6", "epochs = 12")
    path.write_text(grid.replace("epochs = [0, 1, 4]", "enabled = false"))
    out, args = small_disk / "res", [path, "--out", small_disk / "res", "--workers", "2"]
    proc = start("bptt-run", *args, cache=jax_cache, cwd=tmp_path, BPTT_CHUNK_EPOCHS="1")
    frozen = freeze_when(proc, lambda: any(2 <= e < 12 for e in progress(out / "d")))
    filler = small_disk / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError, match="No space left"):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    for pid in frozen:
        os.kill(pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error" in line or "failed" in line]
    assert errors == [
        f"bptt-run: error: cannot write to results folder {str(out / 'd')!r}: No space left on device; "
        "what was committed before is kept: make room (or make the folder writable) and run the same "
        "command again"
    ], stderr
    states = [results.inspect_run(spec, out / "d") for spec in config.resolve(config.load(str(path)))]
    assert not any(state.damage for state in states), states
    assert any(2 <= state.start < 12 for state in states), states

    filler.unlink()
    rerun = cli("bptt-run", *args, cache=jax_cache, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "warning" not in rerun.stderr and "Traceback" not in rerun.stderr
    frame = rows(out / "d")
    assert len(frame) == 2 * 2 * 12
    assert sorted(frame.groupby("run_id").size()) == [24, 24]


# --- published data ---------------------------------------------------------------------------


def test_bptt_plot_names_each_damaged_file_once(grid, tmp_path, monkeypatch, capsys):
    import sys

    from bptt_cli import cli as bptt_cli_module

    folder, specs, _ = grid
    published = tmp_path / "published"
    shutil.copytree(folder / "complete", published)
    run = published / "d" / specs[0].run_id
    damaged = {
        Path(f"{run}.csv"): cut_inside_line(13),
        Path(f"{run}.diagnostics.csv"): nul_line(100),
        Path(f"{run}.json"): cut_half,
        Path(f"{run}.trajectories.npz"): cut_half,
    }
    for path, damage in damaged.items():
        damage(path)
    monkeypatch.setattr(sys, "argv", ["bptt-plot", str(published)])
    with pytest.raises(SystemExit) as exit_info:
        bptt_cli_module.plot_main()
    assert exit_info.value.code == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "Traceback" not in err
    assert sorted(w.split(": ")[1].removeprefix("skipping ") for w in warnings) == sorted(map(str, damaged))
    assert "last line (13) torn, left out" in err and "1 malformed line (100), left out" in err
