"""Wall-time estimates for a plan, from the figures ``make bench`` stored for this machine.

``bench/bench.py`` measures seconds per epoch of one program at several row counts, per
problem and per number of backward passes (``Program.passes``: two for a combined flow such
as C, and in a paired program), and saves them under ``$BPTT_CACHE_DIR`` (default
``~/.cache/bptt-cli``) keyed by a fingerprint of the machine. ``bptt-run --dry-run`` reads
them back: a program's time is its compile time plus its epochs times the seconds per epoch at
its row count (interpolated linearly between measured row counts), scaled by its number of
minibatches per epoch. The figures are for one device; a program whose rows are sharded over
devices is timed at its load per core (``devices.rows_per_core``), and W worker processes
share the programs (the wall time is about the programs' sum over W, at least the longest one).
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np

from bptt_cli.results import write_json


def cache_dir() -> Path:
    base = os.environ.get("BPTT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bptt-cli"
    )
    return Path(base)


def fingerprint() -> str:
    """The machine as far as speed goes: jax's device kind and the CPU (figures are per device,
    whatever the device count of the process that reads them)."""
    import jax

    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{device.platform} {device.device_kind} | {cpu} x{os.cpu_count()}"


def _path() -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", fingerprint()).strip("-").lower()
    return cache_dir() / f"bench-{slug}.json"


def save(entries: list[dict[str, Any]], jax_version: str) -> Path:
    """Store bench entries for this machine (replacing those of the same problem and kind)."""
    path = _path()
    keep = [
        e
        for e in load()
        if (e["problem"], e["gradients"]) not in {(n["problem"], n["gradients"]) for n in entries}
    ]
    write_json(path, {"fingerprint": fingerprint(), "jax": jax_version, "entries": keep + entries})
    return path


def load() -> list[dict[str, Any]]:
    """This machine's bench entries (empty when ``make bench`` has not run here)."""
    try:
        return list(json.loads(_path().read_text())["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def save_launch_seconds(seconds: float) -> Path:
    """Store this GPU's measured wall seconds per kernel launch (``make bench`` section 9)."""
    path = _path()
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {"fingerprint": fingerprint(), "entries": []}
    write_json(path, {**stored, "launch_seconds": seconds})
    return path


def measured_launch_seconds(device_kind: str) -> float | None:
    """Seconds per kernel launch that ``make bench`` measured on a GPU of this kind on this
    machine (any bench file whose fingerprint names it), or None."""
    for path in sorted(cache_dir().glob("bench-gpu-*.json")):
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if device_kind in str(stored.get("fingerprint", "")) and "launch_seconds" in stored:
            return float(stored["launch_seconds"])
    return None


def _interpolate(points: list[tuple[int, float]], rows: int) -> float:
    """Seconds at ``rows``: linear between measured row counts, flat below the smallest, and
    extended along the last segment (proportionally, with one point) above the largest."""
    at, seconds = (np.asarray(v, float) for v in zip(*sorted(points), strict=True))
    if len(at) == 1:
        return float(seconds[0] * max(1.0, rows / at[0]))
    if rows <= at[-1]:
        return float(np.interp(rows, at, seconds))
    return float(seconds[-1] + (seconds[-1] - seconds[-2]) / (at[-1] - at[-2]) * (rows - at[-1]))


def program_seconds(
    program, entries: list[dict[str, Any]], rows_per_core: float | None = None
) -> float | None:
    """Estimated wall time of a ``plan.Program`` whose load is ``rows_per_core`` (default: all
    its rows on one core), None without matching bench figures."""
    matching = [e for e in entries if e["problem"] == program.problem and e["gradients"] == program.passes]
    if not matching:
        return None
    batches = program.n_data / program.batch_size
    points = [(e["rows"], e["epoch_seconds"] * batches / (e["n_data"] / e["batch_size"])) for e in matching]
    compile_seconds = max(e["compile_seconds"] for e in matching)
    load = program.rows if rows_per_core is None else rows_per_core
    return compile_seconds + (program.epochs - program.start_epoch) * _interpolate(points, load)


def plan_seconds(seconds: list[float], workers: int = 1) -> float:
    """Wall time of programs taking ``seconds`` each, shared by ``workers`` processes."""
    return max(sum(seconds) / workers, max(seconds, default=0.0))


def fmt(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
