"""Everything that touches result files: layout, atomic writes, resume state, reading back.

Layout under ``<out>/<experiment>/``, per run (one configuration, all its seeds):

- ``<run_id>.csv``: tidy metrics, one row per (seed, epoch), configuration columns first;
- ``<run_id>.json``: the resolved configuration, versions, device and progress;
- ``<run_id>.ckpt.npz``: the training state after the last written epoch (for resume).

A chunk of epochs is committed by writing the CSV, the sidecar and the checkpoint, in that
order, each atomically (temporary file + ``os.replace``). The checkpoint, written last, is the
truth: a run is complete when its checkpoint holds every epoch, and on resume CSV rows beyond
the checkpoint (a kill between the writes) are dropped and recomputed identically.
"""

from __future__ import annotations

import functools
import io
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Configuration columns written in front of the metrics, in this order.
CONFIG_COLUMNS = (
    "experiment",
    "run_id",
    "problem",
    "level_key",
    "level",
    "flow",
    "clip",
    "optimizer",
    "learning_rate",
    "batch_size",
    "n_data",
    "data_seed",
    "seed",
    "epoch",
)
FIGURES_DIR = "figures"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes owner-only files; results are for sharing
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, frame.to_csv(index=False).encode())


@dataclass(frozen=True)
class RunFiles:
    csv: Path
    meta: Path
    checkpoint: Path

    @classmethod
    def of(cls, folder: Path, run_id: str) -> RunFiles:
        return cls(folder / f"{run_id}.csv", folder / f"{run_id}.json", folder / f"{run_id}.ckpt.npz")

    def exist(self) -> bool:
        return self.csv.exists() or self.meta.exists() or self.checkpoint.exists()

    def remove(self) -> None:
        for path in (self.csv, self.meta, self.checkpoint):
            path.unlink(missing_ok=True)


def save_checkpoint(path: Path, leaves: list[np.ndarray], epochs_done: int) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer, epochs_done=np.asarray(epochs_done), **{f"leaf_{i}": leaf for i, leaf in enumerate(leaves)}
    )
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path) -> tuple[list[np.ndarray], int] | None:
    """Leaves and completed epochs, or None when there is no usable checkpoint."""
    try:
        with np.load(path) as data:
            n = sum(1 for key in data.files if key.startswith("leaf_"))
            return [data[f"leaf_{i}"] for i in range(n)], int(data["epochs_done"])
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None


def load_rows(path: Path, epochs_done: int) -> pd.DataFrame | None:
    """The run's CSV rows up to ``epochs_done`` (later rows were not committed)."""
    try:
        frame = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None
    return frame[frame["epoch"] <= epochs_done].reset_index(drop=True)


@functools.cache
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("bptt-cli", "jax", "jaxlib", "optax", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_writable(folder: Path) -> None:
    """Raise ``PermissionError`` unless files can be created in ``folder`` (or, when it does
    not exist yet, in its nearest existing parent). Leaves nothing behind."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise PermissionError(str(probe))
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError:
        raise PermissionError(str(probe)) from None


def read_results(root: Path) -> pd.DataFrame:
    """Every run CSV below ``root`` in one long frame (empty frame when there is none)."""
    # Levels stay text ("2", "0.01"): integer and float levels of different problems would
    # otherwise be merged into one float column.
    frames = [
        pd.read_csv(p, dtype={"level": str}) for p in sorted(root.rglob("*.csv")) if _is_run_csv(p, root)
    ]
    frames = [f for f in frames if "run_id" in f.columns and not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_metas(root: Path) -> dict[str, dict[str, Any]]:
    """Run id -> sidecar JSON for every run below ``root``."""
    metas = {}
    for path in sorted(root.rglob("*.json")):
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(meta, dict) and "run_id" in meta:
            metas[meta["run_id"]] = meta
    return metas


def _is_run_csv(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return FIGURES_DIR not in parts and not path.name.startswith((".", "summary"))
