"""The toy figures (paper Figs 1 and 2, docs/model.md §10), drawn from the CSVs of :mod:`bptt_cli.toy`.

Reads ``fig1_fields.csv``, ``fig2_fields.csv`` and ``fig2_paths.csv`` only; never imports jax.
Fields are shown as stream plots of their descent direction (the negated field, the way an
optimizer moves θ) over a background of the field's norm on a log colour scale. The stream lines
follow the *normalized* direction, because the norms span many orders of magnitude and would
otherwise let the largest vectors dominate the interpolation between grid points.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.colors import LogNorm

from bptt_cli.plotting import save_figure

FIG1_TITLES = {
    "R": r"Field of $-R$ (regular BPTT)",
    "M": r"Field of $-M$ (modified: $\partial N/\partial x$ cut)",
}
FIG2_FIELDS = ("divergence", "rotation", "combination")
FIG2_TITLES = {
    "divergence": "Divergence (the gradient)",
    "rotation": "+ Rotation",
    "combination": "Combination (C rule)",
}
# The gradient plays R's role, the rotated field M's and the combination C's (docs/model.md §8 colours).
FIG2_COLOURS = {"divergence": "#ef476f", "rotation": "#ffd166", "combination": "#06d6a0"}
THETA1, THETA2 = r"$\theta_1$", r"$\theta_2$"


def plot(toy_dir: Path, out_dir: Path) -> list[Path]:
    """Draw ``toy_fig1`` and ``toy_fig2`` (PNG and PDF) into ``out_dir`` from the CSVs in ``toy_dir``.

    A figure whose CSVs are missing is skipped; returns the paths written ([] when none).
    """
    toy_dir, out_dir = Path(toy_dir), Path(out_dir)
    written: list[Path] = []
    fig1_csv = toy_dir / "fig1_fields.csv"
    if fig1_csv.exists():
        written += plot_fig1(pd.read_csv(fig1_csv), out_dir)
    fig2_csvs = (toy_dir / "fig2_fields.csv", toy_dir / "fig2_paths.csv")
    if all(path.exists() for path in fig2_csvs):
        written += plot_fig2(pd.read_csv(fig2_csvs[0]), pd.read_csv(fig2_csvs[1]), out_dir)
    return written


def plot_fig1(fields: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Three panels: the loss landscape, the field of −R and the field of −M."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.0))
    first = fields[fields["field"] == fields["field"].iloc[0]]
    t1, t2, loss = _pivot(first, "loss")
    ax = axes[0]
    mesh = ax.pcolormesh(t1, t2, loss, norm=_log_norm(loss), cmap="viridis", shading="auto", rasterized=True)
    levels = 10.0 ** np.arange(-2, 15, 2)
    ax.contour(t1, t2, loss, levels=levels, colors="white", linewidths=0.5, alpha=0.6)
    fig.colorbar(mesh, ax=ax, label=r"loss $L$ (log scale)")
    ax.set_title(r"Loss landscape $L = \frac{1}{2}(x_4 - 2)^2$")
    for ax, flow in zip(axes[1:], ("R", "M"), strict=True):
        rows = fields[fields["field"] == flow]
        _stream_panel(fig, ax, rows, label=f"$|{flow}|$ (log scale)", line_colour="white", cmap="viridis")
        ax.set_title(FIG1_TITLES[flow])
    for ax in axes:
        _square(ax, first)
    fig.suptitle(
        r"Toy problem (paper Fig. 1): $N(x;\theta) = \theta_1 x^2 + \theta_2 x$, $S(x, c) = x + c$, "
        r"4 steps from $x_0 = -0.3$ towards 2"
    )
    fig.tight_layout()
    written = save_figure(fig, out_dir, "toy_fig1")
    plt.close(fig)
    return written


def plot_fig2(fields: pd.DataFrame, paths: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Three stream plots with the Adam path on top, and the three loss curves."""
    fig, axes = plt.subplots(1, 4, figsize=(21, 5.0))
    for ax, name in zip(axes[:3], FIG2_FIELDS, strict=True):
        rows = fields[fields["field"] == name]
        _stream_panel(fig, ax, rows, label="|field| (log scale)", line_colour="#4a4a4a", cmap="Blues")
        path = paths[paths["field"] == name].sort_values("step")
        outline = [patheffects.Stroke(linewidth=3.6, foreground="black"), patheffects.Normal()]
        ax.plot(path["theta1"], path["theta2"], color=FIG2_COLOURS[name], lw=2.0, path_effects=outline)
        for row, marker, size, label in ((0, "*", 15, "start"), (-1, "o", 7, "end")):
            point = path[["theta1", "theta2"]].iloc[row]
            ax.plot(*point, marker=marker, ms=size, color=FIG2_COLOURS[name], mec="black", label=label)
        ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
        ax.set_title(FIG2_TITLES[name])
        _square(ax, rows)
    ax = axes[3]
    for name in FIG2_FIELDS:
        path = paths[paths["field"] == name].sort_values("step")
        ax.plot(path["step"], path["loss"], color=FIG2_COLOURS[name], lw=1.8, label=FIG2_TITLES[name])
    ax.set_yscale("log")
    ax.set_xlabel("Adam step")
    ax.set_ylabel(r"loss $L = \theta_1^2 + \theta_2^2$")
    ax.set_title("Loss along each path")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=9)
    fig.suptitle(
        r"Adam (lr 0.1) on $L = \theta_1^2 + \theta_2^2$ from (2, 4), driven by each field "
        "instead of the gradient (paper Fig. 2)"
    )
    fig.tight_layout()
    written = save_figure(fig, out_dir, "toy_fig2")
    plt.close(fig)
    return written


def _pivot(rows: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D axes ``theta1 (n1,)``, ``theta2 (n2,)`` and ``values (n2, n1)`` of one field's column."""
    table = rows.pivot_table(index="theta2", columns="theta1", values=column, aggfunc="first")
    table = table.sort_index().sort_index(axis=1)
    return table.columns.to_numpy(float), table.index.to_numpy(float), table.to_numpy(float)


def _log_norm(values: np.ndarray) -> LogNorm:
    """A log colour scale over the positive finite ``values`` (zeros show as the 'bad' colour)."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return LogNorm(1e-3, 1.0)
    lo, hi = float(positive.min()), float(positive.max())
    return LogNorm(lo, hi if hi > lo else lo * 10.0)


def _stream_panel(fig, ax, rows: pd.DataFrame, label: str, line_colour: str, cmap: str) -> None:
    """Background |field| (log colour) and stream lines of the normalized descent direction."""
    t1, t2, d1 = _pivot(rows, "descent_theta1")
    _, _, d2 = _pivot(rows, "descent_theta2")
    norm = np.hypot(d1, d2)
    colour_map = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
    mesh = ax.pcolormesh(
        t1,
        t2,
        np.ma.masked_less_equal(norm, 0.0),
        norm=_log_norm(norm),
        cmap=colour_map,
        shading="auto",
        rasterized=True,
    )
    fig.colorbar(mesh, ax=ax, label=label)
    scale = np.where(norm > 0, norm, 1.0)
    ax.streamplot(
        t1, t2, d1 / scale, d2 / scale, color=line_colour, density=1.2, linewidth=0.7, arrowsize=0.9
    )


def _square(ax, rows: pd.DataFrame) -> None:
    ax.set_xlim(rows["theta1"].min(), rows["theta1"].max())
    ax.set_ylim(rows["theta2"].min(), rows["theta2"].max())
    ax.set_aspect("equal")
    ax.set_xlabel(THETA1)
    ax.set_ylabel(THETA2)
