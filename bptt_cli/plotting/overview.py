"""The front figure: the paper's claim at a glance (docs/model.md §8).

One panel per paper problem found in a results folder (cart-pole, guidance, quantum), in that
order: the final test loss of flows R and C at every level, from the easiest level to the
hardest, as the median over seeds with the interquartile range as an error bar and every
seed's own value as a dot. Each panel shows one clip mode: the first of NORM, VALUE, NONE
(``optim.CLIP_PREFERENCE``) that has runs of both flows.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from bptt_cli.core.optim import CLIP_PREFERENCE
from bptt_cli.plotting import save_figure
from bptt_cli.plotting.curves import FLOW_COLOURS, layout_of, ordered_levels

PROBLEMS = ("cartpole", "guidance", "quantum")  # the paper's Figs. 4, 3 and 5, as the README lists them
FLOWS = ("R", "C")
AXIS_LABELS = {
    "cartpole": "number of poles",
    "guidance": "regularization rc (harder to the right)",
    "quantum": "target state (ground state = 0)",
}
OFFSET = 0.14  # half the distance between a level's R and C columns, in level positions


def final_losses(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (level, flow, clip, seed): the test loss at the last epoch of its run.

    ``rows`` is a long metrics frame (columns run_id, level, flow, clip, seed, epoch,
    test_loss) holding one run per configuration (``curves.latest_runs``).
    """
    last = rows.groupby("run_id")["epoch"].transform("max")
    final = rows[rows["epoch"] == last]
    return final[["level", "flow", "clip", "seed", "epoch", "test_loss"]].reset_index(drop=True)


def choose_clip(finals: pd.DataFrame) -> str | None:
    """The clip mode a panel shows: the first of CLIP_PREFERENCE with runs of every flow in FLOWS."""
    for clip in CLIP_PREFERENCE:
        if set(FLOWS) <= set(finals.loc[finals["clip"] == clip, "flow"]):
            return str(clip)
    return None


def panels_of(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """``(experiment, clip, finals)`` per panel: every experiment of a paper problem that has R
    and C runs under one clip mode, in the order of :data:`PROBLEMS`, then by name; ``finals``
    (:func:`final_losses` of that clip) carries the problem in a column."""
    panels = []
    subset = frame[frame["problem"].isin(PROBLEMS) & frame["flow"].isin(FLOWS)]
    for experiment, rows in subset.groupby("experiment", sort=True):
        finals = final_losses(rows)
        clip = choose_clip(finals)
        if clip is not None:
            problem = str(rows["problem"].iloc[0])
            panels.append((str(experiment), clip, finals[finals["clip"] == clip].assign(problem=problem)))
    return sorted(panels, key=lambda panel: (PROBLEMS.index(panel[2]["problem"].iloc[0]), panel[0]))


def _tick(problem: str, level: str) -> str:
    """A level as the x axis names it (quantum counts target states from the ground state as 0)."""
    return str(int(float(level)) - 1) if problem == "quantum" else level


def _draw(ax, problem: str, finals: pd.DataFrame) -> int:
    """R and C of one panel; returns the largest number of seeds drawn at a point."""
    levels = ordered_levels(problem, finals["level"])
    n_seeds = 0
    for i, flow in enumerate(FLOWS):
        colour = FLOW_COLOURS[flow]
        shift = (2 * i - 1) * OFFSET
        for x, level in enumerate(levels):
            values = finals.loc[(finals["flow"] == flow) & (finals["level"] == level), "test_loss"]
            values = values.to_numpy(float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            n_seeds = max(n_seeds, values.size)
            q25, q50, q75 = np.percentile(values, [25, 50, 75])
            ax.errorbar(
                x + shift,
                q50,
                yerr=[[q50 - q25], [q75 - q50]],
                fmt="o",
                ms=7,
                color=colour,
                mec="#333333",
                mew=0.6,
                capsize=4,
                lw=1.6,
                zorder=3,
            )
            ax.scatter(
                np.full(values.size, x + shift + 0.5 * OFFSET),
                values,
                s=10,
                color=colour,
                alpha=0.7,
                zorder=2,
            )
    ax.set_xticks(range(len(levels)), [_tick(problem, level) for level in levels])
    ax.set_xlim(-0.6, len(levels) - 0.4)
    ax.set_yscale("log")
    ax.set_xlabel(AXIS_LABELS.get(problem, "level"))
    ax.grid(True, axis="y", which="major", alpha=0.3)
    return n_seeds


def plot_overview(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``overview.png/.pdf`` in ``out_dir`` from a long metrics frame (one run per
    configuration); ``[]`` when no paper problem has runs of both R and C."""
    panels = panels_of(frame)
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels) + 0.4, 4.2), squeeze=False)
    n_seeds = 0
    for ax, (experiment, clip, finals) in zip(axes.flat, panels, strict=True):
        problem = str(finals["problem"].iloc[0])
        n_seeds = max(n_seeds, _draw(ax, problem, finals))
        epochs = sorted(set(finals["epoch"]))
        length = f", {epochs[0]} epochs" if len(epochs) == 1 else ""
        name = layout_of(problem)["title"] + ("" if experiment == problem else f" ({experiment})")
        ax.set_title(f"{name}\nclip {clip}{length}", fontsize=10)
    axes.flat[0].set_ylabel("final test loss")
    handles = [
        Line2D([], [], marker="o", ls="", color=FLOW_COLOURS[flow], mec="#333333", label=label)
        for flow, label in (("R", "R: full backpropagation"), ("C", "C: combined (the paper's method)"))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False)
    spread = (
        f"median and interquartile range over {n_seeds} seeds, dots: each seed" if n_seeds > 1 else "one seed"
    )
    fig.suptitle(f"R against C at every level, easiest to hardest ({spread})", fontsize=11)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    written = save_figure(fig, Path(out_dir), "overview")
    plt.close(fig)
    return written
