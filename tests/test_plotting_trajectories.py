"""Trajectory pictures (bptt_cli.plotting.trajectories) and the built-in drawings, from
synthetic ``.trajectories.npz`` files written in the runner's format."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from bptt_cli.plotting import drawings, trajectories

PNG = b"\x89PNG"
N_STEPS = {"cartpole": 8, "pendulum": 6, "guidance": 10, "quantum": 16, "lqr": 10, "mine": 6}
DRAWINGS = {
    "cartpole": "bptt_cli.plotting.drawings:cartpole",
    "pendulum": "bptt_cli.plotting.drawings:pendulum",
    "guidance": "bptt_cli.plotting.drawings:guidance",
    "quantum": "bptt_cli.plotting.drawings:quantum",
}


def states(problem: str, level: str, n_steps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic trajectory ``xs (Nt+1, *state)``, ``us (Nt, *control)`` of ``problem``."""
    s = np.linspace(0.0, 1.0, n_steps + 1)
    if problem in ("cartpole", "pendulum"):
        n = int(level)
        xs = np.zeros((n_steps + 1, 1 + n, 2))
        xs[:, 0, 0] = -0.5 + s + 0.05 * rng.normal()
        xs[:, 0, 1] = 1.0
        for k in range(1, n + 1):
            xs[:, k, 0] = np.pi * (1 - s) + 0.3 * k * np.sin(6 * s)
            xs[:, k, 1] = -np.pi
        return xs, 15 * np.cos(8 * s[:-1])[:, None]
    if problem == "guidance":
        angles = np.linspace(0, 2 * np.pi, 6, endpoint=False) + rng.uniform(0, 1)
        radius = np.where(np.arange(6) < 2, 3.5, 1.5)[None, :] * (1 - 0.8 * s[:, None])
        xs = np.zeros((n_steps + 1, 6, 2, 2))
        xs[:, :, 0, 0] = radius * np.cos(angles + s[:, None])
        xs[:, :, 0, 1] = radius * np.sin(angles + s[:, None])
        return xs, rng.normal(size=(n_steps, 2, 2))
    if problem == "quantum":
        j = np.arange(1, 33)
        phi = [np.sqrt(2 / 33) * np.sin(n * np.pi * j / 33) for n in (1, 2)]
        t = 0.0625 * np.arange(n_steps + 1)[:, None]
        psi = (phi[0] + phi[1] * np.exp(-1.5j * t)) / np.sqrt(2)
        xs = np.stack([psi.real, psi.imag], axis=-1)
        return xs, np.sin(np.linspace(0, 6, n_steps))
    return rng.normal(size=(n_steps + 1, 4)).cumsum(axis=0), rng.normal(size=(n_steps,))


def write_trajectories(folder: Path, experiment: str, problem: str, level: str, flow: str, clip: str, **meta):
    """A ``<run_id>.trajectories.npz`` as the runner writes it: 2 seeds, 8 test states."""
    rng = np.random.default_rng(zlib.crc32(f"{experiment}{level}{flow}{clip}".encode()))
    n_steps = N_STEPS.get(problem, 10)
    pairs = [states(problem, level, n_steps, rng) for _ in range(2 * 8)]
    xs = np.stack([p[0] for p in pairs]).reshape(2, 8, *pairs[0][0].shape).astype(np.float32)
    us = np.stack([p[1] for p in pairs]).reshape(2, 8, *pairs[0][1].shape).astype(np.float32)
    run_id = f"{experiment}-{level}-{flow}-{clip}"
    info = {
        "run_id": run_id,
        "experiment": experiment,
        "problem": problem,
        "level_key": {"guidance": "reg_coef", "quantum": "target_state"}.get(problem, "n"),
        "level": level,
        "flow": flow,
        "clip": clip,
        "drawing": DRAWINGS.get(problem),
        **meta,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.trajectories.npz"
    np.savez(path, xs=xs, us=us, seeds=np.array([7, 8]), meta=np.array(json.dumps(info)))
    return path


def write_grid(root: Path, experiment: str, problem: str, levels, flows=("R", "C"), clips=("NORM",), **meta):
    for level in levels:
        for flow in flows:
            for clip in clips:
                write_trajectories(root / experiment, experiment, problem, level, flow, clip, **meta)


def assert_png(path: Path, min_bytes: int = 10_000) -> None:
    assert path.read_bytes()[:4] == PNG and path.stat().st_size > min_bytes
    assert path.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"


# --- the built-in drawings, one synthetic state each ---


@pytest.mark.parametrize(("name", "level"), [("cartpole", "3"), ("pendulum", "3")])
def test_frame_drawings_draw_one_state(name, level):
    drawing = getattr(drawings, name)
    xs, us = states(name, level, 10, np.random.default_rng(0))
    fig, axes = plt.subplots(1, 3)
    drawing.frame(axes[0], xs[4], us[4])
    drawing.frame(axes[1], xs[-1], None)  # the final state has no control
    drawing.frame(axes[2], np.full_like(xs[0], np.nan), us[0])  # a diverged run
    first_limits = axes[0].get_xlim(), axes[0].get_ylim()
    axes[0].clear()
    drawing.frame(axes[0], xs[4], us[4])
    assert (axes[0].get_xlim(), axes[0].get_ylim()) == first_limits  # the view depends on the state only
    # cart, one line per pole or link, force arrow
    assert len(axes[0].patches) >= 2 and len(axes[0].lines) >= int(level)
    assert len(axes[1].patches) == 1  # no force arrow without a control
    assert any("diverged" in text.get_text() for text in axes[2].texts)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    assert buffer.tell() > 5_000


def test_cartpole_view_covers_the_whole_track_travelled():
    """Cart-pole's frames share one view: extent covers every cart position of a trajectory."""
    xs, _ = states("cartpole", "3", 10, np.random.default_rng(0))
    far = xs.copy()
    far[-1, 0, 0] = 10.0
    x_min, x_max, y_min, y_max = drawings.cartpole.extent(far)
    assert x_min <= -3.0 and x_max > 10.0 + 1.0 and y_min < -1.0 and y_max > 1.0
    assert drawings.cartpole.extent(np.full_like(xs, np.nan)) is None


@pytest.mark.parametrize("n_links", [1, 2, 3])
def test_pendulum_frame_is_centred_on_the_cart_at_equal_aspect(n_links):
    """However far the cart drives, the chain fills the frame: centred on the cart, as tall and
    wide as the chain is long (no shared extent that would shrink links to dots)."""
    assert not hasattr(drawings.pendulum, "extent")
    x = np.zeros((1 + n_links, 2))
    x[0, 0] = -12.5
    fig, ax = plt.subplots()
    drawings.pendulum.frame(ax, x, np.array([1.0]))
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    reach = 0.5 * n_links
    assert (x_low + x_high) / 2 == pytest.approx(-12.5) and (y_low + y_high) / 2 == pytest.approx(0.0)
    assert reach < x_high - (-12.5) < reach + 0.5 and reach < y_high < reach + 0.5
    assert ax.get_aspect() == 1.0
    assert any("cart at x = -12.50" in text.get_text() for text in ax.texts)
    plt.close(fig)


def test_pendulum_links_follow_the_chain_with_their_joints():
    x = np.array([[0.3, 0.0], [0.0, 0.0], [np.pi / 2, 0.0]])
    fig, ax = plt.subplots()
    drawings.pendulum.frame(ax, x, np.array([0.0]))
    links = [line for line in ax.lines if line.get_linewidth() == 3.5]
    # link 1 straight up from the cart at x = 0.3, link 2 pointing right
    np.testing.assert_allclose(links[0].get_xydata(), [[0.3, 0.0], [0.3, 0.5]], atol=1e-12)
    np.testing.assert_allclose(links[1].get_xydata(), [[0.3, 0.5], [0.8, 0.5]], atol=1e-12)
    hinges = next(
        line for line in ax.lines if line.get_markerfacecolor() == "white" and len(line.get_xdata()) == 2
    )
    np.testing.assert_allclose(hinges.get_xydata(), [[0.3, 0.0], [0.3, 0.5]], atol=1e-12)
    plt.close(fig)


@pytest.mark.parametrize("name", ["guidance", "quantum"])
def test_trajectory_drawings_draw_a_whole_run(name):
    xs, us = states(name, "1", 20, np.random.default_rng(1))
    fig, ax = plt.subplots()
    getattr(drawings, name).trajectory(ax, xs, us)
    if name == "guidance":
        assert len(ax.lines) >= 6 * 3 + 1  # a path, a start and an end per agent, the origin
    else:
        assert len(ax.images) == 1 and ax.images[0].get_array().shape == (21, 32)
        assert len(fig.axes) == 3  # the density, u(t) beside it, the colour bar
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    assert buffer.tell() > 5_000


# --- choosing what to draw ---


def test_choose_runs_hardest_level_flows_and_clip_preference(tmp_path):
    write_grid(tmp_path, "cp", "cartpole", ["1", "2"], flows=("R", "M", "C"), clips=("NONE", "VALUE", "NORM"))
    write_trajectories(tmp_path / "cp", "cp", "cartpole", "2", "S", "NONE")
    chosen = trajectories.choose_runs(trajectories.read_trajectories(tmp_path))
    assert [(r.meta["level"], r.meta["flow"], r.meta["clip"]) for r in chosen] == [
        ("2", "R", "NORM"),
        ("2", "C", "NORM"),
    ]
    records = [r for r in trajectories.read_trajectories(tmp_path) if r.meta["clip"] != "NORM"]
    assert {r.meta["clip"] for r in trajectories.choose_runs(records)} == {"VALUE"}
    records = [r for r in records if r.meta["flow"] in ("M", "S")]
    assert [r.meta["flow"] for r in trajectories.choose_runs(records)] == ["M"]  # neither R nor C


def test_guidance_hardest_level_is_the_smallest_regularization(tmp_path):
    write_grid(tmp_path, "gd", "guidance", ["1.0", "0.01", "0.1"])
    chosen = trajectories.choose_runs(trajectories.read_trajectories(tmp_path))
    assert {r.meta["level"] for r in chosen} == {"0.01"}


def test_of_two_runs_of_one_configuration_the_one_trained_longer(tmp_path):
    """A smoke and a paper run of one configuration: the sidecars' epochs_done decide, as in the
    curves (the file found first, a-smoke, would win a tie)."""
    for folder, run_id, epochs in (("a-smoke", "cp-smoke", 3), ("b-paper", "cp-paper", 500)):
        write_trajectories(tmp_path / folder, "cp", "cartpole", "2", "C", "NORM", run_id=run_id)
        (tmp_path / folder / f"{run_id}.json").write_text(
            json.dumps({"run_id": run_id, "epochs_done": epochs})
        )
    records = trajectories.read_trajectories(tmp_path)
    assert sorted(r.epochs for r in records) == [3, 500]
    assert [r.meta["run_id"] for r in trajectories.choose_runs(records)] == ["cp-paper"]


# --- whole pictures ---


def test_frame_drawing_gives_gif_and_strip(tmp_path, capsys):
    write_grid(tmp_path / "results", "cartpole", "cartpole", ["1", "2"])
    out = tmp_path / "figures"
    written = trajectories.plot_trajectories(tmp_path / "results", out)
    assert sorted(p.name for p in written) == [
        "cartpole_trajectory.gif",
        "cartpole_trajectory.pdf",
        "cartpole_trajectory.png",
    ]
    assert_png(out / "cartpole_trajectory.png", 30_000)
    with Image.open(out / "cartpole_trajectory.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames > 1
        assert gif.n_frames == N_STEPS["cartpole"] + 1  # every step: the horizon is short
    assert "warning" not in capsys.readouterr().err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # written atomically


def test_experiment_folder_and_one_flow_only(tmp_path):
    write_grid(tmp_path, "pend", "pendulum", ["2", "3"], flows=("C",))
    written = trajectories.plot_trajectories(tmp_path / "pend", tmp_path / "figures")
    assert {p.name for p in written} >= {"pend_trajectory.gif", "pend_trajectory.png"}


@pytest.mark.parametrize("problem", ["guidance", "quantum"])
def test_trajectory_drawing_gives_a_still(tmp_path, capsys, problem):
    levels = ["0.1", "0.01"] if problem == "guidance" else ["3", "4"]
    write_grid(tmp_path, problem, problem, levels)
    written = trajectories.plot_trajectories(tmp_path, tmp_path / "figures")
    assert sorted(p.name for p in written) == [f"{problem}_trajectory.pdf", f"{problem}_trajectory.png"]
    assert_png(tmp_path / "figures" / f"{problem}_trajectory.png", 30_000)
    assert "warning" not in capsys.readouterr().err


def test_problem_without_drawing_gets_the_state_over_time(tmp_path):
    write_grid(tmp_path, "lqr", "lqr", ["1.0", "1.3"])
    written = trajectories.plot_trajectories(tmp_path, tmp_path / "figures")
    assert sorted(p.name for p in written) == ["lqr_trajectory.pdf", "lqr_trajectory.png"]
    assert_png(next(p for p in written if p.suffix == ".png"))


@pytest.mark.parametrize(
    "reference",
    [
        "no_such_package.drawing:thing",
        "bptt_cli.plotting.drawings:no_such_drawing",
        "bptt_cli.plotting.drawings:np",  # imports, but has neither frame nor trajectory
        "/no/such/file.py:x",
        "nocolon",
    ],
)
def test_broken_drawing_reference_warns_in_one_line(capsys, reference):
    assert trajectories.load_drawing(reference) is None
    err = capsys.readouterr().err
    assert err.startswith("warning:") and err.count("\n") == 1 and reference in err


def test_broken_drawing_reference_falls_back_to_the_state_over_time(tmp_path, capsys):
    write_grid(tmp_path, "cp", "cartpole", ["1", "2"], drawing="no_such_package.drawing:thing")
    written = trajectories.plot_trajectories(tmp_path, tmp_path / "figures")
    assert sorted(p.name for p in written) == ["cp_trajectory.pdf", "cp_trajectory.png"]  # no GIF
    assert_png(next(p for p in written if p.suffix == ".png"))
    assert capsys.readouterr().err.count("warning") == 1
    assert trajectories.load_drawing(None) is None and capsys.readouterr().err == ""


def test_user_drawing_from_a_file(tmp_path, capsys):
    module = tmp_path / "my_drawing.py"
    module.write_text(
        "class Dots:\n"
        "    def frame(self, ax, x, u):\n"
        "        ax.plot(x.ravel(), 'o')\n"
        "        ax.set_ylim(-5, 5)\n"
        "dots = Dots()\n"
    )
    write_grid(tmp_path / "results", "mine", "mine", ["a", "b"], drawing=f"{module}:dots")
    written = trajectories.plot_trajectories(tmp_path / "results", tmp_path / "figures")
    assert {p.name for p in written} == {"mine_trajectory.gif", "mine_trajectory.png", "mine_trajectory.pdf"}
    assert capsys.readouterr().err == ""

    # A drawing that fails while drawing: one warning, then the state over time.
    broken = tmp_path / "broken.py"
    broken.write_text(
        "import types\n"
        "def frame(ax, x, u):\n"
        "    raise RuntimeError('oops')\n"
        "drawing = types.SimpleNamespace(frame=frame)\n"
    )
    write_grid(tmp_path / "results2", "mine", "mine", ["a", "b"], drawing=f"{broken}:drawing")
    written = trajectories.plot_trajectories(tmp_path / "results2", tmp_path / "figures2")
    assert sorted(p.name for p in written) == ["mine_trajectory.pdf", "mine_trajectory.png"]
    assert not list((tmp_path / "figures2").glob("*.gif"))  # nothing half-drawn is left
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: oops" in err


def test_nothing_to_draw(tmp_path):
    assert trajectories.plot_trajectories(tmp_path, tmp_path / "figures") == []
    assert not (tmp_path / "figures").exists()
