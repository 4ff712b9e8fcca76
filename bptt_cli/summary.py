"""The outcome table: one row per experiment × level × flow × clip (pandas only, no jax)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bptt_cli import results
from bptt_cli.core.flow_names import flow_rank
from bptt_cli.core.optim import clip_rank

KEYS = ["experiment", "problem", "level_key", "level", "flow", "clip"]
COLUMNS = [
    *KEYS,
    "n_seeds",
    "epochs",
    "final_test_median",
    "final_test_q25",
    "final_test_q75",
    "best_test_loss",
    "threshold",
    "first_epoch_below",
    "n_diverged",
    "final_gap_median",
]


def summarize(frame: pd.DataFrame, thresholds: dict[str, float | None]) -> pd.DataFrame:
    """Summary of a long results frame.

    Per configuration: the number of seeds; the median and interquartile range over seeds of the
    final test loss; ``best_test_loss``, the median over seeds of each seed's lowest test loss;
    ``first_epoch_below``, the first epoch at which the median test loss over seeds is below the
    definition's threshold (empty when it never is, or there is no threshold); how many seeds
    diverged; and, for problems with a known optimum (lqr), the median over seeds of the final
    ``optimality_gap``. ``thresholds`` maps run ids to thresholds.
    """
    rows: list[dict[str, Any]] = []
    for key, group in frame.groupby(KEYS, sort=True):
        last_epoch = group["epoch"].max()
        last = group[group["epoch"] == last_epoch]
        final = last["test_loss"].to_numpy(float)
        best = group.groupby("seed")["test_loss"].min().to_numpy(float)
        median_curve = group.groupby("epoch")["test_loss"].median().sort_index()
        threshold = thresholds.get(group["run_id"].iloc[0])
        below = median_curve[median_curve < threshold] if threshold is not None else median_curve.iloc[:0]
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                "n_seeds": group["seed"].nunique(),
                "epochs": int(last_epoch),
                "final_test_median": _nan_stat(np.nanmedian, final),
                "final_test_q25": _nan_stat(lambda a: np.nanpercentile(a, 25), final),
                "final_test_q75": _nan_stat(lambda a: np.nanpercentile(a, 75), final),
                "best_test_loss": _nan_stat(np.nanmedian, best),
                "threshold": threshold,
                "first_epoch_below": int(below.index[0]) if len(below) else None,
                "n_diverged": int(group.groupby("seed")["diverged"].any().sum()),
                "final_gap_median": _nan_stat(np.nanmedian, last["optimality_gap"].to_numpy(float))
                if "optimality_gap" in last
                else float("nan"),
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.sort_values(["experiment", "level", "flow", "clip"], key=_figure_order, ignore_index=True)
    table["first_epoch_below"] = table["first_epoch_below"].astype("Int64")
    return table


def _figure_order(column: pd.Series) -> pd.Series:
    """Sort key: levels by value, flows in the figures' order (R, M, C, S, then T<k> by k), clips
    in the order runs are preferred for drawing (NORM, VALUE, NONE: ``optim.CLIP_PREFERENCE``)."""
    if column.name == "level":
        return pd.to_numeric(column, errors="coerce")
    rank = {"flow": flow_rank, "clip": clip_rank}.get(str(column.name))
    if rank is None:
        return column
    position = {value: i for i, value in enumerate(sorted(column.unique(), key=rank))}
    return column.map(position)


def _nan_stat(fn, values: np.ndarray) -> float:
    return float(fn(values)) if np.isfinite(values).any() else float("nan")


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown table a reader can paste into a report (with a gap column when some problem
    has a known optimum)."""
    with_gap = table["final_gap_median"].notna().any()
    header = [
        "experiment",
        "level",
        "flow",
        "clip",
        "seeds",
        "epochs",
        "final test loss, median [IQR]",
        "best",
        "first epoch < threshold",
        "diverged",
        *(["gap to optimum"] if with_gap else []),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        below = "never" if pd.isna(row.first_epoch_below) else str(row.first_epoch_below)
        no_threshold = row.threshold is None or pd.isna(row.threshold)
        below = "-" if no_threshold else f"{below} (< {row.threshold:g})"
        cells = [
            row.experiment,
            f"{row.level_key}={row.level}",
            row.flow,
            row.clip,
            str(row.n_seeds),
            str(row.epochs),
            f"{row.final_test_median:.4g} [{row.final_test_q25:.4g}, {row.final_test_q75:.4g}]",
            f"{row.best_test_loss:.4g}",
            below,
            str(row.n_diverged),
        ]
        if with_gap:
            cells.append("-" if pd.isna(row.final_gap_median) else f"{row.final_gap_median:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(frame: pd.DataFrame, metas: dict[str, dict], out_dir: Path) -> list[Path]:
    """Write ``summary.csv`` and ``summary.md`` into ``out_dir``; returns their paths."""
    thresholds = {run_id: meta.get("config", {}).get("threshold") for run_id, meta in metas.items()}
    table = summarize(frame, thresholds)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    results.write_csv(csv_path, table)
    results.write_atomic(md_path, to_markdown(table).encode())
    return [csv_path, md_path]
