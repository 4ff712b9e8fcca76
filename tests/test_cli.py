"""The command line end to end: bad input, help and listing, a smoke run with its figures and
summary (resume after interruption is in test_resume.py). Answers that need no process of their
own (input errors, listings, dry runs) are checked in this process (``here``); a fresh
interpreter checks what happens before jax is imported, and the smoke run is a real process."""

import subprocess
import sys

import pandas as pd
import pytest
from clitools import TINY, cli, definition, env_for, here, metrics

# --- bad input --------------------------------------------------------------------------


BAD = [
    (["nope"], "unknown experiment 'nope'"),
    (["cartpole", "--flow", "X"], "unknown flow 'X'"),
    (["cartpole", "--clip", "sometimes"], "unknown clip 'sometimes'"),
    (["cartpole", "--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
    (["cartpole", "--precision", "float16"], "unknown precision 'float16'; allowed: float32, float64"),
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
    (["cartpole", "--workers", "0"], "invalid workers 0; allowed: a positive integer"),
    (["cartpole", "--devices", "0"], "invalid device count 0; allowed: a positive integer"),
    (["cartpole", "--devices", "two"], "'--devices'"),
    (["lqr", "--option", "gain=1"], "unknown problem option 'gain' for lqr; allowed: controller, init_scale"),
    (
        ["lqr", "--option", "controller=quadratic"],
        "invalid controller 'quadratic' for lqr; allowed: linear, mlp",
    ),
    (["lqr", "--option", "init_scale=-0.1"], "invalid init_scale -0.1 for lqr; allowed: a number >= 0"),
    (["lqr", "--option", "init_scale=big"], "invalid init_scale 'big' for lqr; allowed: a finite number"),
    (["lqr", "--option", "init_scale"], "invalid option 'init_scale'; allowed: KEY=VALUE"),
    (["cartpole", "--option", "loss=SOMETIMES"], "invalid loss 'SOMETIMES' for cartpole; allowed: FINAL"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(args, message, tmp_path, capsys):
    result = here("bptt-run", *args, "--out", tmp_path / "out", capsys=capsys, cwd=tmp_path)
    assert_refused(result, message, tmp_path)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("JAX_NUM_CPU_DEVICES", "abc", "invalid JAX_NUM_CPU_DEVICES 'abc'; allowed: a positive integer"),
        ("JAX_NUM_CPU_DEVICES", "0", "invalid JAX_NUM_CPU_DEVICES '0'"),
        (
            "XLA_FLAGS",
            "--xla_force_host_platform_device_count=-1",
            "invalid XLA_FLAGS device count '-1'; allowed: a positive integer",
        ),
    ],
)
def test_bad_device_count_in_the_environment(variable, value, message, tmp_path, jax_cache):
    """In a real process: jax reads these when it is imported, so they must be refused before."""
    extra = {variable: value}
    result = cli("bptt-run", "cartpole", "--out", tmp_path / "out", cache=jax_cache, cwd=tmp_path, **extra)
    assert_refused(result, message, tmp_path)


def assert_refused(result, message, tmp_path) -> None:
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
def test_bad_definition_file(text, message, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = here("bptt-run", path, "--out", tmp_path / "out", capsys=capsys, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = here("bptt-run", definition(tmp_path), "--out", blocker / "out", capsys=capsys, cwd=tmp_path)
    assert result.returncode == 2 and "is not writable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    plot = here("bptt-plot", tmp_path / "missing", capsys=capsys, cwd=tmp_path)
    assert plot.returncode == 2 and "does not exist" in plot.stderr


# Runs an entry point as its console script does, then reports the jax modules it loaded.
WITHOUT_JAX = """
import sys
from bptt_cli import cli

main = {"bptt-run": cli.run_main, "bptt-plot": cli.plot_main}[sys.argv[1]]
sys.argv = sys.argv[1:]
code = 0
try:
    main()
except SystemExit as exit:
    code = exit.code
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"jax", "jaxlib"})
print(f"jax modules loaded: {loaded}", file=sys.stderr)
sys.exit(code)
"""


def run_counting_jax(tool: str, *args, cache, cwd) -> subprocess.CompletedProcess:
    """``tool *args`` in a fresh interpreter; its last stderr line lists the jax modules loaded."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_JAX, tool, *args],
        cwd=cwd,
        env=env_for(cache),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_and_help_do_not_need_jax(tmp_path, jax_cache):
    listed = run_counting_jax("bptt-run", "--list", cache=jax_cache, cwd=tmp_path)
    helped = run_counting_jax("bptt-run", "--help", cache=jax_cache, cwd=tmp_path)
    plot_help = run_counting_jax("bptt-plot", "--help", cache=jax_cache, cwd=tmp_path)
    for result in (listed, helped, plot_help):
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip().splitlines()[-1] == "jax modules loaded: []", result.stderr
    for name in ("cartpole", "guidance", "quantum", "toy"):
        assert name in listed.stdout
    assert "--flow" in helped.stdout and "--level" in helped.stdout
    assert "results" in plot_help.stdout


# --- a real run -------------------------------------------------------------------------


def test_smoke_run_resume_skip_and_plot(tmp_path, jax_cache, capsys):
    """The default command in a real process (a worker per core); the rerun and bptt-plot in
    this one."""
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
    again = here("bptt-run", path, "--out", tmp_path / "res", capsys=capsys, cwd=tmp_path)
    assert again.returncode == 0 and "0 run(s) trained, 4 found complete" in again.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in folder.iterdir()}

    # A CSV bptt-run did not write (a user's notes, a half-copied file) is skipped with one
    # warning line, and the rest is plotted.
    (tmp_path / "res" / "notes.csv").write_text("who,what\nme,ran it,twice,today\n")
    (tmp_path / "res" / "tiny" / "half-copied.csv").write_bytes(b"\xff\xfe\x00garbage")
    plot = here("bptt-plot", tmp_path / "res", capsys=capsys, cwd=tmp_path)
    assert plot.returncode == 0, plot.stderr
    warnings = [line for line in plot.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "notes.csv" in warnings[0] + warnings[1], plot.stderr
    assert "Traceback" not in plot.stderr
    figures = tmp_path / "res" / "figures"
    assert (figures / "tiny.png").stat().st_size > 10_000 and (figures / "tiny.pdf").exists()
    for stem in ("tiny_diagnostics.png", "tiny_trajectory.gif", "tiny_trajectory.png"):
        assert (figures / stem).stat().st_size > 10_000, stem
    summary = pd.read_csv(tmp_path / "res" / "summary.csv")
    assert len(summary) == 4 and (summary["n_seeds"] == 2).all()
    assert "| tiny |" in plot.stdout  # the Markdown table is printed


def test_list_shows_scales_and_seed_option_sets_the_first_seed(tmp_path, capsys):
    listed = here("bptt-run", "--list", capsys=capsys, cwd=tmp_path)
    assert "[scales: paper, quick, smoke]" in listed.stdout, listed.stdout
    for name in ("lqr", "pendulum"):
        assert name in listed.stdout
    plan = here(
        "bptt-run",
        definition(tmp_path),
        "--seed",
        "7",
        "--seeds",
        "2",
        "--dry-run",
        capsys=capsys,
        cwd=tmp_path,
    )
    assert plan.returncode == 0 and "seeds 7..8" in plan.stderr, plan.stderr
    assert "2 program(s)" in plan.stdout and "rows" in plan.stdout


def test_a_tiny_grid_is_one_wide_program_by_default(tmp_path, capsys, monkeypatch):
    """Runs of a few optimizer steps (a smoke test) spend their time compiling: by default one
    wide program; --grouping narrow keeps a program per flow."""
    monkeypatch.delenv("BPTT_TINY_STEPS")  # the suite's own setting (conftest.py)
    wide = here("bptt-run", definition(tmp_path), "--dry-run", capsys=capsys, cwd=tmp_path)
    assert wide.returncode == 0 and "1 program(s)" in wide.stdout and "grouping wide" in wide.stdout, (
        wide.stdout
    )
    narrow = here(
        "bptt-run", definition(tmp_path), "--dry-run", "--grouping", "narrow", capsys=capsys, cwd=tmp_path
    )
    assert narrow.returncode == 0 and "2 program(s)" in narrow.stdout, narrow.stdout


def test_problem_option_from_the_command_line(tmp_path, capsys):
    """``--option init_scale=0.1`` gives LQR's seeds gains of their own (docs/model.md §12's K = 0 makes
    them identical); the option is part of the runs' identity, so both grids share a folder."""
    args = ("lqr", "--scale", "smoke", "--level", "1.3", "--flow", "R", "--clip", "NORM", "--epochs", "1")
    for extra in ((), ("--option", "init_scale=0.1")):
        done = here(
            "bptt-run",
            *args,
            *extra,
            "--out",
            tmp_path / "res",
            "--workers",
            "1",
            capsys=capsys,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert f"controller linear, init_scale {0.1 if extra else 0.0}, 1 epochs" in done.stderr, done.stderr
    frame = pd.concat(pd.read_csv(path) for path in sorted((tmp_path / "res" / "lqr").glob("*[0-9a-f].csv")))
    assert frame["run_id"].nunique() == 2 and len(frame) == 4
    spread = frame.groupby("run_id")["test_loss"].nunique().sort_values()
    assert list(spread) == [1, 2], spread  # two seeds: equal from K = 0, apart from K ~ N(0, 0.1²)
