"""Test-loss curves per experiment (SPEC §8): 2×2 panels, median over seeds with an
interquartile band, trailing moving average of window 30, colours by flow, line style by clip."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from bptt_cli.plotting import save_figure

FLOW_COLOURS = {"R": "#ef476f", "M": "#ffd166", "C": "#06d6a0", "S": "#073b4c"}
EXTRA_COLOURS = ("#118ab2", "#8d99ae", "#6a4c93", "#f78c6b")  # truncated flows T<k>
CLIP_STYLES = {"VALUE": "-", "NORM": "--", "NONE": ":"}
FLOW_ORDER = ("R", "M", "C", "S")
SMOOTHING = 30

# Per problem: panel title for a level, y range, figure title, and which levels fill the panels.
LAYOUTS = {
    "cartpole": {
        "title": "Cartpole",
        "panel": "Number of poles: {}",
        "ylim": (1e-6, 3),
        "ylabel": "test loss",
    },
    "guidance": {
        "title": "Guidance by repulsion",
        "panel": "Regularization: {}",
        "ylim": (0.4, 6),
        "ylabel": "test loss (total)",
    },
    "quantum": {
        "title": "Quantum control",
        "panel": "Target state: {}",
        "ylim": (16.5, 135),
        "ylabel": "test loss",
    },
}


def smooth(values: np.ndarray, window: int = SMOOTHING) -> np.ndarray:
    """Trailing moving average, front-padded with the first value: ``out[t]`` is the mean of
    ``values[t - window + 1 ... t]`` where indices below 0 read ``values[0]``."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return values
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    sums = np.cumsum(np.concatenate([[0.0], padded]))
    return (sums[window:] - sums[:-window]) / window


def latest_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep, per (experiment, level, flow, clip), only the run with the most epochs and seeds, so
    a folder holding both a smoke and a paper run plots the paper run."""
    sizes = frame.groupby("run_id").agg(
        experiment=("experiment", "first"),
        level=("level", "first"),
        flow=("flow", "first"),
        clip=("clip", "first"),
        epochs=("epoch", "max"),
        seeds=("seed", "nunique"),
    )
    best = sizes.sort_values(["epochs", "seeds"]).groupby(["experiment", "level", "flow", "clip"]).tail(1)
    return frame[frame["run_id"].isin(best.index)]


def band(rows: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, and the 25th, 50th and 75th percentiles over seeds of the smoothed ``column``."""
    table = rows.pivot_table(index="epoch", columns="seed", values=column, aggfunc="first").sort_index()
    curves = np.stack([smooth(table[seed].to_numpy()) for seed in table.columns], axis=1)
    with np.errstate(all="ignore"):
        q25, q50, q75 = (
            np.nanpercentile(curves, [25, 50, 75], axis=1)
            if np.isfinite(curves).any()
            else [curves[:, 0]] * 3
        )
    return table.index.to_numpy(), q25, q50, q75


def flow_colour(flow: str, flows: list[str]) -> str:
    if flow in FLOW_COLOURS:
        return FLOW_COLOURS[flow]
    extras = sorted(f for f in flows if f not in FLOW_COLOURS)
    return EXTRA_COLOURS[extras.index(flow) % len(EXTRA_COLOURS)]


def _plain_ticks(ax, narrow: bool) -> None:
    """On a log axis spanning under two decades, label 1-2-5 ticks as plain numbers."""
    if narrow:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())


def _draw(ax, rows: pd.DataFrame, column: str, flows: list[str]) -> None:
    for (flow, clip), curve in rows.groupby(["flow", "clip"], sort=False):
        epochs, q25, q50, q75 = band(curve, column)
        colour = flow_colour(flow, flows)
        ax.plot(
            epochs, q50, color=colour, linestyle=CLIP_STYLES.get(clip, "-"), lw=1.4, label=f"{flow} {clip}"
        )
        if curve["seed"].nunique() > 1:
            ax.fill_between(epochs, q25, q75, color=colour, alpha=0.18, lw=0)


def _ordered(rows: pd.DataFrame) -> pd.DataFrame:
    flow_rank = {f: i for i, f in enumerate(FLOW_ORDER)}
    clip_rank = {c: i for i, c in enumerate(CLIP_STYLES)}
    key = rows["flow"].map(lambda f: flow_rank.get(f, len(FLOW_ORDER))) * 10 + rows["clip"].map(clip_rank)
    return rows.assign(_order=key).sort_values(["_order", "seed", "epoch"]).drop(columns="_order")


def plot_experiment(experiment: str, rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The 2×2 figure of one experiment, as PNG and PDF in ``out_dir``."""
    problem = rows["problem"].iloc[0]
    layout = LAYOUTS[problem]
    rows = _ordered(rows)
    flows = list(dict.fromkeys(rows["flow"]))
    levels = sorted(rows["level"].unique(), key=float, reverse=problem == "guidance")
    panels: list[tuple[str, pd.DataFrame, str]] = []
    if problem == "quantum":
        # Three loss panels and the update size at the hardest target (SPEC §8).
        for level in levels[:3]:
            panels.append((layout["panel"].format(int(level) - 1), rows[rows["level"] == level], "test_loss"))
        panels.append(
            (
                f"Update size (target state {int(levels[-1]) - 1})",
                rows[rows["level"] == levels[-1]],
                "update_sq_norm",
            )
        )
    else:
        for level in levels[:4]:
            panels.append((layout["panel"].format(level), rows[rows["level"] == level], "test_loss"))

    # The paper's 2×2 grid; fewer panels (a subset of levels) get a smaller grid.
    n_cols = 1 if len(panels) == 1 else 2
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(max(8.0, 5.5 * n_cols + 0.5), 3.6 * n_rows + 1.2), squeeze=False
    )
    for ax, (title, panel_rows, column) in zip(axes.flat, panels, strict=False):
        _draw(ax, panel_rows, column, flows)
        ax.set_yscale("log")
        _plain_ticks(ax, column == "test_loss" and layout["ylim"][1] / layout["ylim"][0] < 100)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if column == "update_sq_norm":
            ax.set_ylabel("squared norm of the update (before clipping)")
        else:
            ax.set_ylabel(layout["ylabel"])
            ax.set_ylim(*layout["ylim"])
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    n_seeds = rows.groupby("run_id")["seed"].nunique().max()
    note = f"median over {n_seeds} seeds, band = interquartile range; " if n_seeds > 1 else "one seed; "
    fig.suptitle(f"{layout['title']} ({experiment})\n{note}moving average of {SMOOTHING} epochs", fontsize=11)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1 - 0.6 / fig.get_figheight()))
    written = save_figure(fig, out_dir, experiment)
    plt.close(fig)
    return written
