"""Run locks: one worker per run, across processes and machines sharing a folder."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path

from bptt_cli.results.files import writing
from bptt_cli.results.read import warn

LOCK_TOOL = "bptt-cli"
# How every lock record starts: a record torn while written (a kill, a full disk) starts so too.
RECORD_START = b'{"tool": "bptt-cli"'


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
        with writing(path):
            return cls._claim(path, run_id)

    @classmethod
    def _claim(cls, path: Path, run_id: str) -> RunLock | None:
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
            torn = _check_lock_text(path, os.pread(fd, 65536, 0))
        except LockError:
            os.close(fd)  # closing drops the flock
            raise
        if torn:
            warn(f"{path}: torn lock record (its worker was killed while writing it); taken over")
        lock = cls(path, fd)
        record = {"tool": LOCK_TOOL, "run_id": run_id, "worker": worker_name(), "since": time.time()}
        data = (json.dumps(record) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError:
            lock.release(done=False)
            raise
        return lock

    def release(self, done: bool) -> None:
        """Drop the claim; ``done`` removes the lock file (the run needs no worker any more)."""
        if self._fd < 0:
            return
        if done:
            with writing(self.path):
                self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1


def _check_lock_text(path: Path, data: bytes) -> bool:
    """Raise ``LockError`` for a lock file that is not ours; True when it holds a torn record of
    ours (NUL bytes a crash left, or a record cut short)."""
    text = data.strip(b"\0 \n\t")
    if not text:
        return bool(data.strip())  # empty: just created (by us or a worker about to write)
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        record = None
        if text.startswith(RECORD_START) or RECORD_START.startswith(text):
            return True
    if not isinstance(record, dict) or record.get("tool") != LOCK_TOOL:
        raise LockError(
            f"lock file {str(path)!r} was not written by bptt-cli; allowed: remove it if no other "
            "program uses it"
        )
    return False


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
