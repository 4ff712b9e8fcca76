"""Several worker processes on one machine, sharing one grid: the CPU's way to train several
programs at once.

One XLA process with one device per core shards a program's rows over the cores well, but two
programs in one process on disjoint devices barely overlap (XLA's threads spin while they wait
and take each other's cores: measured 1.16x for two programs on two cores). Processes pinned to
disjoint cores do not interfere (2.0x for two). So a grid of several programs is trained by
that many ``bptt-run`` workers, each pinned to its share of the cores (its jax CPU devices are
those cores), all on the same results folder: run locks decide who trains what, exactly as for
workers on a cluster, and each worker starts at another program. Results do not depend on the
split: a run computes the same whichever program and process it lands in.

The parent waits, draws progress from the runs' sidecars, forwards Ctrl-C (workers run in
process groups of their own, so that a terminal's Ctrl-C is delivered once), and the workers
die with it if it is killed (Linux: ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from bptt_cli.core.spec import RunSpec

_PR_SET_PDEATHSIG = 1
CORES_VARIABLE = "BPTT_WORKER_CORES"  # a worker's cores, from its parent
PARENT_VARIABLE = "BPTT_WORKER_PARENT"


@dataclass
class PoolReport:
    """What the workers did together (run ids), how they ended, and the errors they left to
    their parent to print (each once: two workers meeting a full disk say the same)."""

    trained: list[str] = field(default_factory=list)
    found_complete: list[str] = field(default_factory=list)
    left_to_others: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return 130 in self.exit_codes


def core_groups(cores: Sequence[int], n_workers: int) -> list[list[int]]:
    """``cores`` split into ``n_workers`` contiguous groups of (nearly) equal size."""
    cores = sorted(cores)
    bounds = [len(cores) * i // n_workers for i in range(n_workers + 1)]
    return [cores[lo:hi] for lo, hi in itertools.pairwise(bounds)]


def write_report(path: Path, report) -> None:
    """A worker's report (a ``runner.Report``) for its parent."""
    fields = {name: getattr(report, name) for name in ("trained", "found_complete", "left_to_others")}
    path.write_text(json.dumps(fields))


def write_error(path: Path, message: str) -> bool:
    """A worker's one-line error, for its parent to print; False when it cannot be written
    (then the worker prints it)."""
    try:
        path.write_text(json.dumps({"error": message}))
    except OSError:
        return False
    return True


def run_pool(
    args: Sequence[str],
    n_workers: int,
    specs: list[RunSpec],
    out: Path,
    progress: Callable[[int, int], None] | None = None,
) -> PoolReport:
    """Run ``bptt-run args`` as ``n_workers`` processes pinned to disjoint cores of this one,
    and merge their reports. ``progress(done, total)`` is called with run-epochs while they
    work (read from the runs' sidecars)."""
    groups = core_groups(list(os.sched_getaffinity(0)), n_workers)
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}  # each counts its cores
    pool: list[tuple[subprocess.Popen, Path]] = []
    with tempfile.TemporaryDirectory(prefix="bptt-workers-") as folder:
        with _forwarding(pool):
            for k, cores in enumerate(groups):
                report = Path(folder) / f"worker-{k}.json"
                command = [sys.executable, "-c", "from bptt_cli.cli import run_main; run_main()", *args]
                command += ["--worker", f"{k + 1}/{n_workers}", "--worker-report", str(report)]
                cores_env = {CORES_VARIABLE: ",".join(map(str, cores)), PARENT_VARIABLE: str(os.getpid())}
                child = subprocess.Popen(command, env={**env, **cores_env}, process_group=0)
                pool.append((child, report))
            start = _committed(specs, out)
            total = sum((spec.epochs - start[spec.run_id]) * len(spec.seeds) for spec in specs)
            while any(child.poll() is None for child, _ in pool):
                if progress is not None:
                    now = _committed(specs, out)
                    progress(sum((now[s.run_id] - start[s.run_id]) * len(s.seeds) for s in specs), total)
                with suppress(subprocess.TimeoutExpired, StopIteration):
                    next(child for child, _ in pool if child.poll() is None).wait(timeout=0.5)
        return _merge(pool, specs)


def _merge(pool, specs: list[RunSpec]) -> PoolReport:
    merged = PoolReport(exit_codes=[child.returncode for child, _ in pool])
    trained, complete = set(), set()
    for _, path in pool:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a worker that failed before it trained anything
        if "error" in report:
            if report["error"] not in merged.errors:
                merged.errors.append(report["error"])
            continue
        trained |= set(report["trained"])
        complete |= set(report["found_complete"])
    for spec in specs:
        if spec.run_id in trained:
            merged.trained.append(spec.run_id)
        elif spec.run_id in complete:
            merged.found_complete.append(spec.run_id)
        else:
            merged.left_to_others.append(spec.run_id)
    return merged


def _committed(specs: list[RunSpec], out: Path) -> dict[str, int]:
    """Epochs each run's sidecar states (0 without one): cheap enough to poll."""
    done = {}
    for spec in specs:
        try:
            done[spec.run_id] = int(
                json.loads((out / spec.experiment / f"{spec.run_id}.json").read_text())["epochs_done"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            done[spec.run_id] = 0
    return done


def become_worker() -> None:
    """Called first thing in a pool's worker, before jax starts: pin this process to the cores its
    parent gave it (so that it counts them as its devices), and die with the parent."""
    cores = os.environ.get(CORES_VARIABLE)
    if cores:
        os.sched_setaffinity(0, [int(core) for core in cores.split(",")])
    with suppress(OSError, AttributeError):  # Linux only: elsewhere a worker outlives a killed parent
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.environ.get(PARENT_VARIABLE, str(os.getppid())) != str(os.getppid()):
        os._exit(1)  # the parent died before the line above took effect


@contextmanager
def _forwarding(pool) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) to the parent goes to every live worker, once per signal received."""

    def forward(signum, frame) -> None:
        for child, _ in pool:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
