"""Resume after SIGKILL and Ctrl-C gives the uninterrupted results, row for row; the run axis
sharded over two devices equals one device."""

import os
import signal
import subprocess

import pandas as pd
import pytest
from clitools import BIN, cli, definition, env_for, freeze_when, kill_all, metrics, progress

from bptt_cli import results


# Slow: three commands each (a reference, the interrupted one, the resumed one). The fast suite
# kills a commit at every write and interrupts a program in process (test_damage.py,
# test_runner.py, test_grouping.py).
@pytest.mark.slow
@pytest.mark.parametrize("how", ["interrupt", "kill"])
def test_interrupted_run_resumes_to_identical_results(how, tmp_path, jax_cache):
    """Ctrl-C to the default command (a worker process per core, each training its programs);
    SIGKILL on one process with two devices, where 3 seeds of one clip are padded to 4 rows
    (resuming must leave the padding alone) and the gradient diagnostics resume too."""
    epochs = 12
    two = how == "kill"
    seeds = 3 if two else 2
    devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"} if two else {}
    clips = ["--clip", "NORM"] if two else []
    path = definition(tmp_path, epochs=epochs, seeds=seeds, diagnostics=two)
    reference = cli(
        "bptt-run", path, *clips, "--out", tmp_path / "ref", cache=jax_cache, cwd=tmp_path, **devices
    )
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "res"
    proc = subprocess.Popen(
        [str(BIN / "bptt-run"), str(path), *clips, "--out", str(out)],
        cwd=tmp_path,
        env=env_for(jax_cache, BPTT_CHUNK_EPOCHS="1", **devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Stopped part-way (some run at epoch 2 or later, most of the grid still to train): Ctrl-C
    # lets the one or two chunks in flight land, and neither signal can let the grid finish.
    frozen = freeze_when(
        proc,
        lambda: max(progress(out / "tiny"), default=0) >= 2 and sum(progress(out / "tiny")) <= 2 * epochs,
    )
    if how == "interrupt":  # as a terminal's Ctrl-C: to the command, which tells its workers
        proc.send_signal(signal.SIGINT)
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
    else:
        kill_all(proc, frozen)
        stderr = ""
    if how == "interrupt":
        assert proc.returncode == 130, stderr
        assert "rerun the same command to resume" in stderr
        assert "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL, stderr

    # What is on disk is consistent: parseable, no duplicated rows, and incomplete.
    partial = [
        results.read_run_csv(p)
        for p in (out / "tiny").glob("*.csv")
        if not p.name.endswith(".diagnostics.csv")
    ]
    assert partial, "at least one chunk was committed"
    for frame in partial:
        assert not frame.duplicated(["seed", "epoch"]).any()
    assert sum(len(f) for f in partial) < 4 * seeds * epochs

    resumed = cli("bptt-run", path, *clips, "--out", out, cache=jax_cache, cwd=tmp_path, **devices)
    assert resumed.returncode == 0, resumed.stderr
    pd.testing.assert_frame_equal(metrics(out / "tiny"), metrics(tmp_path / "ref" / "tiny"))
    if two:  # the gradient diagnostics resume too: every row once, the same values
        keys = ["run_id", "seed", "epoch", "t"]
        resumed_diag, reference_diag = (
            results.read_results(folder, kind="diagnostics").sort_values(keys).reset_index(drop=True)
            for folder in (out, tmp_path / "ref")
        )
        assert not resumed_diag.duplicated(keys).any() and len(resumed_diag) == 2 * seeds * 3 * 101
        pd.testing.assert_frame_equal(resumed_diag, reference_diag)


@pytest.mark.slow  # the fast suite shards over 3 devices (test_every_core.py)
def test_sharded_equals_unsharded(tmp_path, jax_cache):
    path = definition(
        tmp_path, epochs=2, seeds=3, diagnostics=False
    )  # 3 seeds × 2 clips: padded to 2 devices
    single = cli("bptt-run", path, "--out", tmp_path / "one", "--flow", "R", cache=jax_cache, cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    two = cli(
        "bptt-run",
        path,
        "--out",
        tmp_path / "two",
        "--flow",
        "R",
        cache=jax_cache,
        cwd=tmp_path,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    assert two.returncode == 0, two.stderr
    meta = next((tmp_path / "two" / "tiny").glob("*.json")).read_text()
    assert '"cpu:1"' in meta  # really ran on two devices
    a, b = metrics(tmp_path / "one" / "tiny"), metrics(tmp_path / "two" / "tiny")
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)
