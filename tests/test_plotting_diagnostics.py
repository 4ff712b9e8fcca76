"""The gradient-diagnostics figure, the curves of lqr / pendulum / a user's problem, and
``plot_all`` over every kind of result file, from synthetic files in the runner's formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bptt_cli import results
from bptt_cli.plotting import curves, diagnostics, plot_all

PNG = b"\x89PNG"
DIAGNOSED_EPOCHS = (0, 1, 10)
N_STEPS = 12


def config(experiment: str, problem: str, level_key: str, level: str, flow: str, clip: str) -> dict:
    return {
        "experiment": experiment,
        "run_id": f"{experiment}-{level}-{flow}-{clip}",
        "problem": problem,
        "level_key": level_key,
        "level": level,
        "flow": flow,
        "clip": clip,
    }


def rng_for(info: dict) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(info["run_id"].encode()))


def write_metrics(folder: Path, info: dict, seeds=(0, 1), epochs: int = 40) -> Path:
    """``<run_id>.csv`` as the runner writes it, with a falling test loss."""
    rng = rng_for(info)
    rows = []
    for seed in seeds:
        for epoch in range(1, epochs + 1):
            loss = 2.0 * np.exp(-epoch / 15) * (1 + 0.1 * rng.random()) + 0.01
            rows.append(
                {
                    **info,
                    "optimizer": "adam",
                    "learning_rate": 1e-3,
                    "batch_size": 8,
                    "n_data": 256,
                    "data_seed": 42,
                    "seed": seed,
                    "epoch": epoch,
                    "batch_loss": loss * 1.1,
                    "train_loss": loss,
                    "test_loss": loss,
                    "update_sq_norm": loss**2,
                    "cos_mr": 0.5 if info["flow"] == "C" else np.nan,
                    "epoch_seconds": 0.01,
                    "diverged": False,
                    "c_kept_fraction": 0.7 if info["flow"] == "C" else np.nan,
                    "clip_active_fraction": 0.2,
                    **({"optimality_gap": loss / 0.01 - 1 + 1e-3} if info["problem"] == "lqr" else {}),
                }
            )
    path = folder / f"{info['run_id']}.csv"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_diagnostics(
    folder: Path, info: dict, seeds=(0, 1), epochs=DIAGNOSED_EPOCHS, sensitivity: bool = True
) -> Path:
    """``<run_id>.diagnostics.csv`` as the runner writes it (docs/model.md §14); without ``sensitivity``
    as releases before the true growth was recorded wrote it."""
    rng = rng_for(info)
    rows = []
    for seed in seeds:
        for epoch in epochs:
            physics = 1.0 + 0.05 * rng.normal(size=N_STEPS)
            closed = physics * (1.0 + 0.02 * epoch) if epoch else physics
            growth_physics = np.cumsum(np.log10(physics))
            growth_closed = np.cumsum(np.log10(closed))
            grad_m = 0.5 * np.ones(N_STEPS + 1) * (1 + 0.1 * rng.random())
            grad_r = grad_m * (10.0 ** (growth_closed[-1] - np.concatenate([[0.0], growth_closed])))
            for t in range(N_STEPS + 1):
                last = t == N_STEPS
                rows.append(
                    {
                        **info,
                        "seed": seed,
                        "epoch": epoch,
                        "t": t,
                        "grad_norm_R": grad_r[t],
                        "grad_norm_M": grad_m[t],
                        "jac_physics": np.nan if last else physics[t],
                        "jac_closed_loop": np.nan if last else closed[t],
                        "log10_growth_physics": np.nan if last else growth_physics[t],
                        "log10_growth_closed_loop": np.nan if last else growth_closed[t],
                        **(
                            {
                                "log10_sensitivity_physics": np.nan if last else growth_physics[t] - 0.1 * t,
                                "log10_sensitivity_closed_loop": np.nan
                                if last
                                else growth_closed[t] - 0.2 * t,
                            }
                            if sensitivity
                            else {}
                        ),
                    }
                )
    path = folder / f"{info['run_id']}.diagnostics.csv"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_trajectories(folder: Path, info: dict, drawing: str | None) -> Path:
    """``<run_id>.trajectories.npz`` with cart-pole states ``(1+P, 2)``: 2 seeds, 8 test states."""
    n_poles = int(info["level"])
    s = np.linspace(0, 1, N_STEPS + 1)
    xs = np.zeros((2, 8, N_STEPS + 1, 1 + n_poles, 2), np.float32)
    xs[..., 0, 0] = s - 0.5
    xs[..., 1:, 0] = (np.pi * (1 - s))[:, None]
    us = np.tile(np.cos(6 * s[:-1])[:, None], (2, 8, 1, 1)).astype(np.float32)
    meta = json.dumps({**info, "drawing": drawing})
    path = folder / f"{info['run_id']}.trajectories.npz"
    np.savez(path, xs=xs, us=us, seeds=np.array([0, 1]), meta=np.array(meta))
    return path


def write_experiment(root: Path, experiment: str, problem: str, level_key: str, levels, flows=("R", "C")):
    """Metrics and diagnostics of every level × flow × clip NONE and NORM."""
    for level in levels:
        for flow in flows:
            for clip in ("NONE", "NORM"):
                info = config(experiment, problem, level_key, level, flow, clip)
                write_metrics(root / experiment, info)
                write_diagnostics(root / experiment, info)


def assert_figure(path: Path, min_bytes: int = 20_000) -> None:
    assert path.read_bytes()[:4] == PNG and path.stat().st_size > min_bytes
    assert path.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"


# --- levels ---


def test_level_order_and_hardest_level():
    assert curves.ordered_levels("cartpole", ["2", "10", "1", "2"]) == ["1", "2", "10"]
    assert curves.hardest_level("cartpole", ["2", "10", "1"]) == "10"
    assert curves.ordered_levels("guidance", ["0.1", "1.0", "0.001"]) == ["1.0", "0.1", "0.001"]
    assert curves.hardest_level("guidance", ["0.1", "1.0", "0.001"]) == "0.001"
    assert curves.hardest_level("mine", ["small", "large"]) == "small"  # text levels: text order
    assert curves.level_title("quantum", "5") == "Target state: 4"
    assert curves.level_title("lqr", "1.3") == "a = 1.3"
    assert curves.level_title("mine", "7", "width") == "width = 7"


# --- diagnostics ---


def test_figure_reads_diagnostics_as_committed(tmp_path, capsys):
    """What the figure reads (results.read_results, kind "diagnostics"): levels as text, no
    metrics rows and nothing from the figure folder, a torn last line dropped, rows beyond the
    sidecar's epochs_done dropped, an unreadable file skipped with one warning line."""
    info = config("gd", "guidance", "reg_coef", "0.10", "C", "NORM")
    write_diagnostics(tmp_path / "gd", info)
    write_metrics(tmp_path / "gd", info)
    write_diagnostics(tmp_path / "figures", config("zz", "guidance", "reg_coef", "1", "C", "NORM"))
    frame = results.read_results(tmp_path, kind="diagnostics")
    assert set(frame["experiment"]) == {"gd"} and set(frame["level"]) == {"0.10"}
    assert len(frame) == 2 * len(DIAGNOSED_EPOCHS) * (N_STEPS + 1)
    assert results.read_results(tmp_path / "nothing", kind="diagnostics").empty
    # A file being appended to: the torn last line is dropped.
    path = tmp_path / "gd" / f"{info['run_id']}.diagnostics.csv"
    path.write_text(path.read_text() + "gd,gd-0.10-C-NORM,guidance,reg_coef,0.10,C,NORM,1,10")
    assert len(results.read_results(tmp_path, kind="diagnostics")) == len(frame)
    # Epoch 10 is appended but not committed: the sidecar states 1 epoch done.
    (tmp_path / "gd" / f"{info['run_id']}.json").write_text(json.dumps({**info, "epochs_done": 1}))
    committed = results.read_results(tmp_path, kind="diagnostics")
    assert sorted(committed["epoch"].unique()) == [0, 1]
    written = diagnostics.plot_diagnostics("gd", committed, tmp_path / "figures")
    assert_figure(written[0])
    # A file that is not a CSV: one warning line, the rest is read.
    (tmp_path / "gd" / "broken.diagnostics.csv").write_bytes(b"\xff\xfe\x00garbage")
    capsys.readouterr()
    assert len(results.read_results(tmp_path, kind="diagnostics")) == len(committed)
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipping") and "broken" in warnings[0]


def test_choose_run_prefers_c_then_r_and_norm_then_value():
    rows = pd.concat(
        pd.DataFrame([{**config("e", "cartpole", "n", "1", flow, clip), "seed": 0, "epoch": 0}])
        for flow in ("R", "M", "C")
        for clip in ("NONE", "VALUE", "NORM")
    )
    assert diagnostics.choose_run(rows) == "e-1-C-NORM"
    assert diagnostics.choose_run(rows[rows["clip"] != "NORM"]) == "e-1-C-VALUE"
    assert diagnostics.choose_run(rows[rows["flow"] != "C"]) == "e-1-R-NORM"
    assert diagnostics.choose_run(rows[rows["flow"] == "M"]) == "e-1-M-NORM"


def test_diagnostics_figure(tmp_path):
    write_experiment(tmp_path, "cartpole", "cartpole", "n_poles", ["1", "2"])
    frame = results.read_results(tmp_path, kind="diagnostics")
    written = diagnostics.plot_diagnostics("cartpole", frame, tmp_path / "figures")
    assert [p.name for p in written] == ["cartpole_diagnostics.png", "cartpole_diagnostics.pdf"]
    assert_figure(written[0], 60_000)
    assert diagnostics.plot_diagnostics("other", frame, tmp_path / "figures") == []


def drawn_growth_panel(monkeypatch, experiment: str, frame: pd.DataFrame, tmp_path: Path):
    """The lines of the first row's growth panel (b) as plot_diagnostics draws them."""
    figures = []
    monkeypatch.setattr(diagnostics, "save_figure", lambda fig, out_dir, name: figures.append(fig) or [])
    diagnostics.plot_diagnostics(experiment, frame, tmp_path)
    (figure,) = figures
    return [line for line in figure.axes[1].get_lines() if len(line.get_xdata()) > 2]


def test_growth_panel_draws_the_true_growth_and_its_bound_faded(tmp_path, monkeypatch):
    info = config("g", "cartpole", "n_poles", "2", "C", "NORM")
    path = write_diagnostics(tmp_path, info, seeds=(0, 1, 2))
    frame = results.read_results(tmp_path, kind="diagnostics")
    lines = drawn_growth_panel(monkeypatch, "g", frame, tmp_path)
    raw = pd.read_csv(path)
    last = raw[raw["epoch"] == DIAGNOSED_EPOCHS[-1]]

    def median(column):
        return last.groupby("t")[column].median().to_numpy()

    thick = [line for line in lines if line.get_alpha() is None]
    faded = [line for line in lines if line.get_alpha() is not None]
    assert len(thick) == len(faded) == 2 * 2  # physics and closed loop, first and last epoch
    for kind in ("physics", "closed_loop"):
        assert any(
            np.allclose(line.get_ydata(), median(f"log10_sensitivity_{kind}"), equal_nan=True)
            for line in thick
        )
        assert any(
            np.allclose(line.get_ydata(), median(f"log10_growth_{kind}"), equal_nan=True) for line in faded
        )
    # Results written before the true growth existed: the bound alone, no error.
    old = tmp_path / "old"
    write_diagnostics(old, info, seeds=(0, 1, 2), sensitivity=False)
    lines = drawn_growth_panel(monkeypatch, "g", results.read_results(old, kind="diagnostics"), tmp_path)
    assert len(lines) == 4 and all(line.get_alpha() is not None for line in lines)


def test_diagnostics_of_one_epoch_one_seed_and_a_diverged_run(tmp_path):
    info = config("q", "quantum", "target_state", "3", "R", "NONE")
    write_diagnostics(tmp_path, info, seeds=(0,), epochs=(0,))
    info = config("q", "quantum", "target_state", "4", "R", "NONE")
    path = write_diagnostics(tmp_path, info, seeds=(0,), epochs=(0, 1))
    frame = pd.read_csv(path)
    frame.loc[frame["epoch"] == 1, "grad_norm_R"] = np.inf
    frame.loc[frame["t"] == 3, "grad_norm_M"] = 0.0
    frame.to_csv(path, index=False)
    written = diagnostics.plot_diagnostics(
        "q", results.read_results(tmp_path, kind="diagnostics"), tmp_path / "figures"
    )
    assert_figure(written[0])


# --- curves of the new and of unknown problems ---


@pytest.mark.parametrize(
    ("problem", "level_key", "levels"),
    [("lqr", "a", ["1.0", "1.3"]), ("pendulum", "n_links", ["1", "2"]), ("my_sim", "stiffness", ["5", "50"])],
)
def test_curves_for_new_and_unknown_problems(tmp_path, problem, level_key, levels):
    for level in levels:
        for flow in ("R", "C"):
            write_metrics(tmp_path, config("exp", problem, level_key, level, flow, "NORM"))
    frame = pd.concat(pd.read_csv(p, dtype={"level": str}) for p in sorted(tmp_path.glob("*.csv")))
    written = curves.plot_experiment("exp", frame, tmp_path / "figures")
    assert [p.name for p in written] == ["exp.png", "exp.pdf"]
    assert_figure(written[0])


def test_lqr_layout_draws_the_optimality_gap():
    layout = curves.layout_of("lqr")
    assert layout["column"] == "optimality_gap" and layout["ylim"] is None
    assert layout["panel"].format("1.0") == "a = 1.0"
    assert curves.layout_of("pendulum")["ylim"] == (1e-6, 3)
    assert curves.layout_of("unheard_of", "k")["panel"].format(3) == "k = 3"


# --- plot_all ---


def make_results(root: Path, levels=("1", "2"), flows=("R", "C"), lqr: bool = True) -> None:
    write_experiment(root, "cartpole", "cartpole", "n_poles", levels, flows)
    for level in levels:
        for flow in flows:
            info = config("cartpole", "cartpole", "n_poles", level, flow, "NORM")
            write_trajectories(root / "cartpole", info, "bptt_cli.plotting.drawings:cartpole")
    if lqr:  # metrics only: no diagnostics, no trajectories
        for level in ("1.0", "1.3"):
            write_metrics(root / "lqr", config("lqr", "lqr", "a", level, "C", "NORM"))


def test_plot_all_draws_every_kind_of_figure(tmp_path):
    make_results(tmp_path / "results")
    written = plot_all(tmp_path / "results", tmp_path / "results" / "figures")
    names = sorted(p.name for p in written)
    assert names == [
        "cartpole.pdf",
        "cartpole.png",
        "cartpole_diagnostics.pdf",
        "cartpole_diagnostics.png",
        "cartpole_trajectory.gif",
        "cartpole_trajectory.pdf",
        "cartpole_trajectory.png",
        "lqr.pdf",
        "lqr.png",
        "overview.pdf",
        "overview.png",
        "paired.csv",
        "summary.csv",
        "summary.md",
    ]
    assert all(p.exists() for p in written)
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert len(summary) == 2 * 2 * 2 + 2  # diagnostics rows did not become configurations


def test_plotting_never_imports_jax(tmp_path):
    make_results(tmp_path / "results", levels=("2",), flows=("C",), lqr=False)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import bptt_cli.plotting, bptt_cli.plotting.drawings, bptt_cli.plotting.trajectories\n"
        "import bptt_cli.plotting.diagnostics\n"
        "root = Path(sys.argv[1])\n"
        "written = bptt_cli.plotting.plot_all(root, root / 'figures')\n"
        "assert any(p.suffix == '.gif' for p in written), written\n"
        "assert any('diagnostics' in p.name for p in written), written\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib'))\n"
        "sys.exit(f'jax was imported: {loaded}' if loaded else 0)\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "results")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
