"""Result files: where they live, how they are written (atomically), what they hold."""

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
RUN_CONFIG = CONFIG_COLUMNS[:-2]  # the run's own columns, before seed and epoch
DIAGNOSTIC_CONFIG = ("experiment", "run_id", "problem", "level_key", "level", "flow", "clip")
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


def append_csv(path: Path, frame: pd.DataFrame) -> int:
    """Append ``frame``'s rows (with a header when the file is new) in one write; returns the
    file's size after the write."""
    new = not path.exists() or path.stat().st_size == 0
    data = frame.to_csv(index=False, header=new).encode()
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


@dataclass(frozen=True)
class RunFiles:
    csv: Path
    meta: Path
    checkpoint: Path
    diagnostics: Path
    trajectories: Path
    lock: Path

    @classmethod
    def of(cls, folder: Path, run_id: str) -> RunFiles:
        return cls(
            folder / f"{run_id}.csv",
            folder / f"{run_id}.json",
            folder / f"{run_id}.ckpt.npz",
            folder / f"{run_id}.diagnostics.csv",
            folder / f"{run_id}.trajectories.npz",
            folder / f"{run_id}.lock",
        )

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (self.csv, self.meta, self.checkpoint, self.diagnostics, self.trajectories)

    def exist(self) -> bool:
        return any(path.exists() for path in self.outputs)

    def remove(self) -> None:
        for path in self.outputs:
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


def write_trajectories(path: Path, xs: np.ndarray, us: np.ndarray, seeds, meta: dict[str, Any]) -> None:
    """``xs (n_seeds, n_traj, Nt+1, *state)``, ``us (n_seeds, n_traj, Nt, *control)`` and a
    JSON ``meta`` (run id, problem, level, flow, clip, drawing reference)."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        xs=np.asarray(xs, np.float32),
        us=np.asarray(us, np.float32),
        seeds=np.asarray(seeds),
        meta=np.asarray(json.dumps(meta, default=str)),
    )
    write_atomic(path, buffer.getvalue())


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
