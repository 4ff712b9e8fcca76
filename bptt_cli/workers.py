"""Several worker processes on one machine, sharing one grid: the CPU's way to train several
programs at once.

One XLA process with one device per core shards a program's rows over the cores well, but two
programs in one process on disjoint devices barely overlap (XLA's threads spin while they wait
and take each other's cores: measured 1.16x for two programs on two cores). Processes pinned to
disjoint cores do not interfere (2.0x for two). So a grid of several programs is trained by
that many workers, each pinned to its share of the cores (its jax CPU devices are those cores),
all on the same results folder: run locks decide who trains what, exactly as for workers on a
cluster, and each worker starts at another program of the one plan. Results do not depend on
the split: a run computes the same whichever program and process it lands in.

:func:`run_pool` is the pool, callable from Python: each worker is ``python -m
bptt_cli.workers`` handed its :class:`Job` (the plan, the folder, its cores) on stdin, and
leaves its outcome in a file of the pool's. The parent draws progress from the runs' sidecars,
forwards Ctrl-C (workers run in process groups of their own, so that a terminal's Ctrl-C is
delivered once), and the workers die with it if it is killed (Linux: ``PR_SET_PDEATHSIG``).
This module imports no jax; a worker imports it once its cores and devices are set.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from bptt_cli.core.plan import Plan
from bptt_cli.core.spec import RunSpec

_PR_SET_PDEATHSIG = 1
# Exit codes of a worker: 2 when it left a one-line error in its outcome, 130 when interrupted.
ERROR, INTERRUPTED = 2, 130


@dataclass(frozen=True)
class Job:
    """What one worker is given: the plan (starting at its own program), where to write, the
    cores it is pinned to, and where to leave its outcome."""

    plan: Plan
    out: Path
    force: bool
    grouping: str
    cores: tuple[int, ...]
    parent: int
    outcome: Path


@dataclass
class PoolReport:
    """What the workers did together (run ids), how they ended, and the errors they left to
    their parent to say (each once: two workers meeting a full disk say the same)."""

    trained: list[str] = field(default_factory=list)
    found_complete: list[str] = field(default_factory=list)
    left_to_others: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return INTERRUPTED in self.exit_codes

    @property
    def failed(self) -> list[tuple[int, int]]:
        """``(worker, exit code)`` of the workers that neither finished nor were interrupted."""
        return [(k, code) for k, code in enumerate(self.exit_codes, 1) if code not in (0, INTERRUPTED)]


def core_groups(cores: Sequence[int], n_workers: int) -> list[list[int]]:
    """``cores`` split into ``n_workers`` contiguous groups of (nearly) equal size."""
    cores = sorted(cores)
    bounds = [len(cores) * i // n_workers for i in range(n_workers + 1)]
    return [cores[lo:hi] for lo, hi in itertools.pairwise(bounds)]


def run_pool(
    plan: Plan,
    out: Path,
    n_workers: int,
    *,
    force: bool = False,
    grouping: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> PoolReport:
    """Train ``plan`` under ``out`` with ``n_workers`` processes pinned to disjoint cores of this
    one, and merge what they did. ``progress(done, total)`` is called with run-epochs while they
    work (read from the runs' sidecars). The runs found complete are settled by the first."""
    groups = core_groups(list(os.sched_getaffinity(0)), n_workers)
    pool: list[tuple[subprocess.Popen, Path]] = []
    specs = plan.runs
    with tempfile.TemporaryDirectory(prefix="bptt-workers-") as folder, _forwarding(pool):
        for k, cores in enumerate(groups):
            share = plan.rotated(k)
            job = Job(
                plan=share if k == 0 else Plan(share.programs),
                out=Path(out),
                force=force,
                grouping=grouping,
                cores=tuple(cores),
                parent=os.getpid(),
                outcome=Path(folder) / f"worker-{k}.json",
            )
            child = subprocess.Popen(
                [sys.executable, "-m", "bptt_cli.workers"], stdin=subprocess.PIPE, process_group=0
            )
            pool.append((child, job.outcome))
            child.stdin.write(pickle.dumps(job))
            child.stdin.close()
        start = _committed(specs, out)
        total = plan.run_epochs
        while any(child.poll() is None for child, _ in pool):
            if progress is not None:
                now = _committed(specs, out)
                progress(sum((now[s.run_id] - start[s.run_id]) * len(s.seeds) for s in specs), total)
            with suppress(subprocess.TimeoutExpired, StopIteration):
                next(child for child, _ in pool if child.poll() is None).wait(timeout=0.5)
        return _merge(pool, [*plan.complete, *specs])


def _merge(pool, specs: list[RunSpec]) -> PoolReport:
    merged = PoolReport(exit_codes=[child.returncode for child, _ in pool])
    trained, complete = set(), set()
    for _, path in pool:
        try:
            outcome = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a worker that failed before it trained anything
        if "error" in outcome:
            if outcome["error"] not in merged.errors:
                merged.errors.append(outcome["error"])
            continue
        trained |= set(outcome["trained"])
        complete |= set(outcome["found_complete"])
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


# --- a worker -------------------------------------------------------------------------------


def work(job: Job) -> int:
    """Be one of a pool's workers: die with the parent, take the job's cores as this process's
    devices (before jax starts), train the plan, and leave the outcome (or a one-line error
    for the parent to say once) in ``job.outcome``. Returns the exit code."""
    with suppress(OSError, AttributeError):  # Linux only: elsewhere a worker outlives a killed parent
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if job.parent != os.getppid():
        return 1  # the parent died before the line above took effect
    from bptt_cli.core import devices

    rows = max((program.rows for program in job.plan.programs), default=1)
    profile = devices.configure("auto", cores=job.cores, rows=rows).profile(job.grouping)
    from bptt_cli import runner
    from bptt_cli.results import DiskError, LockError

    try:
        report = runner.run(job.plan, job.out, force=job.force, profile=profile)
    except (DiskError, LockError) as err:
        if not _leave(job.outcome, {"error": str(err)}):
            print(f"bptt-run: error: {err}", file=sys.stderr)
        return ERROR
    _leave(
        job.outcome, {name: getattr(report, name) for name in ("trained", "found_complete", "left_to_others")}
    )
    return INTERRUPTED if report.interrupted else 0


def _leave(path: Path, outcome: dict) -> bool:
    """Write a worker's outcome for its parent; False when it cannot be written."""
    try:
        path.write_text(json.dumps(outcome))
    except OSError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(work(pickle.loads(sys.stdin.buffer.read())))
