"""The outcome table, one row per configuration (experiment × level × flow × clip, and the
optimizer and precision where runs differ in them), and the paired comparisons of flows seed by
seed (pandas and scipy only, no jax).

A seed flagged diverged counts from then on as the released code would show it: a run that has
died, its loss worse than any (``inf``), never the value its frozen parameters still give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bptt_cli import results
from bptt_cli.core.flow_names import FLOWS, flow_rank
from bptt_cli.core.optim import clip_rank

KEYS = ["experiment", "problem", "level_key", "level", "flow", "clip", "optimizer", "precision"]
LOSSES = ("batch_loss", "train_loss", "test_loss")
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
    "n_final_below",
    "final_below_ci_low",
    "final_below_ci_high",
    "n_diverged",
    "final_gap_median",
]


def summarize(frame: pd.DataFrame, thresholds: dict[str, float | None]) -> pd.DataFrame:
    """Summary of a long results frame.

    Per configuration: the number of seeds; the median and interquartile range over seeds of the
    final test loss; ``best_test_loss``, the median over seeds of each seed's lowest test loss;
    ``first_epoch_below``, the first epoch at which the median test loss over seeds is below the
    definition's threshold (empty when it never is, or there is no threshold); ``n_final_below``,
    how many seeds end below the threshold, with the exact (Clopper-Pearson) 95 % interval of
    that fraction; how many seeds diverged; and, for problems with a known optimum (lqr), the median over seeds of the final
    ``optimality_gap``. ``thresholds`` maps run ids to thresholds.
    """
    frame = as_released(frame)
    rows: list[dict[str, Any]] = []
    for key, group in frame.groupby(KEYS, sort=True):
        last_epoch = group["epoch"].max()
        last = group[group["epoch"] == last_epoch]
        final = last["test_loss"].to_numpy(float)
        alive = group[~group["diverged"].astype(bool)]  # the lowest loss reached before dying
        best = alive.groupby("seed")["test_loss"].min().reindex(group["seed"].unique()).to_numpy(float)
        median_curve = group.groupby("epoch")["test_loss"].median().sort_index()
        threshold = thresholds.get(group["run_id"].iloc[0])
        below = median_curve[median_curve < threshold] if threshold is not None else median_curve.iloc[:0]
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                "n_seeds": group["seed"].nunique(),
                "epochs": int(last_epoch),
                "final_test_median": _percentile(final, 50),
                "final_test_q25": _percentile(final, 25),
                "final_test_q75": _percentile(final, 75),
                "best_test_loss": _percentile(best, 50),
                "threshold": threshold,
                "first_epoch_below": int(below.index[0]) if len(below) else None,
                **_count_below(final, threshold),
                "n_diverged": int(group.groupby("seed")["diverged"].any().sum()),
                "final_gap_median": _nan_stat(np.nanmedian, last["optimality_gap"].to_numpy(float))
                if "optimality_gap" in last
                else float("nan"),
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.sort_values(["experiment", "level", "flow", "clip"], key=_figure_order, ignore_index=True)
    for column in ("first_epoch_below", "n_final_below"):
        table[column] = table[column].astype("Int64")
    return table


def _count_below(final: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """Seeds whose final loss is below ``threshold``, and the exact 95 % interval of the fraction."""
    if threshold is None or not len(final):
        return {
            "n_final_below": None,
            "final_below_ci_low": float("nan"),
            "final_below_ci_high": float("nan"),
        }
    from scipy.stats import binomtest

    k = int(np.sum(final < threshold))
    interval = binomtest(k, len(final)).proportion_ci(confidence_level=0.95, method="exact")
    return {"n_final_below": k, "final_below_ci_low": interval.low, "final_below_ci_high": interval.high}


def as_released(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the columns every table groups by filled in for files of earlier releases
    (``precision``: float32; ``optimizer``: adam) and the losses of diverged epochs set to
    ``inf``: the released code's run died there (a NaN loss), so a diverged seed is never ranked
    by the value its frozen parameters keep giving."""
    frame = frame.copy()
    for column, default in (*results.TRAINED_BY_DEFAULT.items(), ("diverged", False)):
        frame[column] = frame[column].fillna(default) if column in frame else default
    dead = frame["diverged"].astype(bool).to_numpy()
    for column in LOSSES:
        if column in frame:
            frame[column] = frame[column].mask(dead, np.inf)
    return frame


# --- paired comparisons --------------------------------------------------------------------


def _final_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each run's rows at its last epoch, :func:`as_released`."""
    frame = as_released(frame)
    return frame[frame["epoch"] == frame.groupby("run_id")["epoch"].transform("max")]


PAIR_GROUP = ["experiment", "level_key", "level", "clip", "optimizer", "precision"]
PAIRED_COLUMNS = [
    *PAIR_GROUP,
    "flow",
    "against",
    "n_pairs",
    "n_lower",
    "n_ties",
    "median_ratio",
    "p_value",
]
ALPHA = 0.05


def paired(frame: pd.DataFrame) -> pd.DataFrame:
    """Flows compared seed by seed on their final test loss: every flow against R, and a
    combined flow against the flow whose entries it keeps (C against M), per level, clip, optimizer and precision. Every flow of a configuration starts
    from the same data and the same initial weights per seed, so seed s of one flow is paired
    with seed s of the other.

    Per comparison: ``n_pairs`` seeds trained by both, ``n_lower`` of them where ``flow`` ends
    lower, ``n_ties`` where neither does (equal, both diverged), ``median_ratio`` the median
    of the per-seed ratios flow / against (diverged seeds: inf, or left out where both
    diverged) and ``p_value`` the exact two-sided sign test of ``n_lower`` among the untied
    pairs (scipy's binomial test).
    """

    last = _final_rows(frame)
    finals = last.pivot_table(
        index=[*PAIR_GROUP, "seed"], columns="flow", values="test_loss", aggfunc="first"
    )
    rows = []
    for key, table in finals.groupby(level=list(range(len(PAIR_GROUP))), sort=True):
        flows = sorted(table.columns[table.notna().any()], key=flow_rank)
        pairs = [(flow, "R") for flow in flows if flow != "R" and "R" in flows]
        # A combined flow also against the flow whose entries it keeps (C: M).
        kept = {f: FLOWS[f].combines[0] for f in flows if f in FLOWS and FLOWS[f].combines}
        pairs += [(f, a) for f, a in kept.items() if a in flows and a != "R"]
        for flow, against in pairs:
            both = table[[flow, against]].dropna()
            rows.append(
                {
                    **dict(zip(PAIR_GROUP, key, strict=True)),
                    "flow": flow,
                    "against": against,
                    **_sign_test(both[flow].to_numpy(float), both[against].to_numpy(float)),
                }
            )
    table = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    return table.sort_values(["experiment", "level", "flow", "clip"], key=_figure_order, ignore_index=True)


VARIANT_COLUMNS = [
    "experiment",
    "level_key",
    "level",
    "flow",
    "clip",
    "optimizer",
    "precision",
    "n_pairs",
    "n_lower",
    "n_ties",
    "median_ratio",
    "p_value",
    "threshold",
    "n_below",
    "n_below_default",
    "n_changed",
]


def variants(frame: pd.DataFrame, thresholds: dict[str, float | None]) -> pd.DataFrame:
    """Each configuration trained with another optimizer or precision, compared seed by seed
    with the same flow trained the default way (Keras' Adam, float32) on the same seeds.

    Columns as in :func:`paired` (``flow`` of the variant against ``flow`` by default), and where
    the definition has a threshold: ``n_below`` and ``n_below_default``, the paired seeds ending
    below it each way, and ``n_changed``, the seeds that end on the other side of it (in either
    direction): with a landscape of basins, how many seeds the change moved into another basin.
    """

    last = _final_rows(frame)
    config = ["experiment", "level_key", "level", "flow", "clip"]
    finals = last.pivot_table(
        index=[*config, "seed"], columns=["optimizer", "precision"], values="test_loss", aggfunc="first"
    )
    threshold_of = last.groupby([*config, "optimizer", "precision"])["run_id"].first().map(thresholds)
    default = tuple(results.TRAINED_BY_DEFAULT.values())
    rows = []
    for key, table in finals.groupby(level=list(range(len(config))), sort=True):
        if default not in table.columns or table[default].isna().all():
            continue
        for variant in table.columns:
            if variant == default or table[variant].isna().all():
                continue
            both = table[[variant, default]].dropna()
            a, b = both[variant].to_numpy(float), both[default].to_numpy(float)
            threshold = threshold_of.get((*key, *variant))
            counted = threshold is not None and not pd.isna(threshold)
            rows.append(
                {
                    **dict(zip(config, key, strict=True)),
                    **dict(zip(results.TRAINED_BY_DEFAULT, variant, strict=True)),
                    **_sign_test(a, b),
                    "threshold": threshold if counted else float("nan"),
                    "n_below": int(np.sum(a < threshold)) if counted else None,
                    "n_below_default": int(np.sum(b < threshold)) if counted else None,
                    "n_changed": int(np.sum((a < threshold) != (b < threshold))) if counted else None,
                }
            )
    table = pd.DataFrame(rows, columns=VARIANT_COLUMNS)
    for column in ("n_below", "n_below_default", "n_changed"):
        table[column] = table[column].astype("Int64")
    return table.sort_values(["experiment", "level", "flow", "clip"], key=_figure_order, ignore_index=True)


def variants_markdown(table: pd.DataFrame) -> str:
    """The comparisons with the default optimizer and precision as a Markdown table."""
    if table.empty:
        return ""
    header = [
        "experiment",
        "level",
        "flow",
        "clip",
        "trained with",
        "lower in",
        "median ratio",
        "p (sign test)",
        "below threshold",
        "changed side",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        changed = [c for c, d in results.TRAINED_BY_DEFAULT.items() if getattr(row, c) != d]
        counted = not pd.isna(row.n_below)
        cells = [
            row.experiment,
            f"{row.level_key}={row.level}",
            row.flow,
            row.clip,
            ", ".join(str(getattr(row, c)) for c in changed),
            f"{row.n_lower} of {row.n_pairs}" + (f" ({row.n_ties} tied)" if row.n_ties else ""),
            f"{row.median_ratio:.3g}",
            "-" if pd.isna(row.p_value) else f"{row.p_value:.3g}",
            f"{row.n_below} against {row.n_below_default} (< {row.threshold:g})" if counted else "-",
            f"{row.n_changed} of {row.n_pairs}" if counted else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sign_test(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Paired final losses ``a`` against ``b``: pairs, where ``a`` is lower, ties, the median
    per-pair ratio (pairs where both diverged left out) and the exact two-sided sign test of
    the lower count among the untied pairs."""
    from scipy.stats import binomtest

    lower, higher = int(np.sum(a < b)), int(np.sum(a > b))
    with np.errstate(all="ignore"):
        ratios = a / b
    ratios = ratios[~np.isnan(ratios)]
    return {
        "n_pairs": len(a),
        "n_lower": lower,
        "n_ties": len(a) - lower - higher,
        "median_ratio": float(np.median(ratios)) if len(ratios) else float("nan"),
        "p_value": binomtest(lower, lower + higher).pvalue if lower + higher else float("nan"),
    }


def smallest_p(n: int) -> float:
    """The smallest two-sided p-value the sign test can give with ``n`` untied pairs."""
    return min(1.0, 2.0 * 0.5**n) if n else 1.0


def paired_markdown(table: pd.DataFrame) -> str:
    """The paired comparisons as a Markdown table, with a sentence where the seeds are too few
    for any p below 0.05 (fewer than 6 untied pairs)."""
    if table.empty:
        return ""
    variants = [c for c in ("optimizer", "precision") if table[c].nunique() > 1]
    header = [
        "experiment",
        "level",
        "clip",
        *variants,
        "flow vs",
        "lower in",
        "median ratio",
        "p (sign test)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    too_few = False
    for row in table.itertuples(index=False):
        untied = row.n_pairs - row.n_ties
        if smallest_p(untied) >= ALPHA:
            too_few = True
        cells = [
            row.experiment,
            f"{row.level_key}={row.level}",
            row.clip,
            *(str(getattr(row, c)) for c in variants),
            f"{row.flow} vs {row.against}",
            f"{row.n_lower} of {row.n_pairs}" + (f" ({row.n_ties} tied)" if row.n_ties else ""),
            f"{row.median_ratio:.3g}",
            "-" if pd.isna(row.p_value) else f"{row.p_value:.3g}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if too_few:
        text += (
            "\nWith fewer than 6 seeds that differ, no p-value can fall below 0.05 (5 seeds: "
            "at best 0.0625; 3 seeds: 0.25): such comparisons describe these seeds, they decide nothing.\n"
        )
    return text


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


def _percentile(values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile ignoring NaN, where a dead seed (``inf``) counts as the worst:
    a percentile that falls between a finite value and ``inf`` is ``inf``."""
    values = np.asarray(values, float)
    if np.isnan(values).all():
        return float("nan")
    dead = np.isinf(values) & (values > 0)
    if not dead.any():
        return float(np.nanpercentile(values, q))
    top = np.nanmax(np.where(dead, np.nan, values), initial=0.0)
    sentinel = 2.0 * abs(top) + 1.0  # above every finite value; NumPy cannot interpolate to inf
    result = float(np.nanpercentile(np.where(dead, sentinel, values), q))
    return np.inf if result > top else result


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown table a reader can paste into a report (with a gap column when some problem
    has a known optimum)."""
    with_gap = table["final_gap_median"].notna().any()
    variants = [c for c in ("optimizer", "precision") if table[c].nunique() > 1]
    header = [
        "experiment",
        "level",
        "flow",
        "clip",
        *variants,
        "seeds",
        "epochs",
        "final test loss, median [IQR]",
        "best",
        "first epoch < threshold",
        "seeds ending below [95 % CI]",
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
            *(str(getattr(row, c)) for c in variants),
            str(row.n_seeds),
            str(row.epochs),
            f"{row.final_test_median:.4g} [{row.final_test_q25:.4g}, {row.final_test_q75:.4g}]",
            f"{row.best_test_loss:.4g}",
            below,
            "-"
            if no_threshold
            else f"{row.n_final_below} of {row.n_seeds} [{row.final_below_ci_low:.0%}, {row.final_below_ci_high:.0%}]",
            str(row.n_diverged),
        ]
        if with_gap:
            cells.append("-" if pd.isna(row.final_gap_median) else f"{row.final_gap_median:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(frame: pd.DataFrame, metas: dict[str, dict], out_dir: Path) -> list[Path]:
    """Write ``summary.csv``, ``paired.csv``, ``variants.csv`` (where some configuration was
    trained with another optimizer or precision too) and ``summary.md`` (the outcome table, the
    paired comparisons, then the variants against the default) into ``out_dir``; returns their
    paths."""
    thresholds = {run_id: meta.get("config", {}).get("threshold") for run_id, meta in metas.items()}
    table, pairs, others = summarize(frame, thresholds), paired(frame), variants(frame, thresholds)
    csv_path, pairs_path, md_path = out_dir / "summary.csv", out_dir / "paired.csv", out_dir / "summary.md"
    variants_path = out_dir / "variants.csv"
    results.write_csv(csv_path, table)
    results.write_csv(pairs_path, pairs)
    text = to_markdown(table)
    if not pairs.empty:
        text += (
            "\nPaired by seed (final test loss; every flow against R, C against M):\n\n"
            + paired_markdown(pairs)
        )
    written = [csv_path, pairs_path, md_path]
    if not others.empty:
        results.write_csv(variants_path, others)
        written.insert(2, variants_path)
        text += (
            "\nAgainst the default optimizer and precision (Keras' Adam, float32), same flow, "
            "seed by seed (final test loss):\n\n" + variants_markdown(others)
        )
    results.write_atomic(md_path, text.encode())
    return written
