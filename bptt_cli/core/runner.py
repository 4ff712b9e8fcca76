"""Run a list of ``RunSpec``s: group them into compiled programs, train all seeds of a group in
one ``vmap``, shard that axis over the visible devices, and stream metrics to disk.

Runs share a program when they differ only in numbers (seed, clip mode, learning rate, a
numeric level): those become rows of the vmapped axis. A group advances in chunks of epochs;
after every chunk each run's CSV and checkpoint are committed, so a kill loses at most the chunk
in flight and a rerun resumes exactly where the files end.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

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
from bptt_cli.core import train
from bptt_cli.core.optim import clip_thresholds

MAX_CHUNK = 64  # epochs per compiled call at most (the metric buffers' length)
TARGET_CHUNK_SECONDS = 2.0  # chunk length is adapted so the progress bar moves about this often


def _chunk_cap() -> int:
    """``BPTT_CHUNK_EPOCHS`` caps the epochs per chunk (commit granularity; tests use 1)."""
    try:
        return max(1, min(MAX_CHUNK, int(os.environ.get("BPTT_CHUNK_EPOCHS", MAX_CHUNK))))
    except ValueError:
        return MAX_CHUNK


@dataclass
class Report:
    """What a call of ``run`` did."""

    skipped: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    compile_seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False


@dataclass(frozen=True)
class _GroupKey:
    problem: str
    static_level: int | float | None
    options: tuple
    setup: train.Setup
    n_data: int
    data_seed: int
    epochs: int
    start_epoch: int


class _Interrupt:
    """First Ctrl-C: finish the chunk in flight, flush it, stop. Second: stop at once."""

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
    """State shared by the groups of one ``run`` call."""

    out: Path
    checkpoints: dict[str, tuple[list[np.ndarray], int]]
    report: Report
    progress: Progress
    bar: TaskID
    interrupt: _Interrupt
    runs_total: int
    runs_done: int = 0


def run(specs: list[RunSpec], out: Path, force: bool = False, console: Console | None = None) -> Report:
    """Train every run in ``specs`` (skipping finished ones unless ``force``) under ``out``."""
    console = console or Console(stderr=True)
    report = Report()
    pending: dict[_GroupKey, list[RunSpec]] = defaultdict(list)
    checkpoints: dict[str, tuple[list[np.ndarray], int]] = {}
    for spec in specs:
        files = results.RunFiles.of(out / spec.experiment, spec.run_id)
        if force:
            files.remove()
        # The checkpoint is written last in every commit: its epoch count is what is done.
        saved = results.load_checkpoint(files.checkpoint)
        done = saved[1] if saved is not None and files.csv.exists() else 0
        if done >= spec.epochs:
            _refresh_threshold(files, spec)
            report.skipped.append(spec.run_id)
            continue
        if done > 0:
            checkpoints[spec.run_id] = saved
            report.resumed.append(spec.run_id)
        elif files.exist():
            files.remove()  # started, but no epoch committed: nothing to keep
        pending[_group_key(spec, done)].append(spec)

    if report.skipped:
        console.print(f"{len(report.skipped)} run(s) already complete, skipped (--force recomputes them)")
    if report.resumed:
        console.print(f"{len(report.resumed)} interrupted run(s) resume from their last committed epoch")
    if not pending:
        return report

    interrupt = _Interrupt()
    total = sum((s.epochs - k.start_epoch) * len(s.seeds) for k, group in pending.items() for s in group)
    n_runs = sum(map(len, pending.values()))
    with _progress(console) as progress, interrupt.installed():
        bar = progress.add_task("starting", total=total, runs=f"0/{n_runs}", loss="")
        session = _Session(out, checkpoints, report, progress, bar, interrupt, n_runs)
        for key, group in pending.items():
            _train_group(key, group, session)
            if interrupt.requested:
                report.interrupted = True
                break
    return report


def _refresh_threshold(files: results.RunFiles, spec: RunSpec) -> None:
    """A finished run keeps its results; only the summary threshold it records follows the
    definition (it is not part of the run id)."""
    try:
        meta = json.loads(files.meta.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if meta.get("config", {}).get("threshold") != spec.threshold:
        meta["config"]["threshold"] = spec.threshold
        results.write_json(files.meta, meta)


def _group_key(spec: RunSpec, start_epoch: int) -> _GroupKey:
    problem = problems.get(spec.problem)
    return _GroupKey(
        problem=spec.problem,
        static_level=spec.level if problem.level_is_static else None,
        options=spec.options,
        setup=train.Setup(spec.flow, spec.optimizer, spec.batch_size),
        n_data=spec.n_data,
        data_seed=spec.data_seed,
        epochs=spec.epochs,
        start_epoch=start_epoch,
    )


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


_PROGRAMS: dict[tuple, object] = {}


def _program(key: _GroupKey, task):
    """The jitted, vmapped chunk function for a static setup (built once per process)."""
    cache_key = (key.problem, key.static_level, key.options, key.setup)
    if cache_key not in _PROGRAMS:
        chunk = partial(train.train_chunk, task, key.setup, MAX_CHUNK)
        _PROGRAMS[cache_key] = jax.jit(jax.vmap(chunk, in_axes=(0, 0, None, None, None)))
    return _PROGRAMS[cache_key]


def _shard(rows: int) -> tuple[int, NamedSharding | None, NamedSharding | None]:
    """Padded row count and the shardings that split the run axis over all devices."""
    devices = jax.devices()
    if len(devices) == 1:
        return rows, None, None
    mesh = Mesh(np.array(devices), ("runs",))
    padded = -(-rows // len(devices)) * len(devices)
    return padded, NamedSharding(mesh, PartitionSpec("runs")), NamedSharding(mesh, PartitionSpec())


def _train_group(key: _GroupKey, group: list[RunSpec], session: _Session) -> None:
    """Train one program's runs to the end (or to an interrupt), committing every chunk."""
    task = problems.get(key.problem).make_task(key.static_level, dict(key.options))
    x_train, x_test = task.sample_data(jax.random.key(key.data_seed), key.n_data)
    rows = [(spec, seed) for spec in group for seed in spec.seeds]
    padded, row_sharding, replicated = _shard(len(rows))
    rows_padded = rows + [rows[-1]] * (padded - len(rows))
    bounds = np.cumsum([0] + [len(spec.seeds) for spec in group])
    slices = {spec.run_id: slice(lo, hi) for spec, lo, hi in zip(group, bounds[:-1], bounds[1:], strict=True)}
    hypers = _hypers(rows_padded)
    state = jax.jit(jax.vmap(partial(train.init_state, task, key.setup)))(hypers)
    state = _restore(state, slices, session.checkpoints)
    if row_sharding is not None:
        hypers, state = jax.device_put((hypers, state), row_sharding)
        x_train, x_test = jax.device_put((x_train, x_test), replicated)

    progress, bar = session.progress, session.bar
    label = _label(key, group)
    progress.update(bar, description=f"{label}: compiling")
    t0 = time.perf_counter()
    compiled = _program(key, task).lower(state, hypers, x_train, x_test, jnp.int32(1)).compile()
    compile_seconds = time.perf_counter() - t0
    session.report.compile_seconds.update({spec.run_id: compile_seconds for spec in group})
    progress.update(bar, description=label)

    folder = session.out / group[0].experiment
    frames = {spec.run_id: _previous_rows(folder, spec, key.start_epoch) for spec in group}
    started = time.time()
    done, n_chunk, test_loss = key.start_epoch, 1, float("nan")
    while done < key.epochs and not session.interrupt.requested:
        n = min(n_chunk, key.epochs - done)
        t0 = time.perf_counter()
        state, metrics, diverged = compiled(state, hypers, x_train, x_test, jnp.int32(n))
        metrics, diverged, leaves = jax.device_get((metrics, diverged, jax.tree.leaves(state)))
        seconds = (time.perf_counter() - t0) / n
        for spec in group:
            rows_of = slices[spec.run_id]
            chunk_metrics = {name: values[rows_of, :n] for name, values in metrics.items()}
            frames[spec.run_id].append(_rows(spec, done, n, chunk_metrics, diverged[rows_of, :n], seconds))
            run_state = [leaf[rows_of] for leaf in leaves]
            _commit(
                folder, spec, pd.concat(frames[spec.run_id]), run_state, done + n, compile_seconds, started
            )
        done += n
        n_chunk = int(np.clip(round(TARGET_CHUNK_SECONDS / max(seconds, 1e-6)), 1, _chunk_cap()))
        test_loss = float(np.nanmedian(metrics["test_loss"][: len(rows), n - 1]))
        progress.update(bar, advance=n * len(rows), loss=f"{test_loss:.4g}")
    if done < key.epochs:
        return
    session.report.completed.extend(spec.run_id for spec in group)
    session.runs_done += len(group)
    progress.update(bar, runs=f"{session.runs_done}/{session.runs_total}")
    progress.console.print(
        f"{label}: {len(rows)} run-seed(s) × {key.epochs - key.start_epoch} epochs in "
        f"{time.time() - started:.0f} s (compile {compile_seconds:.1f} s), median final test loss {test_loss:.4g}",
        markup=False,
    )


def _hypers(rows: list[tuple[RunSpec, int]]) -> train.Hypers:
    """The per-row numbers of a program: init key, learning rate, clip thresholds, level."""
    thresholds = [clip_thresholds(spec.clip, spec.clip_value, spec.clip_norm) for spec, _ in rows]
    return train.Hypers(
        key=jax.vmap(jax.random.key)(jnp.asarray([seed for _, seed in rows])),
        learning_rate=jnp.asarray([spec.learning_rate for spec, _ in rows], jnp.float32),
        clip_value=jnp.asarray([value for value, _ in thresholds], jnp.float32),
        clip_norm=jnp.asarray([norm for _, norm in thresholds], jnp.float32),
        level=jnp.asarray([float(spec.level) for spec, _ in rows], jnp.float32),
    )


def _label(key: _GroupKey, group: list[RunSpec]) -> str:
    levels = sorted({spec.level for spec in group})
    clips = sorted({spec.clip for spec in group})
    return f"{key.problem} {group[0].level_key}={','.join(map(str, levels))} {key.setup.flow} [{'/'.join(clips)}]"


def _restore(state, slices: dict[str, slice], checkpoints):
    """Overwrite the rows of resumed runs with their checkpoints (padding rows stay as they are)."""
    resumed = {run_id: rows for run_id, rows in slices.items() if run_id in checkpoints}
    if not resumed:
        return state
    leaves, treedef = jax.tree.flatten(state)
    leaves = [np.array(leaf) for leaf in leaves]
    for run_id, rows in resumed.items():
        saved, _ = checkpoints[run_id]
        for leaf, value in zip(leaves, saved, strict=True):
            leaf[rows] = value
    return jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])


def _previous_rows(folder: Path, spec: RunSpec, start_epoch: int) -> list[pd.DataFrame]:
    """The committed rows of a resumed run (empty list for a fresh one)."""
    if start_epoch == 0:
        return []
    rows = results.load_rows(results.RunFiles.of(folder, spec.run_id).csv, start_epoch)
    return [] if rows is None else [rows]


def _rows(
    spec: RunSpec, done: int, n: int, metrics: dict, diverged: np.ndarray, seconds: float
) -> pd.DataFrame:
    """Tidy rows (seed-major, then epoch) for epochs ``done + 1 ... done + n``."""
    n_seeds = len(spec.seeds)
    config = {
        "experiment": spec.experiment,
        "run_id": spec.run_id,
        "problem": spec.problem,
        "level_key": spec.level_key,
        "level": spec.level,
        "flow": spec.flow,
        "clip": spec.clip,
        "optimizer": spec.optimizer,
        "learning_rate": spec.learning_rate,
        "batch_size": spec.batch_size,
        "n_data": spec.n_data,
        "data_seed": spec.data_seed,
    }
    frame = pd.DataFrame(config, index=range(n_seeds * n))
    frame["seed"] = np.repeat(np.asarray(spec.seeds), n)
    frame["epoch"] = np.tile(np.arange(done + 1, done + n + 1), n_seeds)
    for name, values in metrics.items():
        frame[name] = values.reshape(-1).astype(np.float64)
    frame["epoch_seconds"] = seconds
    frame["diverged"] = diverged.reshape(-1)
    return frame


def _commit(folder, spec, frame, leaves, epochs_done, compile_seconds, started) -> None:
    """CSV, then sidecar, then checkpoint: the checkpoint (last) says what is committed."""
    files = results.RunFiles.of(folder, spec.run_id)
    frame = frame.sort_values(["seed", "epoch"], kind="stable")
    results.write_csv(files.csv, frame)
    results.write_json(
        files.meta,
        {
            "run_id": spec.run_id,
            "status": "complete" if epochs_done >= spec.epochs else "running",
            "epochs_done": epochs_done,
            "config": spec.as_dict(),
            "versions": results.versions(),
            "devices": [str(d) for d in jax.devices()],
            "compile_seconds": round(compile_seconds, 3),
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    results.save_checkpoint(files.checkpoint, leaves, epochs_done)
