"""Reading results back: one reader per file kind, each tolerant of a folder being written."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bptt_cli.results.files import FIGURES_DIR


def read_run_csv(path: Path, epochs_done: int | None = None, **kwargs) -> pd.DataFrame:
    """A run CSV as committed: a torn last line (an append cut short) is dropped, and so are
    rows of epochs beyond ``epochs_done`` (appended, but not yet committed by a checkpoint)."""
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    frame = pd.read_csv(io.BytesIO(data), **kwargs)
    if epochs_done is not None and "epoch" in frame.columns:
        frame = frame[frame["epoch"] <= epochs_done].reset_index(drop=True)
    return frame


def load_rows(path: Path, epochs_done: int) -> pd.DataFrame | None:
    """The run's committed CSV rows up to ``epochs_done`` (None when there are none)."""
    try:
        return read_run_csv(path, epochs_done)
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def read_trajectories(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        return data["xs"], data["us"], data["seeds"], json.loads(str(data["meta"]))


def read_results(root: Path, kind: str = "metrics") -> pd.DataFrame:
    """Every run CSV of a kind (``"metrics"`` or ``"diagnostics"``) below ``root`` in one long
    frame (empty frame when there is none). A CSV that cannot be parsed, or is not a run's, is
    skipped with a one-line warning on stderr."""
    root = Path(root)
    metas = read_metas(root)
    frames = []
    for path in sorted(root.rglob("*.csv")):
        if not _is_run_csv(path, root) or path.name.endswith(".diagnostics.csv") != (kind == "diagnostics"):
            continue
        run_id = path.name.removesuffix(".csv").removesuffix(".diagnostics")
        # Levels stay text ("2", "0.01"): integer and float levels of different problems would
        # otherwise be merged into one float column.
        try:
            done = metas.get(run_id, {}).get("epochs_done")
            frame = read_run_csv(path, done, dtype={"level": str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
            warn(f"skipping {path}: not a readable CSV ({' '.join(str(err).split())[:120]})")
            continue
        if "run_id" not in frame.columns or "epoch" not in frame.columns:
            warn(f"skipping {path}: not a bptt-run result (no run_id/epoch columns)")
            continue
        if not frame.empty:
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_metas(root: Path) -> dict[str, dict[str, Any]]:
    """Run id -> sidecar JSON for every run below ``root``."""
    metas = {}
    for path in sorted(Path(root).rglob("*.json")):
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
        if isinstance(meta, dict) and "run_id" in meta:
            metas[meta["run_id"]] = meta
    return metas


def warn(message: str) -> None:
    """One line on stderr, ``warning: ...`` (line breaks in ``message`` become spaces)."""
    print(f"warning: {' '.join(message.splitlines())}", file=sys.stderr)


def _is_run_csv(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return FIGURES_DIR not in parts and not path.name.startswith((".", "summary"))
