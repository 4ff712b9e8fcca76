"""The command line end to end: bad input, a smoke run and its figure, resume after SIGKILL and
Ctrl-C, and sharding the run axis over two devices."""

import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from clitools import BIN, cli, env_for

from bptt_cli import results

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


# --- bad input --------------------------------------------------------------------------


BAD = [
    (["nope"], "unknown experiment 'nope'"),
    (["cartpole", "--flow", "X"], "unknown flow 'X'"),
    (["cartpole", "--clip", "sometimes"], "unknown clip 'sometimes'"),
    (["cartpole", "--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
    (["cartpole", "--scale", "huge"], "unknown scale 'huge'"),
    (["cartpole", "--level", "5"], "n_poles 5 is outside the grid"),
    (["cartpole", "--level", "two"], "invalid n_poles 'two'"),
    (["cartpole", "--epochs", "0"], "epochs must be a positive integer, got 0"),
    (["cartpole", "--seeds", "-2"], "seeds must be a positive integer, got -2"),
    (["cartpole", "--batch-size", "0"], "batch-size must be a positive integer, got 0"),
    (["cartpole", "--learning-rate", "0"], "learning-rate must be a positive number"),
    (["cartpole", "--batch-size", "7"], "batch size 7 does not divide the 256 training states"),
    (["cartpole", "--epochs", "many"], "'--epochs'"),
    (["cartpole", "--bogus"], "--bogus"),
    (["cartpole", "--device", "tpu"], "unknown device 'tpu'"),
    (["cartpole", "--device", "gpu"], "jax sees no GPU"),  # the tests pin JAX_PLATFORMS=cpu
    (["cartpole", "--grouping", "sideways"], "unknown grouping 'sideways'; allowed: auto, narrow, wide"),
    (["lqr", "--level", "-1"], "a -1 is outside the grid; allowed: 1.0, 1.1, 1.2, 1.3"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(args, message, tmp_path, jax_cache):
    result = cli("bptt-run", *args, "--out", tmp_path / "out", cache=jax_cache, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bptt-run: error:") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("problem = 'cartpole'\n[grid\n", "malformed definition file"),
        (TINY.format(epochs=1, seeds=1) + "\nlearning_rat = 1\n", "unknown key 'learning_rat'"),
        (
            TINY.format(epochs=1, seeds=1).replace("n_data = 16", "n_data = 16\nwidth = 3"),
            "unknown key 'width'",
        ),
        (
            TINY.format(epochs=1, seeds=1).replace('problem = "cartpole"', 'problem = "nonesuch"'),
            "unknown problem 'nonesuch'",
        ),
        (TINY.format(epochs=1, seeds=1).replace("epochs = 1", "epochs = 'ten'"), "epochs must be an integer"),
        (
            TINY.format(epochs=1, seeds=1) + "\n[diagnostics]\nevery = 3\n",
            "unknown key 'every' in [diagnostics]",
        ),
        (
            TINY.format(epochs=1, seeds=1) + "\n[diagnostics]\nepochs = [0, 50]\n",
            "diagnosed epoch 50 is outside the run; allowed: 0 ... 1",
        ),
        (
            TINY.format(epochs=1, seeds=1)
            .replace('"cartpole"', '"lqr"')
            .replace("levels = [1]", "levels = [1.0, 0]"),
            "invalid a 0 for lqr; allowed: a positive number",
        ),
        (
            TINY.format(epochs=1, seeds=1)
            .replace('"cartpole"', '"pendulum"')
            .replace("levels = [1]", "levels = [4]"),
            "invalid n_links 4 for pendulum; allowed: 1, 2 or 3 links",
        ),
    ],
)
def test_bad_definition_file(text, message, tmp_path, jax_cache):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = cli("bptt-run", path, "--out", tmp_path / "out", cache=jax_cache, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(tmp_path, jax_cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli("bptt-run", definition(tmp_path), "--out", blocker / "out", cache=jax_cache, cwd=tmp_path)
    assert result.returncode == 2 and "is not writable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    plot = cli("bptt-plot", tmp_path / "missing", cache=jax_cache, cwd=tmp_path)
    assert plot.returncode == 2 and "does not exist" in plot.stderr


def test_list_and_help_do_not_need_jax(tmp_path, jax_cache):
    result = cli("bptt-run", "--list", cache=jax_cache, cwd=tmp_path)
    assert result.returncode == 0
    for name in ("cartpole", "guidance", "quantum", "toy"):
        assert name in result.stdout
    helped = cli("bptt-run", "--help", cache=jax_cache, cwd=tmp_path)
    assert helped.returncode == 0 and "--flow" in helped.stdout and "--level" in helped.stdout
    assert "results" in cli("bptt-plot", "--help", cache=jax_cache, cwd=tmp_path).stdout


# --- a real run -------------------------------------------------------------------------


def test_smoke_run_resume_skip_and_plot(tmp_path, jax_cache):
    path = definition(tmp_path, epochs=3, seeds=2)
    result = cli("bptt-run", path, "--out", tmp_path / "res", cache=jax_cache, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "res" / "tiny"
    csvs = sorted(p for p in folder.glob("*.csv") if not p.name.endswith(".diagnostics.csv"))
    assert len(csvs) == 4  # R/C × NORM/NONE
    frame = pd.read_csv(csvs[0])
    assert len(frame) == 2 * 3 and sorted(frame["seed"].unique()) == [0, 1]
    assert list(frame["epoch"][:3]) == [1, 2, 3]
    for column in (
        "batch_loss",
        "train_loss",
        "test_loss",
        "update_sq_norm",
        "cos_mr",
        "epoch_seconds",
        "diverged",
    ):
        assert column in frame.columns
    assert not frame["diverged"].any()
    combined = metrics(folder).query("flow == 'C'")
    assert combined["cos_mr"].between(-1, 1).all()

    # A second run skips everything and leaves the files alone.
    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = cli("bptt-run", path, "--out", tmp_path / "res", cache=jax_cache, cwd=tmp_path)
    assert again.returncode == 0 and "0 run(s) trained, 4 found complete" in again.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in folder.iterdir()}

    plot = cli("bptt-plot", tmp_path / "res", cache=jax_cache, cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr
    figure = tmp_path / "res" / "figures" / "tiny.png"
    assert figure.stat().st_size > 10_000 and (tmp_path / "res" / "figures" / "tiny.pdf").exists()
    summary = pd.read_csv(tmp_path / "res" / "summary.csv")
    assert len(summary) == 4 and (summary["n_seeds"] == 2).all()
    assert "| tiny |" in plot.stdout  # the Markdown table is printed

    # A CSV bptt-run did not write (a user's notes) is skipped with one warning line.
    (tmp_path / "res" / "notes.csv").write_text("who,what\nme,ran it,twice,today\n")
    (tmp_path / "res" / "tiny" / "half-copied.csv").write_bytes(b"\xff\xfe\x00garbage")
    plot = cli("bptt-plot", tmp_path / "res", cache=jax_cache, cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr
    warnings = [line for line in plot.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "notes.csv" in warnings[0] + warnings[1], plot.stderr
    assert "Traceback" not in plot.stderr


def test_list_shows_scales_and_seed_option_sets_the_first_seed(tmp_path, jax_cache):
    listed = cli("bptt-run", "--list", cache=jax_cache, cwd=tmp_path)
    assert "[scales: paper, quick, smoke]" in listed.stdout, listed.stdout
    for name in ("lqr", "pendulum"):
        assert name in listed.stdout
    plan = cli(
        "bptt-run",
        definition(tmp_path),
        "--seed",
        "7",
        "--seeds",
        "2",
        "--dry-run",
        cache=jax_cache,
        cwd=tmp_path,
    )
    assert plan.returncode == 0 and "seeds 7..8" in plan.stderr, plan.stderr
    assert "2 program(s)" in plan.stdout and "rows" in plan.stdout


def wait_for_epochs(folder: Path, proc: subprocess.Popen, at_least: int, timeout=240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for meta in folder.glob("*.json") if folder.exists() else []:
            try:
                if (
                    '"epochs_done": ' in (text := meta.read_text())
                    and int(text.split('"epochs_done": ')[1].split(",")[0]) >= at_least
                ):
                    return
            except (ValueError, IndexError, OSError):
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("run did not progress in time")


@pytest.mark.parametrize("how", ["kill", "interrupt", "kill-two-devices"])
def test_interrupted_run_resumes_to_identical_results(how, tmp_path, jax_cache):
    epochs = 12
    # On two devices, 3 seeds of one clip are padded to 4 rows: resuming must leave padding alone.
    two = how == "kill-two-devices"
    seeds = 3 if two else 2
    devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"} if two else {}
    clips = ["--clip", "NORM"] if two else []
    path = definition(tmp_path, epochs=epochs, seeds=seeds, diagnostics=how != "interrupt")
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
    wait_for_epochs(out / "tiny", proc, at_least=2)
    proc.send_signal(signal.SIGINT if how == "interrupt" else signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    if how == "interrupt":
        assert proc.returncode == 130, stderr
        assert "rerun the same command to resume" in stderr
        assert "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL

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
    if how != "interrupt":  # the gradient diagnostics resume too: every row once, the same values
        keys = ["run_id", "seed", "epoch", "t"]
        resumed_diag, reference_diag = (
            results.read_results(folder, kind="diagnostics").sort_values(keys).reset_index(drop=True)
            for folder in (out, tmp_path / "ref")
        )
        assert not resumed_diag.duplicated(keys).any() and len(resumed_diag) == 4 * seeds * 3 * 101
        pd.testing.assert_frame_equal(resumed_diag, reference_diag)


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
