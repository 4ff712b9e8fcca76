"""Everything that touches result files: layout, atomic writes, resume state, locks, reading back.

Layout under ``<out>/<experiment>/``, per run (one configuration, all its seeds):

- ``<run_id>.csv``: tidy metrics, one row per (seed, epoch), configuration columns first;
- ``<run_id>.diagnostics.csv``: gradient diagnostics, one row per (seed, diagnosed epoch, t);
- ``<run_id>.json``: the resolved configuration, versions, devices, progress and who trained it;
- ``<run_id>.ckpt.npz``: the training state after the last committed epoch (for resume);
- ``<run_id>.trajectories.npz``: test trajectories of the trained controllers (written last);
- ``<run_id>.lock``: present while a worker trains the run (held with ``flock``).

A chunk of epochs is committed by appending its rows to the CSVs, then replacing the
checkpoint and then the sidecar (an append is one ``write`` followed by ``fsync``; replacements
go through a temporary file and ``os.replace``). The checkpoint is the truth: a run is complete
when its checkpoint holds every epoch, and on resume CSV rows beyond it (a kill between the
writes) are dropped and recomputed identically. The sidecar, written after it, never states
more epochs than the checkpoint holds (a kill between the two leaves it one commit behind, and
the next worker brings it level), so every epoch a sidecar states can be resumed from. Readers drop a torn last line and
the rows beyond the sidecar's ``epochs_done``, so a folder can be plotted while it is being
written. When a run completes, its CSVs are rewritten once in (seed, epoch) order.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import io
import json
import os
import platform
import socket
import sys
import tempfile
import time
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


def read_trajectories(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        return data["xs"], data["us"], data["seeds"], json.loads(str(data["meta"]))


# --- locks: one worker per run ------------------------------------------------------------

LOCK_TOOL = "bptt-cli"


class LockError(Exception):
    """A lock file that is not ours, or a folder where locks do not work (one-line message)."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RunLock:
    """An exclusive claim on a run, held as an ``flock`` on ``<run_id>.lock`` while it trains.

    The kernel drops the lock when its process dies (SIGKILL included), so a run left by a
    killed worker is simply claimed again; the lock file itself stays until the run is done.
    Works across machines where the shared filesystem supports ``flock`` (NFS v4, Lustre with
    ``-o flock``, GPFS, BeeGFS); :func:`probe_locks` refuses folders where it fails.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def claim(cls, path: Path, run_id: str) -> RunLock | None:
        """Take the run's lock, or None when another live worker holds it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except OSError as err:
                os.close(fd)
                raise LockError(f"cannot lock {str(path)!r}: {err.strerror}") from None
            # The holder before us may have finished and removed the file between our open and
            # our flock: then we hold a lock on a file nobody else can see. Start over.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            _check_lock_text(path, os.pread(fd, 65536, 0))
        except LockError:
            os.close(fd)  # closing drops the flock
            raise
        lock = cls(path, fd)
        record = {"tool": LOCK_TOOL, "run_id": run_id, "worker": worker_name(), "since": time.time()}
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return lock

    def release(self, done: bool) -> None:
        """Drop the claim; ``done`` removes the lock file (the run needs no worker any more)."""
        if self._fd < 0:
            return
        if done:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1


def _check_lock_text(path: Path, data: bytes) -> None:
    if not data.strip():
        return  # just created (by us or by a worker that has not written its record yet)
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or record.get("tool") != LOCK_TOOL:
        raise LockError(
            f"lock file {str(path)!r} was not written by bptt-cli; allowed: remove it if no other "
            "program uses it"
        )


def check_lock_file(path: Path) -> None:
    """Raise ``LockError`` if an existing lock file cannot be read or is foreign."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as err:
        raise LockError(f"lock file {str(path)!r} is not readable ({err.strerror})") from None
    _check_lock_text(path, data)


def probe_locks(folder: Path) -> None:
    """Raise ``LockError`` unless ``flock`` works in ``folder`` (or its nearest existing
    parent, when it does not exist yet). Leaves nothing behind."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        with tempfile.TemporaryFile(dir=probe) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise LockError(
                f"results folder {str(folder)!r} is on a filesystem without working file locks "
                f"({err.strerror}); allowed: a local disk or a shared filesystem with flock support"
            ) from None
        raise


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
