"""Where the gradient grows or fades (docs/model.md §14), from ``<run_id>.diagnostics.csv`` files, as
:func:`bptt_cli.results.read_results` reads them (``kind="diagnostics"``: levels as text, rows
up to the sidecar's ``epochs_done``).

Each file holds one row per (seed, diagnosed epoch, t) with the configuration columns
(experiment, run_id, problem, level_key, level, flow, clip), seed, epoch, t = 0 … Nt,
``grad_norm_R`` / ``grad_norm_M`` (median over a batch of |∂L/∂x_t| for flows R and M),
``jac_physics`` / ``jac_closed_loop`` (largest singular value of one step's Jacobian, empty at
t = Nt), ``log10_growth_physics`` / ``log10_growth_closed_loop`` (running sums of their log10:
an upper bound) and ``log10_sensitivity_physics`` / ``log10_sensitivity_closed_loop`` (log10 of
the largest singular value of the Jacobian product itself: the true growth; results written
before these columns existed draw the bound alone).

The figure ``<experiment>_diagnostics.png/.pdf`` has one row per level, in the order of the
experiment's main figure, and two panels per row for one trained controller (C if there is one,
else R, else another flow; clip NORM, else VALUE, else NONE), at its first and last diagnosed
epoch: (a) the gradient reaching each step under R and M, (b) how much a perturbation of x_0
can grow by step t, through the simulator alone and through the closed loop: the true growth
(thick), and beside it, thin and faded, the bound (the product of the per-step norms).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.lines import Line2D

from bptt_cli.plotting import choose, save_figure
from bptt_cli.plotting.curves import FLOW_COLOURS, level_title, ordered_levels

CONTROLLER_FLOWS = ("C", "R")  # which run's diagnostics to show, in order of preference
GRADIENTS = {
    "grad_norm_R": ("R: full backpropagation", FLOW_COLOURS["R"], 2.4, None),
    # The yellow M line is thinner, on top of R, with a dark outline so that it stays visible on
    # white and where it coincides with R (at epoch 0 with a zeroed last layer).
    "grad_norm_M": ("M: network's input Jacobian cut", FLOW_COLOURS["M"], 1.3, "#7a5c00"),
}
GROWTHS = {  # the true growth, and its bound (a thin, faded line of the same colour)
    "log10_sensitivity_physics": ("simulator alone (∂S/∂x)", "#118ab2", "log10_growth_physics"),
    "log10_sensitivity_closed_loop": (
        "closed loop (∂S/∂x + ∂S/∂u·∂N/∂x)",
        "#6a4c93",
        "log10_growth_closed_loop",
    ),
}
BOUND_STYLE = {"lw": 0.9, "alpha": 0.45}
EPOCH_STYLES = ("--", "-")  # first diagnosed epoch, last diagnosed epoch


def choose_run(rows: pd.DataFrame) -> str:
    """The run id whose diagnostics a row of the figure shows: by :mod:`~bptt_cli.plotting.choose`
    with flows C, then R, preferred (clip NORM, else VALUE, else NONE; then the most epochs and
    seeds)."""
    return choose.best(choose.candidates_of(rows).values(), CONTROLLER_FLOWS).key


def plot_diagnostics(experiment: str, frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``<experiment>_diagnostics.png/.pdf`` in ``out_dir`` from the diagnostics rows of one
    experiment (other experiments' rows in ``frame`` are ignored); [] when there are none."""
    rows = frame[frame["experiment"] == experiment] if "experiment" in frame else frame.iloc[:0]
    if rows.empty:
        return []
    problem = str(rows["problem"].iloc[0])
    level_key = str(rows["level_key"].iloc[0])
    levels = ordered_levels(problem, rows["level"])
    fig, axes = plt.subplots(len(levels), 2, figsize=(12.5, 3.4 * len(levels) + 1.6), squeeze=False)
    n_seeds = 1
    for (grad_ax, growth_ax), level in zip(axes, levels, strict=True):
        level_rows = rows[rows["level"] == level]
        run_id = choose_run(level_rows)
        run = level_rows[level_rows["run_id"] == run_id]
        n_seeds = max(n_seeds, run["seed"].nunique())
        epochs = sorted(int(e) for e in run["epoch"].unique())
        shown = [epochs[0], epochs[-1]] if len(epochs) > 1 else epochs
        styles = dict(zip(shown, EPOCH_STYLES[-len(shown) :], strict=True))
        controller = f"controller trained with {run['flow'].iloc[0]}, clip {run['clip'].iloc[0]}"
        where = level_title(problem, level, level_key)

        for column, (_, colour, width, edge) in GRADIENTS.items():
            effects = [patheffects.Stroke(linewidth=width + 1.4, foreground=edge), patheffects.Normal()]
            for epoch, style in styles.items():
                t, q25, q50, q75 = _quartiles(run[run["epoch"] == epoch], column, positive=True)
                ax_line = grad_ax.plot(t, q50, color=colour, ls=style, lw=width)[0]
                if edge is not None:
                    ax_line.set_path_effects(effects)
                if run["seed"].nunique() > 1:
                    grad_ax.fill_between(t, q25, q75, color=colour, alpha=0.2, lw=0)
        grad_ax.set_yscale("log")
        grad_ax.set_title(f"(a) Feedback along the horizon — {where}\n{controller}", fontsize=10)
        grad_ax.set_xlabel("time step t")
        grad_ax.set_ylabel("|∂L/∂x_t| (gradient reaching step t)")
        grad_ax.grid(True, which="major", alpha=0.3)
        grad_ax.legend(handles=_legend(GRADIENTS, styles, edge=True), fontsize=7, loc="best")

        growth_ax.axhline(0.0, color="0.5", lw=0.8)
        for column, (_, colour, bound) in GROWTHS.items():
            for epoch, style in styles.items():
                at = run[run["epoch"] == epoch]
                t, _, b50, _ = _quartiles(at, bound, positive=False)
                growth_ax.plot(t, b50, color=colour, ls=style, **BOUND_STYLE)
                if column not in at:  # written before the true growth was recorded
                    continue
                t, q25, q50, q75 = _quartiles(at, column, positive=False)
                growth_ax.plot(t, q50, color=colour, ls=style, lw=1.8)
                if run["seed"].nunique() > 1:
                    growth_ax.fill_between(t, q25, q75, color=colour, alpha=0.18, lw=0)
        growth_ax.set_title(f"(b) Growth of a perturbation of x₀ — {where}\n{controller}", fontsize=10)
        growth_ax.set_xlabel("time step t")
        growth_ax.set_ylabel("log10 ‖∂x_t / ∂x_0‖₂")
        growth_ax.grid(True, alpha=0.3)
        handles = _legend(GROWTHS, styles, edge=False)
        handles.insert(
            len(GROWTHS), Line2D([], [], color="0.3", label="bound: Π per-step norms", **BOUND_STYLE)
        )
        growth_ax.legend(handles=handles, fontsize=7, loc="best")

    band = f"median over {n_seeds} seeds, band = interquartile range" if n_seeds > 1 else "one seed"
    fig.suptitle(
        f"Gradient diagnostics ({experiment}): {band}\n"
        "(b) thick: the true growth ‖J_t⋯J_0‖₂; thin and faded: its bound, the product of each step's ‖J‖₂. "
        "The simulator alone near 0 means its own Jacobians are balanced.",
        fontsize=10,
    )
    fig.tight_layout()
    written = save_figure(fig, out_dir, f"{experiment}_diagnostics")
    plt.close(fig)
    return written


def _quartiles(rows: pd.DataFrame, column: str, positive: bool):
    """``t`` and the 25th, 50th and 75th percentiles over seeds of ``column`` at each t (NaN
    where no seed has a finite value; on a log axis also where it is not positive)."""
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(float)
    values = np.where(np.isfinite(values) & ((values > 0) if positive else True), values, np.nan)
    table = (
        pd.DataFrame({"t": rows["t"].to_numpy(), "seed": rows["seed"].to_numpy(), "v": values})
        .pivot_table(index="t", columns="seed", values="v", aggfunc="first", dropna=False)
        .sort_index()
    )
    data = table.to_numpy(float)
    quartiles = np.full((3, len(table)), np.nan)
    finite = np.isfinite(data).any(axis=1)
    if finite.any():
        quartiles[:, finite] = np.nanpercentile(data[finite], [25, 50, 75], axis=1)
    return table.index.to_numpy(), *quartiles


def _legend(series: dict, styles: dict[int, str], edge: bool) -> list[Line2D]:
    handles = []
    for spec in series.values():
        label, colour = spec[0], spec[1]
        line = Line2D([], [], color=colour, lw=2.0, label=label)
        if edge and spec[3] is not None:
            line.set_path_effects(
                [patheffects.Stroke(linewidth=3.4, foreground=spec[3]), patheffects.Normal()]
            )
        handles.append(line)
    for epoch, style in styles.items():
        label = "untrained (epoch 0)" if epoch == 0 else f"after epoch {epoch}"
        handles.append(Line2D([], [], color="0.3", ls=style, lw=1.4, label=label))
    return handles
