"""Result files: where they live, how they are written (atomically), what they hold, and what
happens to one found damaged (it is set aside, never deleted)."""

from __future__ import annotations

import functools
import io
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
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
# How a run is trained unless told; also what the files of releases before these columns hold.
TRAINED_BY_DEFAULT = {"optimizer": "adam", "precision": "float32"}
DIAGNOSTIC_CONFIG = ("experiment", "run_id", "problem", "level_key", "level", "flow", "clip")
FIGURES_DIR = "figures"


class DiskError(Exception):
    """A results folder that cannot be written: full, over quota, read-only (one-line message)."""


class DamagedFile(ValueError):
    """A result file that is not what its name says: truncated, torn, another run's (one-line
    reason, without the path)."""


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into a ``DiskError`` naming its folder."""
    try:
        yield
    except OSError as err:
        problem = err.strerror or " ".join(str(err).split())
        raise DiskError(
            f"cannot write to results folder {str(path.parent)!r}: {problem}; what was committed "
            "before is kept: make room (or make the folder writable) and run the same command again"
        ) from None


def write_atomic(path: Path, data: bytes, before_replace: Callable[[], None] | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.
    ``before_replace`` runs once the new content is durable, just before it takes the name."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes owner-only files; results are for sharing
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if before_replace is not None:
                before_replace()
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, frame.to_csv(index=False).encode())


def append_csv(path: Path, frame: pd.DataFrame) -> int:
    """Append ``frame``'s rows (with a header when the file is new) and make them durable before
    returning the file's size. A write that fails (a full disk) is cut back off, so that no torn
    line stays behind."""
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            data = memoryview(frame.to_csv(index=False, header=size == 0).encode())
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)
                if size == 0:
                    path.unlink(missing_ok=True)
                raise
            return size + len(data)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class RunFiles:
    csv: Path
    meta: Path
    checkpoint: Path
    diagnostics: Path
    trajectories: Path
    lock: Path
    previous: Path  # the checkpoint before the last one (resumed from when the last is damaged)

    @classmethod
    def of(cls, folder: Path, run_id: str) -> RunFiles:
        return cls(
            folder / f"{run_id}.csv",
            folder / f"{run_id}.json",
            folder / f"{run_id}.ckpt.npz",
            folder / f"{run_id}.diagnostics.csv",
            folder / f"{run_id}.trajectories.npz",
            folder / f"{run_id}.lock",
            previous_checkpoint(folder / f"{run_id}.ckpt.npz"),
        )

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (self.csv, self.meta, self.checkpoint, self.previous, self.diagnostics, self.trajectories)

    @property
    def published(self) -> tuple[Path, ...]:
        """The gzipped CSVs of a published run (``publish``)."""
        return tuple(path.with_name(path.name + ".gz") for path in (self.csv, self.diagnostics))

    def exist(self) -> bool:
        return any(path.exists() for path in (*self.outputs, *self.published))

    def remove(self) -> None:
        for path in (*self.outputs, *self.published):
            with writing(path):
                path.unlink(missing_ok=True)


def previous_checkpoint(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".ckpt.npz") + ".ckpt.previous.npz")


@dataclass(frozen=True)
class Checkpoint:
    """A run's training state after ``epochs_done`` epochs: ``leaves``, each ``(n_seeds, ...)``;
    ``run_id`` is None in checkpoints of release 0.3.0, which did not name their run."""

    leaves: list[np.ndarray]
    epochs_done: int
    run_id: str | None


def save_checkpoint(
    path: Path, leaves: list[np.ndarray], epochs_done: int, run_id: str | None = None
) -> None:
    """Replace the run's checkpoint; the one it replaces becomes its previous checkpoint."""
    buffer = io.BytesIO()
    named = {} if run_id is None else {"run_id": np.asarray(run_id)}
    np.savez(
        buffer,
        epochs_done=np.asarray(epochs_done),
        **named,
        **{f"leaf_{i}": leaf for i, leaf in enumerate(leaves)},
    )

    def keep_previous() -> None:
        if path.exists():
            os.replace(path, previous_checkpoint(path))

    write_atomic(path, buffer.getvalue(), before_replace=keep_previous)


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at ``path``, read whole (every array's CRC checked). Raises
    ``FileNotFoundError`` without one and ``DamagedFile`` when it is not a whole checkpoint."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:  # np.load leaks a
            arrays = {key: data[key] for key in data.files}  # file it opened when loading fails
    except FileNotFoundError:
        raise
    except Exception as err:  # a damaged zip fails in many ways (BadZipFile, EOFError, zlib.error, ...)
        raise DamagedFile(f"does not load ({reason(err)})") from None
    n = sum(1 for key in arrays if key.startswith("leaf_"))
    epochs = arrays.get("epochs_done")
    if n == 0 or any(f"leaf_{i}" not in arrays for i in range(n)) or epochs is None:
        raise DamagedFile("is not a checkpoint of bptt-run (no epochs_done, or leaves missing)")
    if epochs.shape != () or not np.issubdtype(epochs.dtype, np.integer) or int(epochs) < 1:
        raise DamagedFile(f"states {epochs!r} epochs")
    leaves = [arrays[f"leaf_{i}"] for i in range(n)]
    if any(leaf.ndim == 0 or leaf.shape[0] != leaves[0].shape[0] for leaf in leaves):
        raise DamagedFile("has leaves without a common seed axis")
    run_id = arrays.get("run_id")
    return Checkpoint(leaves, int(epochs), None if run_id is None else str(run_id))


def load_checkpoint(path: Path) -> tuple[list[np.ndarray], int] | None:
    """Leaves and completed epochs, or None when there is no usable checkpoint."""
    try:
        checkpoint = read_checkpoint(path)
    except (FileNotFoundError, DamagedFile):
        return None
    return checkpoint.leaves, checkpoint.epochs_done


def set_aside(path: Path, copy: bool = False) -> Path:
    """Move a damaged file out of the way (or, with ``copy``, copy it, for a file about to be
    rewritten) to ``<name>.damaged-<UTC time>`` beside it, where nothing reads it again."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target, k = path.with_name(f"{path.name}.damaged-{stamp}"), 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{k}")
    with writing(path):
        if copy:
            shutil.copyfile(path, target)
        else:
            os.replace(path, target)
    return target


def reason(err: BaseException) -> str:
    """An exception as a short phrase for a one-line message."""
    text = " ".join(str(err).split())[:100]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


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
