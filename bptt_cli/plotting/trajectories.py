"""What the trained controllers do: one trajectory per experiment, R beside C.

Reads ``<run_id>.trajectories.npz`` (written by the runner at the end of every run):

- ``xs (n_seeds, n_traj, Nt+1, *state)`` and ``us (n_seeds, n_traj, Nt, *control)``, float32;
- ``seeds (n_seeds,)``;
- ``meta``: a 0-d array holding a JSON string with run_id, experiment, problem, level_key,
  level, flow, clip and drawing (null or a reference to a drawing, see
  :mod:`bptt_cli.plotting.drawings` for the contract).

Per experiment it takes the runs at the hardest level (:func:`curves.hardest_level`), flows R
and C (whichever exist; another flow when neither does), the clip NORM, else VALUE, else NONE
(the rule of :mod:`bptt_cli.plotting.choose`), the first seed and the first test state, and
writes into the figure folder:

- with a drawing that has ``frame``: ``<experiment>_trajectory.gif``, an animation with the
  flows side by side (every step, or every k-th step so that there are at most 40 frames),
  and (unless the drawing also has ``trajectory``) a strip of frames across time
  ``<experiment>_trajectory.png/.pdf``, one row per flow;
- with a drawing that has ``trajectory``: ``<experiment>_trajectory.png/.pdf``, flows side by side;
- without a usable drawing: ``<experiment>_trajectory.png/.pdf`` with the state components and
  the control over time.

A drawing that cannot be imported or fails while drawing gets a one-line warning on stderr and
the plot over time instead.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from bptt_cli import problems, results
from bptt_cli.plotting import choose, save_figure
from bptt_cli.plotting.curves import hardest_level, level_title

SHOWN_FLOWS = ("R", "C")
FLOW_NAMES = {
    "R": "R (regular BPTT)",
    "M": "M (modified)",
    "C": "C (combined, the paper's method)",
    "S": "S (stopped)",
}
STRIP_FRAMES = 6
MAX_GIF_FRAMES = 40
GIF_FRAME_MS = 80
GIF_LAST_FRAME_MS = 1200


@dataclass(frozen=True)
class Trajectories:
    """One ``.trajectories.npz``: arrays as stored, the parsed ``meta``, the epochs its run
    trained (as the run's sidecar states them; 0 without one) and whether it was trained with
    the default optimizer and precision (by its sidecar)."""

    path: Path
    xs: np.ndarray
    us: np.ndarray
    seeds: np.ndarray
    meta: dict[str, Any]
    epochs: int = 0
    default: bool = True

    @property
    def n_seeds(self) -> int:
        return int(self.xs.shape[0])

    def first(self) -> tuple[int, np.ndarray, np.ndarray]:
        """The first seed's first test trajectory: ``seed, xs (Nt+1, *state), us (Nt, *control)``."""
        index = int(np.argmin(self.seeds)) if self.seeds.size else 0
        seed = int(self.seeds[index]) if self.seeds.size else 0
        return seed, np.asarray(self.xs[index, 0], float), np.asarray(self.us[index, 0], float)


@dataclass(frozen=True)
class Panel:
    """One trajectory to draw: which controller, ``xs (Nt+1, *state)``, ``us (Nt, *control)``."""

    flow: str
    clip: str
    seed: int
    xs: np.ndarray
    us: np.ndarray

    @property
    def title(self) -> str:
        return f"{flow_name(self.flow)}, clip {self.clip}"

    @property
    def short_title(self) -> str:
        return f"{self.flow}, clip {self.clip}"


def read_trajectories(root: Path) -> list[Trajectories]:
    """Every readable ``*.trajectories.npz`` below ``root`` (the figure folder excluded)."""
    root = Path(root)
    metas = results.read_metas(root)
    found = []
    for path in sorted(root.rglob("*.trajectories.npz")):
        if results.FIGURES_DIR in path.relative_to(root).parts or path.name.startswith("."):
            continue
        try:
            xs, us, seeds, meta = results.read_trajectories(path)
            sidecar = metas.get(str(meta.get("run_id")), {})
            default = choose.is_default(sidecar.get("config", {}))
            found.append(Trajectories(path, xs, us, seeds, meta, int(sidecar.get("epochs_done", 0)), default))
        except (OSError, ValueError, KeyError) as error:  # JSONDecodeError is a ValueError
            results.warn(f"skipping {path}: not a readable trajectories file ({error})")
    return found


def load_drawing(reference: str | None) -> Any | None:
    """The drawing a ``"package.module:attribute"`` or ``"/path/file.py:attribute"`` names.

    None when ``reference`` is None; a reference that does not resolve to an object with
    ``frame`` or ``trajectory`` gives a one-line warning on stderr and None.
    """
    if not reference:
        return None
    module_name, _, attribute = str(reference).rpartition(":")
    try:
        if not module_name or not attribute:
            raise ValueError("expected 'module:attribute' or '/path/file.py:attribute'")
        module = problems.import_ref(module_name)
        drawing = getattr(module, attribute)
        if not (callable(getattr(drawing, "frame", None)) or callable(getattr(drawing, "trajectory", None))):
            raise TypeError("it has neither frame(ax, x, u) nor trajectory(ax, xs, us)")
    except Exception as error:  # a user's module may fail in any way; the figure still gets drawn
        results.warn(
            f"cannot use drawing {reference!r} ({type(error).__name__}: {error}); plotting the state over time"
        )
        return None
    return drawing


def plot_trajectories(source: Path, out_dir: Path) -> list[Path]:
    """The trajectory pictures of every experiment below ``source`` (a results folder or one
    experiment's folder), written into ``out_dir``; returns the paths written."""
    source, out_dir = Path(source), Path(out_dir)
    by_experiment: dict[str, list[Trajectories]] = {}
    for record in read_trajectories(source):
        by_experiment.setdefault(str(record.meta.get("experiment", record.path.parent.name)), []).append(
            record
        )
    written: list[Path] = []
    for experiment in sorted(by_experiment):
        shown = choose_runs(by_experiment[experiment])
        written += _plot_experiment(experiment, shown, out_dir)
    return written


def choose_runs(records: list[Trajectories]) -> list[Trajectories]:
    """At the hardest level, one run per shown flow (R then C; else the first flow there is),
    each chosen by :mod:`~bptt_cli.plotting.choose`: clip NORM preferred, then VALUE, then NONE;
    among equals the one with the most epochs, then seeds."""
    problem = str(records[0].meta.get("problem", ""))
    level = hardest_level(problem, [str(r.meta.get("level")) for r in records])
    at_level = {str(r.path): r for r in records if str(r.meta.get("level")) == level}
    candidates = [
        choose.Candidate(
            key, str(r.meta.get("flow")), str(r.meta.get("clip")), r.epochs, r.n_seeds, r.default
        )
        for key, r in at_level.items()
    ]
    return [at_level[candidate.key] for candidate in choose.best_per_flow(candidates, SHOWN_FLOWS)]


def flow_name(flow: str) -> str:
    if flow in FLOW_NAMES:
        return FLOW_NAMES[flow]
    if flow.startswith("T") and flow[1:].isdigit():
        return f"{flow} (truncated every {flow[1:]} steps)"
    return flow


def _plot_experiment(experiment: str, runs: list[Trajectories], out_dir: Path) -> list[Path]:
    meta = runs[0].meta
    drawing = load_drawing(meta.get("drawing"))
    panels = []
    for run in runs:
        seed, xs, us = run.first()
        panels.append(Panel(str(run.meta.get("flow")), str(run.meta.get("clip")), seed, xs, us))
    problem = str(meta.get("problem", ""))
    level = level_title(problem, str(meta.get("level")), str(meta.get("level_key", "level")))
    seeds = sorted({panel.seed for panel in panels})
    heading = (
        f"{experiment}: the trained controllers on the first test state — "
        f"{level} (the hardest level), seed {', '.join(map(str, seeds))}"
    )
    stem = f"{experiment}_trajectory"
    if drawing is not None:
        try:
            return _with_drawing(drawing, panels, heading, out_dir, stem)
        except Exception as error:  # a user's drawing may fail in any way
            results.warn(
                f"drawing {meta.get('drawing')!r} failed ({type(error).__name__}: {error}); "
                "plotting the state over time"
            )
    return _over_time(panels, heading, out_dir, stem)


def _with_drawing(drawing, panels, heading: str, out_dir: Path, stem: str) -> list[Path]:
    """Render everything first, then write: a drawing that fails half-way leaves no files."""
    dt = getattr(drawing, "dt", None)
    gif = _animation(drawing, panels, heading, dt) if callable(getattr(drawing, "frame", None)) else None
    fig = None
    try:
        if callable(getattr(drawing, "trajectory", None)):
            fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 5.4), squeeze=False)
            for ax, panel in zip(axes[0], panels, strict=True):
                drawing.trajectory(ax, panel.xs, panel.us)
                ax.set_title(panel.title, fontsize=10)
            fig.suptitle(heading, fontsize=11)
            fig.tight_layout()
        else:
            fig = _strip(drawing, panels, heading, dt)
        written = save_figure(fig, out_dir, stem)
    finally:
        if fig is not None:
            plt.close(fig)
    if gif is not None:
        results.write_atomic(out_dir / f"{stem}.gif", gif)
        written.insert(0, out_dir / f"{stem}.gif")
    return written


def _time_label(step: int, n_steps: int, dt: float | None) -> str:
    if dt is None:
        return f"step {step} of {n_steps}"
    return f"t = {step * dt:.2f} s (step {step})"


def _control_at(us: np.ndarray, step: int) -> np.ndarray | None:
    return us[step] if step < len(us) else None


def _strip(drawing, panels, heading: str, dt: float | None):
    n_steps = len(panels[0].us)
    steps = sorted(set(np.linspace(0, n_steps, STRIP_FRAMES).round().astype(int).tolist()))
    width = 2.6
    fig, axes = plt.subplots(
        len(panels), len(steps), figsize=(width * len(steps), 2.6 * len(panels) + 0.9), squeeze=False
    )
    try:
        _fill_strip(drawing, panels, steps, axes, dt)
        _set_view(axes.flat, _shared_view(drawing, panels))
    except BaseException:
        plt.close(fig)
        raise
    _fit_height(fig, axes[0, 0], width, len(panels), per_row=0.9, top=1.1)
    names = "; ".join(flow_name(panel.flow) for panel in panels)
    fig.suptitle(f"{heading}\nrows: {names}", fontsize=10)
    fig.tight_layout()
    return fig


def _fill_strip(drawing, panels, steps: list[int], axes, dt: float | None) -> None:
    n_steps = len(panels[0].us)
    for row, panel in zip(axes, panels, strict=True):
        for ax, step in zip(row, steps, strict=True):
            drawing.frame(ax, panel.xs[step], _control_at(panel.us, step))
            ax.set_title(_time_label(step, n_steps, dt), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.label.set_size(7)
        # Rows are short: the flow and clip only (the heading names the flows in full).
        row[0].text(
            -0.1,
            0.5,
            panel.short_title,
            transform=row[0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            fontsize=9,
        )


def _shared_view(drawing, panels) -> tuple[float, float, float, float] | None:
    """One view for every frame: the union of ``drawing.extent`` over the panels' trajectories
    (None, and the frames keep their own views, when the drawing has no ``extent``)."""
    extent = getattr(drawing, "extent", None)
    boxes = [extent(panel.xs) for panel in panels] if callable(extent) else []
    boxes = [box for box in boxes if box is not None]
    if not boxes:
        return None
    return tuple(f(box[i] for box in boxes) for i, f in enumerate((min, max, min, max)))


def _set_view(axes, view: tuple[float, float, float, float] | None) -> None:
    if view is not None:
        for ax in axes:
            ax.set_xlim(view[0], view[1])
            ax.set_ylim(view[2], view[3])


def _fit_height(fig, ax, width: float, n_rows: int, per_row: float, top: float) -> None:
    """A drawing with equal axes (a picture of the system) fixes its own height/width ratio: fit
    the figure's height to it rather than leave blank bands around the pictures, keeping
    ``per_row`` inches per row for titles and labels and ``top`` for the heading."""
    if ax.get_aspect() == 1.0:
        ratio = abs(np.diff(ax.get_ylim())[0] / np.diff(ax.get_xlim())[0])
        fig.set_figheight(n_rows * (width * float(np.clip(ratio, 0.2, 1.5)) + per_row) + top)


def _animation(drawing, panels, heading: str, dt: float | None) -> bytes:
    """An animated GIF (bytes): the flows side by side, every ``stride``-th step and the last."""
    from PIL import Image

    n_steps = len(panels[0].us)
    stride = max(1, math.ceil(n_steps / MAX_GIF_FRAMES))
    steps = list(range(0, n_steps + 1, stride))
    if steps[-1] != n_steps:
        steps.append(n_steps)
    view = _shared_view(drawing, panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False, dpi=80)
    images = []
    try:
        for step in steps:
            for ax, panel in zip(axes[0], panels, strict=True):
                ax.clear()
                drawing.frame(ax, panel.xs[step], _control_at(panel.us, step))
                ax.set_title(f"{panel.title}\n{_time_label(step, n_steps, dt)}", fontsize=9)
            _set_view(axes.flat, view)
            if not images:  # lay out once: the axes must not move between frames
                _fit_height(fig, axes[0, 0], 4.2, 1, per_row=1.1, top=0.35)
                fig.suptitle(heading, fontsize=8)
                fig.tight_layout()
            fig.canvas.draw()
            rgba = np.asarray(fig.canvas.buffer_rgba())
            images.append(Image.fromarray(rgba[..., :3].copy()).quantize(colors=128))
    finally:
        plt.close(fig)
    buffer = io.BytesIO()
    durations = [GIF_FRAME_MS] * (len(images) - 1) + [GIF_LAST_FRAME_MS]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buffer.getvalue()


def _over_time(panels, heading: str, out_dir: Path, stem: str) -> list[Path]:
    """The generic picture: every state component and the control over the time steps."""
    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(6.0 * len(panels), 6.4),
        squeeze=False,
        sharex="col",
        gridspec_kw={"height_ratios": (2, 1)},
    )
    for column, panel in enumerate(panels):
        xs, us = panel.xs, panel.us
        states = xs.reshape(len(xs), -1)
        controls = us.reshape(len(us), -1)
        state_ax, control_ax = axes[0, column], axes[1, column]
        few = states.shape[1] <= 8
        for i in range(states.shape[1]):
            index = np.unravel_index(i, xs.shape[1:])
            label = "x[" + ", ".join(map(str, index)) + "]" if few else None
            state_ax.plot(np.arange(len(states)), states[:, i], lw=1.2 if few else 0.7, label=label)
        if few:
            state_ax.legend(fontsize=7, ncol=2, loc="best")
        else:
            state_ax.text(
                0.01,
                0.98,
                f"all {states.shape[1]} state components",
                transform=state_ax.transAxes,
                va="top",
                fontsize=8,
            )
        state_ax.set_title(panel.title, fontsize=10)
        state_ax.set_ylabel("state components")
        state_ax.grid(True, alpha=0.3)
        for i in range(controls.shape[1]):
            control_ax.step(np.arange(len(controls)), controls[:, i], where="post", lw=1.2)
        control_ax.set_ylabel("control the network chose")
        control_ax.set_xlabel("time step")
        control_ax.grid(True, alpha=0.3)
    fig.suptitle(
        heading + "\n(no drawing for this problem: the state and the control over time)", fontsize=10
    )
    fig.tight_layout()
    written = save_figure(fig, out_dir, stem)
    plt.close(fig)
    return written
