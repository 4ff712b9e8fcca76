"""Train a list of ``RunSpec``s: claim -> build -> execute -> commit.

The runs still to train are grouped into programs (``core.plan``). Each program's runs are
claimed with lock files (so that several workers can share one grid and one results folder),
built on the process's devices (``build``), executed as a stream of chunks (``execute``) and
every chunk is committed to the runs' files (``results``) as it lands, so a kill loses at
most the chunks in flight and a rerun resumes exactly where the checkpoints end. A claimed
run's files are validated first (``results.inspect_run``; a checkpoint also against the
training state of the program it resumes in): damaged ones are set aside and the run resumes
from what its files prove, or restarts. A program's rows are sharded over every device of the
process; to train several programs at once on a machine, several processes share the grid
(``bptt_cli.workers``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import numpy as np

from bptt_cli import problems, results
from bptt_cli.core import devices
from bptt_cli.core.plan import MAX_CHUNK, Chunk, Plan, Program, plan
from bptt_cli.core.spec import RunSpec
from bptt_cli.runner.build import Built, ProgramCache, build, numerics, prepare
from bptt_cli.runner.execute import execute

__all__ = [
    "Built",
    "Plan",
    "ProgramCache",
    "Progress",
    "Report",
    "build",
    "execute",
    "group",
    "pending_work",
    "plan_runs",
    "run",
]


@dataclass
class Report:
    """What a call of ``run`` did."""

    trained: list[str] = field(default_factory=list)
    found_complete: list[str] = field(default_factory=list)
    left_to_others: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    programs: list[str] = field(default_factory=list)
    compile_seconds: dict[str, float] = field(default_factory=dict)
    host_seconds: float = 0.0  # committing results, beside the compiled chunks
    wall_seconds: float = 0.0
    interrupted: bool = False


@dataclass(frozen=True)
class Progress:
    """What ``run`` tells its progress callback, after every change.

    Attributes:
      done, total: run-epochs accounted for (trained, or left to other workers) and to do.
      runs_done, runs_total: runs trained to the end, and runs to train in this call.
      status: what is happening (``"cartpole: compiling"``, ``"cartpole"``).
      test_loss: the median test loss of the latest chunk, or None.
      line: a line worth printing (a program finished), or None.
    """

    done: int
    total: int
    runs_done: int
    runs_total: int
    status: str
    test_loss: float | None = None
    line: str | None = None


ProgressFn = Callable[[Progress], None]


def pending_work(specs: list[RunSpec], out: Path, force: bool = False) -> list[tuple[RunSpec, int]]:
    """The runs still to train with the epoch each resumes from, and complete runs with a file
    to repair (an unlocked look, which changes nothing: workers check again after claiming)."""
    work = []
    for spec in specs:
        state = None if force else results.inspect_run(spec, out / spec.experiment)
        if state is None or not state.complete or state.damage:
            work.append((spec, 0 if state is None else state.start))
    return work


def group(work: list[tuple[RunSpec, int]], profile: devices.Profile) -> list[Program]:
    """The one place runs are grouped into programs (``core.plan.plan`` on the problem registry).

    :func:`plan_runs` calls it once for a grid's plan. A worker calls it again on what it has
    just claimed, for two reasons the plan could not know: another worker may have moved a
    claimed run on since the plan was made (it resumes at another epoch, or is complete), and
    a claimed run's checkpoint is checked against the training state of the program it resumes
    in, which takes the resumed runs grouped alone."""
    return plan(work, profile, problems.get)


def plan_runs(specs: list[RunSpec], out: Path, profile: devices.Profile, force: bool = False) -> Plan:
    """The plan of ``specs`` under ``out``: the programs still to train (every run with
    ``force``), and the runs found complete."""
    work = pending_work(specs, out, force)
    waiting = {spec.run_id for spec, _ in work}
    return Plan(tuple(group(work, profile)), tuple(s for s in specs if s.run_id not in waiting))


def run(
    grid: list[RunSpec] | Plan,
    out: Path,
    force: bool = False,
    profile: devices.Profile | None = None,
    progress: ProgressFn | None = None,
    cache: ProgramCache | None = None,
) -> Report:
    """Train every run of ``grid`` (runs, or their plan from :func:`plan_runs` with the same
    ``force`` and profile) under ``out`` that no other worker is training: skip finished ones
    (unless ``force``), resume interrupted ones, leave locked ones to their workers."""
    profile = profile or devices.current()
    started = time.perf_counter()
    report = Report()
    the_plan = grid if isinstance(grid, Plan) else plan_runs(grid, out, profile, force)
    for spec in [*the_plan.complete, *the_plan.runs]:  # refuse foreign or unreadable lock files first
        results.check_lock_file(results.RunFiles.of(out / spec.experiment, spec.run_id).lock)
    for spec in the_plan.complete:
        results.settle_finished(spec, out)
        report.found_complete.append(spec.run_id)
    if the_plan.programs:
        session = _Session(out, profile, report, cache or ProgramCache(), force, progress, the_plan)
        with _interrupt() as interrupt:  # numeric settings: build.numerics, per program
            session.train(list(the_plan.programs), interrupt)
    report.wall_seconds = time.perf_counter() - started
    return report


@dataclass
class _Job:
    """A program being trained."""

    built: Built
    chunks: Iterator[Chunk]
    writer: results.ProgramWriter
    started: float
    test_loss: float = float("nan")


class _Session:
    """One ``run`` call: claims, progress."""

    def __init__(self, out, profile, report, cache, force, progress, the_plan: Plan) -> None:
        self.out, self.profile, self.report, self.cache, self.force = out, profile, report, cache, force
        self.progress = progress
        self.total = the_plan.run_epochs
        self.runs_total = len(the_plan.runs)
        self.done = 0
        self.started = time.time()  # --force recomputes only results older than this
        self.locks: dict[str, results.RunLock] = {}

    def train(self, programs: list[Program], interrupt: _Interrupt) -> None:
        """Claim and train ``programs`` one after another, each on every device."""
        try:
            for program in programs:
                for part in self._claim(program):
                    with numerics(self.profile, part.precision):
                        job = self._start(part, interrupt)
                        for chunk in job.chunks:
                            self._commit(job, chunk)
                    self._finish(job)
                    if interrupt.requested:
                        self.report.interrupted = True
                        return
        finally:
            for lock in self.locks.values():
                lock.release(done=False)  # those of finished runs are released already

    def _claim(self, program: Program) -> list[Program]:
        """Claim the program's runs and bring their files to what they prove (damaged ones set
        aside); the claimed ones grouped again by where each actually resumes (another worker
        may have moved them on since we looked)."""
        claimed: dict[str, tuple[RunSpec, results.RunState]] = {}
        for spec in program.runs:
            files = results.RunFiles.of(self.out / spec.experiment, spec.run_id)
            lock = results.RunLock.claim(files.lock, spec.run_id)
            if lock is None:
                self.report.left_to_others.append(spec.run_id)
                self.done += (spec.epochs - program.start_epoch) * len(spec.seeds)
                self._tell(program.problem)
                continue
            self.locks[spec.run_id] = lock
            if self.force and results.written_before(spec, self.out, self.started):
                files.remove()
            claimed[spec.run_id] = (spec, results.inspect_run(spec, self.out / spec.experiment))
        self._fit_checkpoints(claimed)
        work = []
        for spec, state in claimed.values():
            files = results.RunFiles.of(self.out / spec.experiment, spec.run_id)
            results.repair(spec, self.out / spec.experiment, state)
            if state.complete:  # finished by another worker since we looked (or only repaired)
                results.settle_finished(spec, self.out)
                self.report.found_complete.append(spec.run_id)
                self.locks.pop(spec.run_id).release(done=True)
                continue
            if state.start > 0:
                self.report.resumed.append(spec.run_id)
            elif files.exist():
                files.remove()  # started, but no epoch committed: nothing to keep
            work.append((spec, state.start))
        return group(work, self.profile)

    def _fit_checkpoints(self, claimed: dict[str, tuple[RunSpec, results.RunState]]) -> None:
        """Check each checkpoint resumed from against the training state of the program it
        resumes in (its arrays and their shapes): one that does not fit (a damaged file, or
        another version's) counts as damaged, and its run resumes from what is left."""
        while True:
            work = [(spec, state.start) for spec, state in claimed.values() if not state.complete]
            changed = False
            for part in group([(spec, start) for spec, start in work if start > 0], self.profile):
                fits = partial(_fits, self._state_shapes(part))
                for spec in part.runs:
                    state = results.inspect_run(spec, self.out / spec.experiment, fits)
                    changed |= state.start != claimed[spec.run_id][1].start
                    claimed[spec.run_id] = (spec, state)
            if not changed:
                return

    def _state_shapes(self, program: Program) -> list[tuple[int, ...]]:
        """The shapes of one row's training-state leaves in ``program`` (traced, not computed)."""
        with numerics(self.profile, program.precision):
            prepared = prepare(program, self.profile, 1, self.cache)
            state = jax.eval_shape(prepared.init, prepared.hypers)
        return [tuple(leaf.shape[1:]) for leaf in jax.tree.leaves(state)]

    def _start(self, program: Program, interrupt: _Interrupt) -> _Job:
        """Build the program and open its runs' files."""
        self.report.programs.append(program.describe())
        self._tell(f"{program.problem}: compiling")
        saved = results.saved_states(list(program.runs), self.out) if program.start_epoch else {}
        built = build(program, self.profile, self.cache, saved)
        self.report.compile_seconds.update({spec.run_id: built.compile_seconds for spec in program.runs})
        record = results.ProgramRecord(
            slices=built.layout.slices,
            start_epoch=program.start_epoch,
            n_steps=built.n_steps,
            sidecar=self._sidecar(built),
            optima=built.optima,
            drawing=built.drawing,
            state_shapes=built.state_shapes,
        )
        locks = {spec.run_id: self.locks[spec.run_id] for spec in program.runs}
        writer = results.ProgramWriter(self.out, list(program.runs), record, locks)
        chunks = execute(built, stop=lambda: interrupt.requested, cap=_chunk_cap())
        return _Job(built, chunks, writer, time.time())

    def _sidecar(self, built: Built) -> dict:
        """What every run's sidecar records about the program and its devices."""
        program = built.program
        return {
            "devices": [str(d) for d in built.devices],
            "program": {
                "rows": built.layout.n_real,
                "runs": len(program.runs),
                "flows": "per run" if program.flow is None else program.flow,
                "padded_to": program.level if program.levels_padded else None,
                "grouping": "wide" if self.profile.merge_flows else "narrow",
                "unroll": self.profile.unroll,
                "matmul_precision": self.profile.matmul_precision,
                "precision": program.precision,
            },
            "compile_seconds": round(built.compile_seconds, 3),
        }

    def _commit(self, job: _Job, chunk: Chunk) -> None:
        t0 = time.perf_counter()
        job.writer.commit(chunk)
        self.report.host_seconds += time.perf_counter() - t0
        rows = job.built.layout.n_real
        job.test_loss = float(np.nanmedian(chunk.metrics["test_loss"][:rows, chunk.n - 1]))
        self.done += chunk.n * rows
        self._tell(job.built.program.problem, job.test_loss)

    def _finish(self, job: _Job) -> None:
        program = job.built.program
        if job.writer.epochs_done < program.epochs:  # stopped early: interrupted
            return
        self.report.trained.extend(spec.run_id for spec in program.runs)
        self._tell(
            program.problem,
            job.test_loss,
            f"{program.describe()}: trained in {time.time() - job.started:.0f} s "
            f"(trace {job.built.trace_seconds:.1f} s, compile {job.built.compile_seconds:.1f} s), "
            f"median final test loss {job.test_loss:.4g}",
        )

    def _tell(self, status: str, test_loss: float | None = None, line: str | None = None) -> None:
        if self.progress is not None:
            runs_done = len(self.report.trained)
            self.progress(
                Progress(self.done, self.total, runs_done, self.runs_total, status, test_loss, line)
            )


def _fits(shapes: list[tuple[int, ...]], leaves: list[np.ndarray]) -> str | None:
    """Why a checkpoint's ``leaves`` cannot be the training state whose rows have ``shapes``."""
    if len(leaves) != len(shapes):
        return f"holds {len(leaves)} arrays, the run's training state {len(shapes)}"
    for i, (leaf, shape) in enumerate(zip(leaves, shapes, strict=True)):
        if tuple(leaf.shape[1:]) != shape:
            return f"holds array {i} of shape {tuple(leaf.shape[1:])} per seed, the training state {shape}"
    return None


def _chunk_cap() -> int:
    """``BPTT_CHUNK_EPOCHS`` caps the epochs per chunk (commit granularity; tests use 1)."""
    try:
        return max(1, min(MAX_CHUNK, int(os.environ.get("BPTT_CHUNK_EPOCHS", MAX_CHUNK))))
    except ValueError:
        return MAX_CHUNK


class _Interrupt:
    """First Ctrl-C: finish the chunks in flight, commit them, stop. Second: stop at once."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def _interrupt() -> Iterator[_Interrupt]:
    interrupt = _Interrupt()
    try:
        previous = signal.signal(signal.SIGINT, interrupt.handle)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
        yield interrupt
        return
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
