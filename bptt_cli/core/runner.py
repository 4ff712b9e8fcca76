"""Train a list of ``RunSpec``s: claim them, group them into compiled programs (``plan``), train
all rows of a program in one ``vmap`` sharded over the visible devices, and stream results to
disk.

A program advances in chunks of epochs. The next chunk is dispatched before the previous one's
results are written, so the host's work (metrics to CSV rows, commits, the progress bar)
overlaps the device's. Every chunk is committed per run (append the CSV rows, replace the
checkpoint, replace the sidecar), so a kill loses at most the chunks in flight and a rerun
resumes exactly where the checkpoints end. Each run is claimed with a lock file first, so that
several workers can share one grid and one results folder.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bptt_cli import problems, results
from bptt_cli.config import RunSpec
from bptt_cli.core import devices, diagnostics, flows, train
from bptt_cli.core.optim import clip_thresholds
from bptt_cli.core.plan import Program, plan

MAX_CHUNK = 64  # epochs per compiled call at most (the metric buffers' length)
TARGET_CHUNK_SECONDS = 2.0  # chunk length is adapted so that results land about this often
N_TRAJECTORIES = 8  # test trajectories saved per seed at the end of a run


def _chunk_cap() -> int:
    """``BPTT_CHUNK_EPOCHS`` caps the epochs per chunk (commit granularity; tests use 1)."""
    try:
        return max(1, min(MAX_CHUNK, int(os.environ.get("BPTT_CHUNK_EPOCHS", MAX_CHUNK))))
    except ValueError:
        return MAX_CHUNK


@dataclass
class Report:
    """What a call of ``run`` did."""

    trained: list[str] = field(default_factory=list)
    found_complete: list[str] = field(default_factory=list)
    left_to_others: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    programs: list[str] = field(default_factory=list)
    compile_seconds: dict[str, float] = field(default_factory=dict)
    host_seconds: float = 0.0  # writing results, between and beside compiled chunks
    wall_seconds: float = 0.0
    interrupted: bool = False


class _Interrupt:
    """First Ctrl-C: finish the chunks in flight, flush them, stop. Second: stop at once."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (e.g. inside a test runner thread)
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@dataclass
class _Session:
    """State shared by the programs of one ``run`` call."""

    out: Path
    profile: devices.Profile
    report: Report
    progress: Progress
    bar: TaskID
    interrupt: _Interrupt
    runs_total: int
    runs_done: int = 0
    started: float = 0.0  # when this worker started: --force recomputes only older results


def status(spec: RunSpec, out: Path) -> int:
    """Epochs of ``spec`` committed under ``out`` (the checkpoint, written last, decides)."""
    files = results.RunFiles.of(out / spec.experiment, spec.run_id)
    saved = results.load_checkpoint(files.checkpoint)
    return saved[1] if saved is not None and files.csv.exists() else 0


def pending_work(specs: list[RunSpec], out: Path, force: bool = False) -> list[tuple[RunSpec, int]]:
    """The runs still to train with the epoch each resumes from (an unlocked look: workers
    check again after claiming)."""
    work = []
    for spec in specs:
        done = 0 if force else status(spec, out)
        if done < spec.epochs:
            work.append((spec, done))
    return work


def run(
    specs: list[RunSpec],
    out: Path,
    force: bool = False,
    console: Console | None = None,
    profile: devices.Profile | None = None,
) -> Report:
    """Train every run in ``specs`` under ``out`` that no other worker is training: skip finished
    ones (unless ``force``), resume interrupted ones, leave locked ones to their workers."""
    console = console or Console(stderr=True)
    profile = profile or devices.current()
    report = Report()
    started = time.perf_counter()
    # Refuse foreign or unreadable lock files before anything is written.
    for spec in specs:
        results.check_lock_file(results.RunFiles.of(out / spec.experiment, spec.run_id).lock)

    work = pending_work(specs, out, force)
    waiting = {spec.run_id for spec, _ in work}
    for spec in specs:
        if spec.run_id not in waiting:
            _settle_finished(results.RunFiles.of(out / spec.experiment, spec.run_id), spec)
            report.found_complete.append(spec.run_id)
    if not work:
        return report

    interrupt = _Interrupt()
    total = sum((spec.epochs - start) * len(spec.seeds) for spec, start in work)
    # Full float32 matrix products everywhere (a GPU would otherwise use TF32).
    precision = jax.default_matmul_precision(profile.matmul_precision)
    with _progress(console) as progress, interrupt.installed(), precision:
        bar = progress.add_task("starting", total=total, runs=f"0/{len(work)}", loss="")
        session = _Session(out, profile, report, progress, bar, interrupt, len(work), started=time.time())
        for program in plan(work, profile, problems.get):
            _claim_and_train(program, session, force)
            if interrupt.requested:
                report.interrupted = True
                break
    report.wall_seconds = time.perf_counter() - started
    return report


def _claim_and_train(program: Program, session: _Session, force: bool) -> None:
    """Claim the program's runs, then train the claimed ones (grouped again by where each
    actually resumes: another worker may have moved them on since we looked)."""
    report = session.report
    claimed: list[tuple[RunSpec, int]] = []
    locks: dict[str, results.RunLock] = {}
    try:
        for spec in program.runs:
            files = results.RunFiles.of(session.out / spec.experiment, spec.run_id)
            lock = results.RunLock.claim(files.lock, spec.run_id)
            if lock is None:
                report.left_to_others.append(spec.run_id)
                session.progress.update(
                    session.bar, advance=(spec.epochs - program.start_epoch) * len(spec.seeds)
                )
                continue
            locks[spec.run_id] = lock
            if force and _written_before(files, session.started):
                files.remove()
            done = status(spec, session.out)
            if done >= spec.epochs:  # finished by another worker since we looked
                report.found_complete.append(spec.run_id)
                lock.release(done=True)
                del locks[spec.run_id]
                continue
            if done > 0:
                report.resumed.append(spec.run_id)
            elif files.exist():
                files.remove()  # started, but no epoch committed: nothing to keep
            claimed.append((spec, done))
        for part in plan(claimed, session.profile, problems.get):
            _train_program(part, session, locks)
            if session.interrupt.requested:
                return
    finally:
        for lock in locks.values():
            lock.release(done=False)


def _written_before(files: results.RunFiles, moment: float) -> bool:
    """Whether the run's files predate ``moment`` (a concurrent --force worker must not erase a
    run that another worker of the same invocation just trained)."""
    return not files.meta.exists() or files.meta.stat().st_mtime < moment


def _settle_finished(files: results.RunFiles, spec: RunSpec) -> None:
    """A finished run keeps its results; only the summary threshold it records follows the
    definition (it is not part of the run id), and a sidecar that a kill left one commit behind
    its (complete) checkpoint is brought level with it."""
    try:
        meta = json.loads(files.meta.read_text())
    except (OSError, json.JSONDecodeError):
        return
    updated = dict(meta, config={**meta.get("config", {}), "threshold": spec.threshold})
    if meta.get("epochs_done", 0) < spec.epochs:
        updated.update(
            status="complete",
            epochs_done=spec.epochs,
            history=_history_until(meta.get("history", []), spec.epochs),
        )
    if updated != meta:
        results.write_json(files.meta, updated)


def _history_until(history: list[dict], epoch: int) -> list[dict]:
    """The sidecar's history cut at ``epoch`` (where the checkpoint stands): entries that start
    before it, the last one ending there (a sidecar can lag its checkpoint by one commit)."""
    kept = [h for h in history if h.get("from_epoch", 0) < epoch]
    return [*kept[:-1], {**kept[-1], "to_epoch": epoch}] if kept else []


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("run-epochs · runs {task.fields[runs]} · test loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    # Off when stderr is not a terminal (CI logs, files): the per-program lines say enough.
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as progress:
        yield progress


# --- one program --------------------------------------------------------------------------


_PROGRAMS: dict[tuple, Any] = {}


def _jitted(kind: str, key: tuple, build):
    """One jitted function per kind and static setup, built once per process."""
    if (kind, key) not in _PROGRAMS:
        _PROGRAMS[(kind, key)] = build()
    return _PROGRAMS[(kind, key)]


@dataclass
class _Rows:
    """The rows of a program's vmapped axis and the run each belongs to."""

    specs: list[RunSpec]
    slices: dict[str, slice]
    n: int  # real rows (the axis may be padded to a multiple of the device count)
    padded: list[tuple[RunSpec, int]]

    @classmethod
    def of(cls, program: Program, n_devices: int) -> _Rows:
        rows = [(spec, seed) for spec in program.runs for seed in spec.seeds]
        padded = rows + [rows[-1]] * (-len(rows) % n_devices)
        bounds = np.cumsum([0] + [len(spec.seeds) for spec in program.runs])
        slices = {
            spec.run_id: slice(lo, hi)
            for spec, lo, hi in zip(program.runs, bounds[:-1], bounds[1:], strict=True)
        }
        return cls(list(program.runs), slices, len(rows), padded)


def _task_source(program: Program):
    """``task_of`` (a row's level -> Task, at trace time), per-row or shared data, n_steps."""
    problem = problems.get(program.problem_ref)
    options = dict(program.options)
    key = jax.random.key(program.data_seed)
    if program.padded:

        def task_of(level):
            return problem.make_padded_task(level, program.level, options)

        by_level = {
            level: problem.make_padded_task(level, program.level, options).sample_data(key, program.n_data)
            for level in program.levels
        }
        return task_of, by_level, problem.make_padded_task(program.level, program.level, options).n_steps
    if problem.level_is_static:
        task = problem.make_task(program.level, options)
        return (lambda level: task), task.sample_data(key, program.n_data), task.n_steps
    task = problem.make_task(program.levels[0], options)

    def task_of(level):
        return problem.make_task(level, options)

    return task_of, task.sample_data(key, program.n_data), task.n_steps


def _hypers(rows: list[tuple[RunSpec, int]]) -> train.Hypers:
    """The per-row numbers of a program: init key, learning rate, clip thresholds, level, flow."""
    thresholds = [clip_thresholds(spec.clip, spec.clip_value, spec.clip_norm) for spec, _ in rows]
    gates = [flows.gates(spec.flow) for spec, _ in rows]
    return train.Hypers(
        key=jax.vmap(jax.random.key)(jnp.asarray([seed for _, seed in rows])),
        learning_rate=jnp.asarray([spec.learning_rate for spec, _ in rows], jnp.float32),
        clip_value=jnp.asarray([value for value, _ in thresholds], jnp.float32),
        clip_norm=jnp.asarray([norm for _, norm in thresholds], jnp.float32),
        level=jnp.asarray([float(spec.level) for spec, _ in rows], jnp.float32),
        gates=flows.Gates(*(jnp.asarray(np.stack(field)) for field in zip(*gates, strict=True))),
    )


def _shardings(n_devices: int):
    """Shardings that split the row axis over all devices (None on one device)."""
    if n_devices == 1:
        return None, None
    mesh = Mesh(np.array(jax.devices()), ("runs",))
    return NamedSharding(mesh, PartitionSpec("runs")), NamedSharding(mesh, PartitionSpec())


@dataclass
class _Chunk:
    """A dispatched chunk of epochs: device arrays until fetched."""

    start: int
    n: int
    state: Any
    metrics: Any
    diverged: Any
    diagnostics: Any = None
    trajectories: Any = None
    extra_diagnostics: list = field(default_factory=list)  # (epoch, arrays) computed before it


@dataclass
class Built:
    """A program ready to run: its compiled chunk function and everything it is called with."""

    program: Program
    rows: _Rows
    n_steps: int
    data: Any  # the problem's (x_train, x_test), per level for padded programs
    hypers: train.Hypers
    state: train.TrainState
    x_train: Any
    x_test: Any
    compiled: Any  # (state, hypers, x_train, x_test, n_epochs) -> (state, metrics, diverged)
    compile_seconds: float
    diagnose: Any  # (theta, hypers, x_test) -> diagnostics per row, or None
    trajectories: Any  # (theta, hypers, x_test) -> (xs, us) per row


def build(program: Program, profile: devices.Profile, out: Path | None = None) -> Built:
    """Compile a program as the runner trains it (resumed runs restored from ``out``)."""
    task_of, data, n_steps = _task_source(program)
    n_devices = len(jax.devices())
    rows = _Rows.of(program, n_devices)
    row_sharding, replicated = _shardings(n_devices)
    hypers = _hypers(rows.padded)
    if program.padded:
        x_train, x_test = (jnp.stack([data[spec.level][i] for spec, _ in rows.padded]) for i in (0, 1))
        data_axis = 0
    else:
        (x_train, x_test), data_axis = data, None
    setup = train.Setup(program.flow, program.optimizer, program.batch_size, program.pair, profile.unroll)
    static = (program.problem_ref, program.options, program.level, program.padded, data_axis)

    init = _jitted(
        "init", (*static, setup), lambda: jax.jit(jax.vmap(partial(train.init_state, task_of, setup)))
    )
    state = init(hypers)
    if out is not None:
        state = _restore(state, rows, out)
    if row_sharding is not None:
        hypers, state = jax.device_put((hypers, state), row_sharding)
        x_train, x_test = jax.device_put((x_train, x_test), row_sharding if data_axis == 0 else replicated)

    chunk = partial(train.train_chunk, task_of, setup, MAX_CHUNK)
    chunk_fn = _jitted(
        "chunk",
        (*static, setup),
        lambda: jax.jit(jax.vmap(chunk, in_axes=(0, 0, data_axis, data_axis, None))),
    )
    t0 = time.perf_counter()
    compiled = chunk_fn.lower(state, hypers, x_train, x_test, jnp.int32(1)).compile(
        profile.compiler_options or None
    )
    compile_seconds = time.perf_counter() - t0

    n_diag = min(diagnostics.N_STATES, program.n_data)

    def diagnose(theta, hy, x_test):
        return diagnostics.diagnose(task_of(hy.level), theta, x_test[:n_diag], profile.unroll)

    n_traj = min(N_TRAJECTORIES, program.n_data)

    def trajectories(theta, hy, x_test):
        task = task_of(hy.level)
        return flows.rollout("R", task.controller, task.step, theta, x_test[:n_traj], task.n_steps)

    in_axes = (0, 0, data_axis)
    diag_fn = None
    if any(spec.diagnostics for spec in program.runs):
        jitted = _jitted(
            "diagnostics",
            (*static, profile.unroll, n_diag),
            lambda: jax.jit(jax.vmap(diagnose, in_axes=in_axes)),
        )

        def diag_fn(theta, hy, x_test):
            # On ONE device, and finished before anything else runs: jaxlib's CPU SVD blocks
            # XLA's thread pool (see diagnostics.py); five calls per run need no overlap.
            return jax.block_until_ready(jitted(*jax.device_put((theta, hy, x_test), jax.devices()[0])))

    traj_fn = _jitted(
        "trajectories", (*static, n_traj), lambda: jax.jit(jax.vmap(trajectories, in_axes=in_axes))
    )
    return Built(
        program,
        rows,
        n_steps,
        data,
        hypers,
        state,
        x_train,
        x_test,
        compiled,
        compile_seconds,
        diag_fn,
        traj_fn,
    )


def _train_program(program: Program, session: _Session, locks: dict[str, results.RunLock]) -> None:
    """Train one program's runs to the end (or to an interrupt), committing every chunk."""
    profile, progress, bar = session.profile, session.progress, session.bar
    label = program.describe()
    session.report.programs.append(label)
    progress.update(bar, description=f"{program.problem}: compiling")
    built = build(program, profile, session.out)
    rows, compiled, compile_seconds = built.rows, built.compiled, built.compile_seconds
    hypers, state, x_train, x_test = built.hypers, built.state, built.x_train, built.x_test
    diag_fn, traj_fn = built.diagnose, built.trajectories
    session.report.compile_seconds.update({spec.run_id: compile_seconds for spec in rows.specs})
    progress.update(bar, description=program.problem)
    diagnosed = sorted({e for spec in rows.specs for e in spec.diagnostics})

    writer = _Writer(
        program, rows, session, locks, compile_seconds, built.n_steps, _optima(program, built.data)
    )
    epochs, start = program.epochs, program.start_epoch
    stops = sorted({e for e in diagnosed if start < e < epochs} | {epochs})
    inflight: deque[_Chunk] = deque()
    dispatched, n_next = start, 1

    def dispatch(state):
        nonlocal dispatched
        stop = next(s for s in stops if s > dispatched)
        n = min(n_next, stop - dispatched)
        new_state, metrics, diverged = compiled(state, hypers, x_train, x_test, jnp.int32(n))
        chunk = _Chunk(dispatched, n, new_state, metrics, diverged)
        if diag_fn is not None and dispatched + n in diagnosed:
            chunk.diagnostics = diag_fn(new_state.theta, hypers, x_test)
        if dispatched + n == epochs:
            chunk.trajectories = traj_fn(new_state.theta, hypers, x_test)
        inflight.append(chunk)
        dispatched += n
        return new_state

    first_diagnostics = []
    if diag_fn is not None and start == 0 and 0 in diagnosed:
        first_diagnostics.append((0, diag_fn(state.theta, hypers, x_test)))
    state = dispatch(state)
    inflight[0].extra_diagnostics = first_diagnostics
    last_landed = time.perf_counter()
    test_loss = float("nan")
    while inflight:
        if dispatched < epochs and not session.interrupt.requested:
            state = dispatch(state)  # the device works on it while the host writes the last one
        chunk = inflight.popleft()
        fetched = jax.device_get(
            (
                chunk.metrics,
                chunk.diverged,
                jax.tree.leaves(chunk.state),
                chunk.diagnostics,
                chunk.trajectories,
            )
        )
        fetched_extra = [(epoch, jax.device_get(arrays)) for epoch, arrays in chunk.extra_diagnostics]
        landed = time.perf_counter()
        seconds = (landed - last_landed) / chunk.n
        last_landed = landed
        writer.commit(chunk, fetched, fetched_extra, seconds)
        session.report.host_seconds += time.perf_counter() - landed
        n_next = int(np.clip(round(TARGET_CHUNK_SECONDS / max(seconds, 1e-6)), 1, _chunk_cap()))
        test_loss = float(np.nanmedian(fetched[0]["test_loss"][: rows.n, chunk.n - 1]))
        progress.update(bar, advance=chunk.n * rows.n, loss=f"{test_loss:.4g}")
    if dispatched < epochs or writer.done < epochs:
        return
    session.report.trained.extend(spec.run_id for spec in rows.specs)
    session.runs_done += len(rows.specs)
    progress.update(bar, runs=f"{session.runs_done}/{session.runs_total}")
    progress.console.print(
        f"{label}: trained in {time.time() - writer.started:.0f} s (compile {compile_seconds:.1f} s), "
        f"median final test loss {test_loss:.4g}",
        markup=False,
    )


def _optima(program: Program, data) -> dict[Any, float]:
    """The problem's best reachable loss per level on the test states (float64, host)."""
    problem = problems.get(program.problem_ref)
    if problem.optimum is None:
        return {}
    options = dict(program.options)
    x_test = {level: np.asarray(data[level][1] if program.padded else data[1]) for level in program.levels}
    return {level: float(problem.optimum(level, options, x_test[level])) for level in program.levels}


def _restore(state, rows: _Rows, out: Path):
    """Overwrite the rows of resumed runs with their checkpoints (padding rows stay as they are)."""
    saved = {}
    for spec in rows.specs:
        checkpoint = results.load_checkpoint(
            results.RunFiles.of(out / spec.experiment, spec.run_id).checkpoint
        )
        if checkpoint is not None and checkpoint[1] > 0:
            saved[spec.run_id] = checkpoint[0]
    if not saved:
        return state
    leaves, treedef = jax.tree.flatten(state)
    leaves = [np.array(leaf) for leaf in leaves]
    for run_id, values in saved.items():
        for leaf, value in zip(leaves, values, strict=True):
            leaf[rows.slices[run_id]] = value
    return jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])


# --- writing results ----------------------------------------------------------------------


class _Writer:
    """Commits a program's chunks run by run: append rows, replace checkpoint, replace sidecar."""

    def __init__(self, program, rows, session, locks, compile_seconds, n_steps, optima) -> None:
        self.program, self.rows, self.session, self.locks = program, rows, session, locks
        self.compile_seconds, self.n_steps, self.optima = compile_seconds, n_steps, optima
        self.folder = session.out / program.runs[0].experiment
        self.folder.mkdir(parents=True, exist_ok=True)
        self.done = program.start_epoch
        self.started = time.time()
        self.history: dict[str, list] = {}
        for spec in rows.specs:
            self._prepare(spec)

    def _prepare(self, spec: RunSpec) -> None:
        """Fresh run: no files. Resumed run: cut its CSVs back to the checkpoint, once. Either
        way the sidecar names this worker before any checkpoint is written, so that every
        checkpoint has a history that says who trained it."""
        files = results.RunFiles.of(self.folder, spec.run_id)
        start = self.program.start_epoch
        previous = {}
        if files.meta.exists():
            try:
                previous = json.loads(files.meta.read_text())
            except (OSError, json.JSONDecodeError):
                previous = {}
        self.history[spec.run_id] = _history_until(previous.get("history", []), start)
        for path in (files.csv, files.diagnostics):
            kept = results.load_rows(path, start) if start > 0 else None
            if kept is None or kept.empty:
                path.unlink(missing_ok=True)
            else:
                results.write_csv(path, kept)
        results.write_json(files.meta, self._meta(spec, start))

    def commit(self, chunk: _Chunk, fetched, fetched_extra, seconds: float) -> None:
        metrics, diverged, leaves, diag, trajectories = fetched
        n = chunk.n
        end = chunk.start + n
        for spec in self.rows.specs:
            rows_of = self.rows.slices[spec.run_id]
            files = results.RunFiles.of(self.folder, spec.run_id)
            frame = self._metric_rows(spec, chunk.start, n, metrics, diverged[rows_of, :n], rows_of, seconds)
            results.append_csv(files.csv, frame)
            diag_frames = [
                self._diagnostic_rows(spec, epoch, arrays, rows_of)
                for epoch, arrays in [*fetched_extra, *([(end, diag)] if diag is not None else [])]
                if epoch in spec.diagnostics
            ]
            if diag_frames:
                results.append_csv(files.diagnostics, pd.concat(diag_frames))
            complete = end >= spec.epochs
            if complete:
                self._finish(spec, files, trajectories, rows_of)
            # The checkpoint before the sidecar: whatever epochs a sidecar states are resumable.
            results.save_checkpoint(files.checkpoint, [leaf[rows_of] for leaf in leaves], end)
            results.write_json(files.meta, self._meta(spec, end))
            if complete and spec.run_id in self.locks:
                self.locks.pop(spec.run_id).release(done=True)
        self.done = end

    def _finish(self, spec, files, trajectories, rows_of) -> None:
        """The run's last chunk: its trajectories, and its CSVs once more in (seed, epoch) order."""
        xs, us = trajectories
        problem = problems.get(spec.problem_ref or spec.problem)
        meta = {
            "run_id": spec.run_id,
            "experiment": spec.experiment,
            "problem": spec.problem,
            "level_key": spec.level_key,
            "level": spec.level,
            "flow": spec.flow,
            "clip": spec.clip,
            "drawing": _drawing_ref(problem.drawing, spec.problem_ref),
        }
        xs, us = _unpad_trajectories(self.program, spec, xs[rows_of], us[rows_of])
        results.write_trajectories(files.trajectories, xs, us, spec.seeds, meta)
        for path, order in ((files.csv, ["seed", "epoch"]), (files.diagnostics, ["seed", "epoch", "t"])):
            if path.exists():
                frame = results.read_run_csv(path, spec.epochs)
                results.write_csv(path, frame.sort_values(order, kind="stable"))

    def _meta(self, spec: RunSpec, epochs_done: int) -> dict:
        history = [
            *self.history[spec.run_id],
            {
                "worker": results.worker_name(),
                "from_epoch": self.program.start_epoch,
                "to_epoch": epochs_done,
                "started": _iso(self.started),
                "updated": _iso(time.time()),
            },
        ]
        meta = {
            "run_id": spec.run_id,
            "status": "complete" if epochs_done >= spec.epochs else "running",
            "epochs_done": epochs_done,
            "config": spec.as_dict(),
            "versions": results.versions(),
            "devices": [str(d) for d in jax.devices()],
            "program": {
                "rows": self.rows.n,
                "runs": len(self.rows.specs),
                "flows": "per run" if self.program.flow is None else self.program.flow,
                "padded_to": self.program.level if self.program.padded else None,
                "grouping": "wide" if self.session.profile.merge_flows else "narrow",
                "unroll": self.session.profile.unroll,
                "matmul_precision": self.session.profile.matmul_precision,
            },
            "compile_seconds": round(self.compile_seconds, 3),
            "history": history,
        }
        if spec.level in self.optima:
            meta["optimal_loss"] = self.optima[spec.level]
        return meta

    def _metric_rows(self, spec, done, n, metrics, diverged, rows_of, seconds) -> pd.DataFrame:
        """Tidy rows (seed-major, then epoch) for epochs ``done + 1 ... done + n``."""
        frame = _config_frame(spec, len(spec.seeds) * n)
        frame["seed"] = np.repeat(np.asarray(spec.seeds), n)
        frame["epoch"] = np.tile(np.arange(done + 1, done + n + 1), len(spec.seeds))
        for name, values in metrics.items():
            frame[name] = values[rows_of, :n].reshape(-1).astype(np.float64)
        if spec.level in self.optima:
            frame["optimality_gap"] = frame["test_loss"] / self.optima[spec.level] - 1.0
        frame["epoch_seconds"] = seconds
        frame["diverged"] = diverged.reshape(-1)
        return frame

    def _diagnostic_rows(self, spec, epoch, arrays, rows_of) -> pd.DataFrame:
        """One row per (seed, t), t = 0 ... Nt; per-step quantities are empty at t = Nt."""
        n_seeds, n_t = len(spec.seeds), self.n_steps + 1
        frame = _config_frame(spec, n_seeds * n_t, columns=results.DIAGNOSTIC_CONFIG)
        frame["seed"] = np.repeat(np.asarray(spec.seeds), n_t)
        frame["epoch"] = epoch
        frame["t"] = np.tile(np.arange(n_t), n_seeds)
        pad = np.full((n_seeds, 1), np.nan)
        for name in ("grad_norm_R", "grad_norm_M"):
            frame[name] = np.asarray(arrays[name][rows_of], np.float64).reshape(-1)
        per_step = {
            name: np.asarray(arrays[name][rows_of], np.float64) for name in ("jac_physics", "jac_closed_loop")
        }
        for name, values in per_step.items():
            frame[name] = np.concatenate([values, pad], axis=1).reshape(-1)
        for name, values in per_step.items():
            growth = diagnostics.log10_growth(values)
            frame[name.replace("jac_", "log10_growth_")] = np.concatenate([growth, pad], axis=1).reshape(-1)
        return frame


def _config_frame(spec: RunSpec, n: int, columns=results.RUN_CONFIG) -> pd.DataFrame:
    return pd.DataFrame({name: getattr(spec, name) for name in columns}, index=range(n))


def _unpad_trajectories(program: Program, spec: RunSpec, xs, us):
    """Padded programs carry padded states: keep the run's own shape in the saved file."""
    if not program.padded:
        return xs, us
    task = problems.get(program.problem_ref).make_task(spec.level, dict(spec.options))
    shape = jax.eval_shape(lambda key: task.sample_data(key, 1)[0], jax.random.key(0)).shape[1:]
    return xs[(..., *(slice(0, s) for s in shape))], us


def _drawing_ref(drawing: str | None, problem_ref: str) -> str | None:
    """A drawing reference that resolves from anywhere: a file next to a user's problem file
    becomes absolute."""
    if not drawing or ":" not in drawing:
        return drawing
    module, attribute = drawing.rsplit(":", 1)
    if module.endswith(".py") and not Path(module).is_absolute() and problem_ref.endswith(".py"):
        module = str((Path(problem_ref).parent / module).resolve())
    return f"{module}:{attribute}"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
