"""Test-loss curves per experiment (docs/model.md §8): 2×2 panels, median over seeds with an
interquartile band, trailing moving average of window 30, colours by flow, line style by clip.

Problems without a layout of their own (a user's problem) get a generic one: a panel per level
titled ``<level_key> = <level>``, the test loss on a log axis with an automatic range.

Which level is hardest, and the order of the panels, is decided here only
(:func:`ordered_levels`); the diagnostics and trajectory figures reuse it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from bptt_cli.core.flow_names import FLOWS, flow_colour, flow_rank
from bptt_cli.plotting import choose, save_figure
from bptt_cli.results import TRAINED_BY_DEFAULT

# The built-in flows' colours, declared in the flow registry (figures of other flows call flow_colour).
FLOW_COLOURS = {name: flow.colour for name, flow in FLOWS.items() if flow.colour}
CLIP_STYLES = {"VALUE": "-", "NORM": "--", "NONE": ":"}  # also the order of the clips in the legend
# A run trained another way than by default (another optimizer, float64) keeps its flow's colour
# and takes a line style no clip mode uses.
VARIANT_STYLES = {"optimizer": "-.", "precision": (0, (6, 1.5, 1, 1.5, 1, 1.5))}
SMOOTHING = 30

# Per problem: panel title for a level, y range (None: automatic), figure title, the column drawn.
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
    "lqr": {
        "title": "Linear-quadratic control",
        "panel": "a = {}",
        "ylim": None,
        "ylabel": "gap to the optimum (test loss / L* − 1)",
        "column": "optimality_gap",
    },
    "pendulum": {
        "title": "Chained pendulum on a cart",
        "panel": "Number of links: {}",
        "ylim": (1e-6, 3),
        "ylabel": "test loss",
    },
}
# Problems whose task gets harder as the level *decreases* (guidance: less regularization).
# Everywhere else a larger level is harder (more poles, links, a higher target state, larger a).
HARDER_WHEN_SMALLER = frozenset({"guidance"})


def layout_of(problem: str, level_key: str = "level") -> dict:
    """The figure layout of ``problem``; a generic one for a problem this package does not know."""
    if problem in LAYOUTS:
        return {"column": "test_loss", **LAYOUTS[problem]}
    return {
        "title": problem,
        "panel": f"{level_key} = {{}}",
        "ylim": None,
        "ylabel": "test loss",
        "column": "test_loss",
    }


def level_title(problem: str, level: str, level_key: str = "level") -> str:
    """How a panel names ``level`` (quantum counts target states from the ground state as 0)."""
    if problem == "quantum":
        return LAYOUTS["quantum"]["panel"].format(int(float(level)) - 1)
    return layout_of(problem, level_key)["panel"].format(level)


def ordered_levels(problem: str, levels) -> list[str]:
    """The distinct ``levels`` (text) from the easiest to the hardest: the order of the panels.

    Numeric levels are ordered by value (reversed for :data:`HARDER_WHEN_SMALLER`); a problem
    with text levels keeps them in text order.
    """
    levels = list(dict.fromkeys(str(level) for level in levels))
    try:
        ordered = sorted(levels, key=float)
    except ValueError:
        return sorted(levels)
    return ordered[::-1] if problem in HARDER_WHEN_SMALLER else ordered


def hardest_level(problem: str, levels) -> str:
    """The hardest of ``levels``: the largest, except where :data:`HARDER_WHEN_SMALLER`."""
    return ordered_levels(problem, levels)[-1]


def smooth(values: np.ndarray, window: int = SMOOTHING) -> np.ndarray:
    """Trailing moving average, front-padded with the first value: ``out[t]`` is the mean of
    ``values[t - window + 1 ... t]`` where indices below 0 read ``values[0]``; a window holding
    ``inf`` (a diverged seed, as the summary counts it) averages to ``inf``."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return values
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    dead = np.isposinf(padded)
    sums = np.cumsum(np.concatenate([[0.0], np.where(dead, 0.0, padded)]))
    deaths = np.cumsum(np.concatenate([[0], dead]))
    mean = (sums[window:] - sums[:-window]) / window
    return np.where(deaths[window:] > deaths[:-window], np.inf, mean)


CONFIGURATION = ["experiment", "level", "flow", "clip", "optimizer", "precision"]


def latest_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep, per configuration, the runs :mod:`~bptt_cli.plotting.choose` prefers: the most
    epochs, then seeds, so a folder holding both a smoke and a paper run plots the paper run;
    runs of the preferred length whose seeds are new join it (a census trained in blocks of
    seeds is drawn as one)."""
    frame = frame.assign(
        **{c: frame[c].fillna(d) if c in frame else d for c, d in TRAINED_BY_DEFAULT.items()}
    )
    runs = choose.candidates_of(frame)
    seeds = frame.groupby("run_id")["seed"].unique()
    kept = []
    for _, group in frame.groupby("run_id")[CONFIGURATION].first().groupby(CONFIGURATION):
        ranked = sorted((runs[str(run_id)] for run_id in group.index), key=choose.rank)
        taken: set = set()
        for candidate in ranked:
            mine = set(seeds[candidate.key])
            if candidate.epochs == ranked[0].epochs and not mine & taken:
                kept.append(candidate.key)
                taken |= mine
    return frame[frame["run_id"].astype(str).isin(kept)]


def band(rows: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, and the 25th, 50th and 75th percentiles over seeds of the smoothed ``column``."""
    table = rows.pivot_table(index="epoch", columns="seed", values=column, aggfunc="first").sort_index()
    curves = np.stack([smooth(table[seed].to_numpy()) for seed in table.columns], axis=1)
    if not np.isfinite(curves).any():
        return table.index.to_numpy(), curves[:, 0], curves[:, 0], curves[:, 0]
    # A diverged seed is inf (summary.as_released): a percentile between a live seed and a dead
    # one is inf, which NumPy cannot interpolate to; a sentinel above every live value can.
    dead = np.isposinf(curves)
    with np.errstate(all="ignore"):
        top = np.nanmax(np.where(np.isfinite(curves), curves, np.nan), axis=1, keepdims=True)
        top = np.where(np.isnan(top), 0.0, top)
        q = np.nanpercentile(np.where(dead, 2.0 * np.abs(top) + 1.0, curves), [25, 50, 75], axis=1)
    q = np.where(dead.any(axis=1) & (q > top[:, 0]), np.inf, q)
    return table.index.to_numpy(), q[0], q[1], q[2]


def _plain_ticks(ax, narrow: bool) -> None:
    """On a log axis spanning under two decades, label 1-2-5 ticks as plain numbers."""
    if narrow:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())


def _draw(ax, rows: pd.DataFrame, column: str, flows: list[str]) -> None:
    """One curve per flow and clip (and per optimizer and precision where those differ)."""
    variants = [c for c in TRAINED_BY_DEFAULT if c in rows and rows[c].nunique() > 1]
    for key, curve in rows.groupby(["flow", "clip", *variants], sort=False):
        flow, clip = key[0], key[1]
        other = {c: v for c, v in zip(variants, key[2:], strict=True) if v != TRAINED_BY_DEFAULT[c]}
        epochs, q25, q50, q75 = band(curve, column)
        colour = flow_colour(flow, flows)
        style = VARIANT_STYLES[next(iter(other))] if other else CLIP_STYLES.get(clip, "-")
        label = " ".join([flow, clip, *map(str, other.values())])
        ax.plot(epochs, q50, color=colour, linestyle=style, lw=1.4, label=label)
        if curve["seed"].nunique() > 1:
            ax.fill_between(epochs, q25, q75, color=colour, alpha=0.10 if other else 0.18, lw=0)


def _ordered(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` in the order curves are drawn and listed: flows by :func:`flow_rank`, then clips
    as in :data:`CLIP_STYLES`, then the default optimizer and precision before any other."""
    flows = sorted(rows["flow"].unique(), key=flow_rank)
    other = np.zeros(len(rows), bool)
    for column, default in TRAINED_BY_DEFAULT.items():
        if column in rows:
            other |= (rows[column].fillna(default) != default).to_numpy()
    order = {
        "_flow": rows["flow"].map({flow: i for i, flow in enumerate(flows)}),
        "_clip": rows["clip"].map({clip: i for i, clip in enumerate(CLIP_STYLES)}).fillna(len(CLIP_STYLES)),
        "_variant": other,
    }
    return rows.assign(**order).sort_values([*order, "seed", "epoch"]).drop(columns=list(order))


def plot_experiment(experiment: str, rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The 2×2 figure of one experiment, as PNG and PDF in ``out_dir``."""
    problem = str(rows["problem"].iloc[0])
    level_key = str(rows["level_key"].iloc[0]) if "level_key" in rows else "level"
    layout = layout_of(problem, level_key)
    column, ylabel, ylim = layout["column"], layout["ylabel"], layout["ylim"]
    if column not in rows or not rows[column].notna().any():
        column, ylabel = "test_loss", "test loss"  # e.g. lqr files written before the gap existed
    rows = _ordered(rows)
    flows = list(dict.fromkeys(rows["flow"]))
    levels = ordered_levels(problem, rows["level"])
    panels: list[tuple[str, pd.DataFrame, str]] = []
    if problem == "quantum":
        # Three loss panels and the update size at the hardest target (docs/model.md §8).
        for level in levels[:3]:
            panels.append((level_title(problem, level), rows[rows["level"] == level], column))
        panels.append(
            (
                f"Update size (target state {int(float(levels[-1])) - 1})",
                rows[rows["level"] == levels[-1]],
                "update_sq_norm",
            )
        )
    else:
        for level in levels[:4]:
            panels.append((level_title(problem, level, level_key), rows[rows["level"] == level], column))

    # The paper's 2×2 grid; fewer panels (a subset of levels) get a smaller grid.
    n_cols = 1 if len(panels) == 1 else 2
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(max(8.0, 5.5 * n_cols + 0.5), 3.6 * n_rows + 1.2), squeeze=False
    )
    for ax, (title, panel_rows, column) in zip(axes.flat, panels, strict=False):
        _draw(ax, panel_rows, column, flows)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if column == "update_sq_norm":
            ax.set_ylabel("squared norm of the update (before clipping)")
        else:
            ax.set_ylabel(ylabel)
            if ylim is not None:
                ax.set_ylim(*ylim)
            low, high = ax.get_ylim()
            _plain_ticks(ax, low > 0 and high / low < 100)
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    variants = [c for c in TRAINED_BY_DEFAULT if c in rows]
    counts = rows.groupby(["level", "flow", "clip", *variants])[
        "seed"
    ].nunique()  # blocks of seeds: one curve
    seeds = str(counts.max()) if counts.min() == counts.max() else f"{counts.min()}–{counts.max()}"
    note = f"median over {seeds} seeds, band = interquartile range; " if counts.max() > 1 else "one seed; "
    fig.suptitle(f"{layout['title']} ({experiment})\n{note}moving average of {SMOOTHING} epochs", fontsize=11)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1 - 0.6 / fig.get_figheight()))
    written = save_figure(fig, out_dir, experiment)
    plt.close(fig)
    return written
