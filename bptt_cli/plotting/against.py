"""A user's runs against published ones (``bptt-plot MINE --against PUBLISHED``).

A configuration is matched on everything that decides its numbers but the seeds: experiment,
level, flow, clip, optimizer and precision. For each configuration of MINE that PUBLISHED also
holds, at the last epoch both reached (MINE may be shorter): the published spread is the
lowest and the highest test loss over the published seeds (a diverged seed counts as ``inf``,
as the summary counts it), and the verdict says whether the median of MINE's seeds lies inside
it, below it or above it. The figure draws every published seed as a thin grey line and MINE's
median with its interquartile band, one panel per (experiment, level).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bptt_cli import summary
from bptt_cli.plotting import save_figure
from bptt_cli.plotting.curves import (
    band,
    flow_colour,
    latest_runs,
    layout_of,
    level_title,
    ordered_levels,
    smooth,
)
from bptt_cli.results import TRAINED_BY_DEFAULT

MATCH = ["experiment", "level_key", "level", "flow", "clip", "optimizer", "precision"]
CURVE = ["flow", "clip", "optimizer", "precision"]  # one curve of yours over the same published runs
COLUMNS = [
    *MATCH,
    "epoch",
    "n_mine",
    "n_published",
    "mine_median",
    "published_low",
    "published_high",
    "verdict",
]


def compare(mine: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of ``mine`` found in ``published`` (long metrics frames)."""
    mine, published = (summary.as_released(latest_runs(f)) for f in (mine, published))
    rows = []
    for key, own in mine.groupby(MATCH, sort=True):
        theirs = published.loc[(published[MATCH] == pd.Series(key, index=MATCH)).all(axis=1)]
        if theirs.empty:
            continue
        epoch = int(min(own["epoch"].max(), theirs["epoch"].max()))
        own_final = own.loc[own["epoch"] == epoch, "test_loss"].to_numpy(float)
        their_final = theirs.loc[theirs["epoch"] == epoch, "test_loss"].to_numpy(float)
        median = summary._percentile(own_final, 50)
        low, high = float(np.nanmin(their_final)), float(np.nanmax(their_final))
        verdict = "inside" if low <= median <= high else ("below" if median < low else "above")
        rows.append(
            {
                **dict(zip(MATCH, key, strict=True)),
                "epoch": epoch,
                "n_mine": len(own_final),
                "n_published": len(their_final),
                "mine_median": median,
                "published_low": low,
                "published_high": high,
                "verdict": verdict,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def describe(table: pd.DataFrame) -> list[str]:
    """One line per compared configuration, for the terminal."""
    return [
        f"{row.experiment} {row.level_key}={row.level} {row.flow} {row.clip}"
        + "".join(
            f" {getattr(row, c)}" for c in TRAINED_BY_DEFAULT if getattr(row, c) != TRAINED_BY_DEFAULT[c]
        )
        + f": at epoch {row.epoch} your median "
        f"{row.mine_median:.4g} ({row.n_mine} seeds) is {row.verdict} the published spread "
        f"[{row.published_low:.4g}, {row.published_high:.4g}] of {row.n_published} seeds"
        for row in table.itertuples(index=False)
    ]


def plot_against(mine: pd.DataFrame, published: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per experiment that both hold, ``against_<experiment>.png/.pdf``: one panel per level."""
    mine, published = (summary.as_released(latest_runs(f)) for f in (mine, published))
    written: list[Path] = []
    for experiment, own in mine.groupby("experiment", sort=True):
        theirs = published[published["experiment"] == experiment]
        if theirs.empty:
            continue
        problem, level_key = str(own["problem"].iloc[0]), str(own["level_key"].iloc[0])
        levels = ordered_levels(problem, own["level"])
        fig, axes = plt.subplots(1, len(levels), figsize=(5.0 * len(levels), 4.0), squeeze=False)
        flows = list(dict.fromkeys(own["flow"]))
        for ax, level in zip(axes.flat, levels, strict=True):
            at_level = own[own["level"] == level]
            for key, curve in at_level.groupby(CURVE, sort=False):
                flow, clip = key[0], key[1]
                colour = flow_colour(flow, flows)
                same = (theirs["level"] == level) & (theirs[CURVE] == pd.Series(key, index=CURVE)).all(axis=1)
                reference = theirs[same]
                label = " ".join(
                    [
                        flow,
                        clip,
                        *(v for c, v in zip(CURVE[2:], key[2:], strict=True) if v != TRAINED_BY_DEFAULT[c]),
                    ]
                )
                for _, seed in reference.groupby(["run_id", "seed"]):
                    seed = seed.sort_values("epoch")
                    ax.plot(
                        seed["epoch"], smooth(seed["test_loss"].to_numpy()), color="0.6", lw=0.6, alpha=0.7
                    )
                epochs, q25, q50, q75 = band(curve, "test_loss")
                ax.plot(epochs, q50, color=colour, lw=1.6, label=f"{label} (yours)")
                if curve["seed"].nunique() > 1:
                    ax.fill_between(epochs, q25, q75, color=colour, alpha=0.25, lw=0)
            ax.set_yscale("log")
            ax.set_title(level_title(problem, level, level_key))
            ax.set_xlabel("epoch")
            ax.set_ylabel(layout_of(problem, level_key)["ylabel"])
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8, frameon=False)
        fig.suptitle(f"{experiment}: your runs (median, interquartile band) over the published seeds (grey)")
        fig.tight_layout()
        written += save_figure(fig, out_dir, f"against_{experiment}")
        plt.close(fig)
    return written
