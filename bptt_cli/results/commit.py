"""Committing a program's chunks to its runs' files.

Per run and chunk: append the CSV rows (durable before the next write), replace the checkpoint
(the one it replaces kept as the previous checkpoint), then replace the sidecar (see the package
docstring for why in that order; ``resume`` reads them back). Everything here works on host
arrays: the compiled side (``bptt_cli.runner``) hands over fetched chunks and never touches a
file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bptt_cli.core.plan import Chunk
from bptt_cli.core.spec import RunSpec
from bptt_cli.results import files
from bptt_cli.results.files import DIAGNOSTIC_CONFIG, RUN_CONFIG, RunFiles
from bptt_cli.results.locks import RunLock, worker_name
from bptt_cli.results.read import load_rows, read_run_csv
from bptt_cli.results.tracking import Trackers, Tracking

# --- finished runs ------------------------------------------------------------------------


def settle_finished(spec: RunSpec, out: Path) -> None:
    """A finished run keeps its results; only the summary threshold it records follows the
    definition (it is not part of the run id), and a sidecar that a kill left one commit behind
    its (complete) checkpoint is brought level with it."""
    path = RunFiles.of(out / spec.experiment, spec.run_id).meta
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    updated = dict(meta, config={**meta.get("config", {}), "threshold": spec.threshold})
    if meta.get("epochs_done", 0) < spec.epochs:
        updated.update(
            status="complete",
            epochs_done=spec.epochs,
            history=history_until(meta.get("history", []), spec.epochs),
        )
    if updated != meta:
        files.write_json(path, updated)


def history_until(history: list[dict], epoch: int) -> list[dict]:
    """A sidecar's history cut at ``epoch`` (where the checkpoint stands): entries that start
    before it, the last one ending there (a sidecar can lag its checkpoint by one commit). When
    the sidecar was lost (damaged), one entry says who trained the epochs before is unknown."""
    kept = [h for h in history if h.get("from_epoch", 0) < epoch]
    if epoch > 0 and not kept:
        return [
            {"worker": "unknown (the sidecar that named it was damaged)", "from_epoch": 0, "to_epoch": epoch}
        ]
    return [*kept[:-1], {**kept[-1], "to_epoch": epoch}] if kept else []


def written_before(spec: RunSpec, out: Path, moment: float) -> bool:
    """Whether the run's files predate ``moment`` (a concurrent --force worker must not erase a
    run that another worker of the same invocation just trained)."""
    meta = RunFiles.of(out / spec.experiment, spec.run_id).meta
    return not meta.exists() or meta.stat().st_mtime < moment


# --- writing a program's chunks -----------------------------------------------------------


@dataclass(frozen=True)
class ProgramRecord:
    """What the runs' files record about the program that trains them.

    Attributes:
      slices: run id -> the run's rows of the program's vmapped axis.
      start_epoch: where every run of the program resumes.
      n_steps: the horizon (diagnostics rows per seed: n_steps + 1).
      sidecar: the program's description, devices and compile time, stored in every sidecar.
      optima: level -> the problem's best reachable loss (problems that define one).
      drawing: how plots draw the problem's states (a reference), or None.
      state_shapes: level -> a state's own shape, where states are padded to a larger level.
    """

    slices: dict[str, slice]
    start_epoch: int
    n_steps: int
    sidecar: dict[str, Any]
    optima: dict[Any, float]
    drawing: str | None = None
    state_shapes: dict[Any, tuple[int, ...]] | None = None


class ProgramWriter:
    """Commits a program's chunks run by run: append rows, replace checkpoint, replace sidecar.

    Created once the program's runs are claimed (``locks``): a fresh run starts with no
    files, a resumed one has its CSVs cut back to its checkpoint; either way its sidecar names
    this worker before any checkpoint is written, so every checkpoint has a history. Each
    run's live curves (``tracking``: TensorBoard, W&B; default: as the environment says) are
    written anew from the rows its CSVs keep, then fed each chunk once it is committed.
    """

    def __init__(
        self,
        out: Path,
        runs: list[RunSpec],
        record: ProgramRecord,
        locks: dict[str, RunLock],
        tracking: Tracking | None = None,
    ):
        self.runs, self.record, self.locks = runs, record, locks
        self.folder = out / runs[0].experiment
        self.folder.mkdir(parents=True, exist_ok=True)
        self.trackers = Trackers(tracking or Tracking.from_environment(), self.folder)
        self.epochs_done = record.start_epoch
        self.started = time.time()
        self.history = {spec.run_id: self._prepare(spec) for spec in runs}

    def _prepare(self, spec: RunSpec) -> list[dict]:
        paths = RunFiles.of(self.folder, spec.run_id)
        start = self.record.start_epoch
        try:
            previous = json.loads(paths.meta.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        history = history_until(previous.get("history", []), start)
        kept_rows = []
        for path in (paths.csv, paths.diagnostics):
            kept = load_rows(path, start) if start > 0 else None
            if kept is None or kept.empty:
                path.unlink(missing_ok=True)
            else:
                files.write_csv(path, kept)
            kept_rows.append(kept)
        files.write_json(paths.meta, self._meta(spec, start, history))
        self.trackers.start(spec, start, *kept_rows)
        return history

    def commit(self, chunk: Chunk) -> None:
        end = chunk.start + chunk.n
        for spec in self.runs:
            rows = self.record.slices[spec.run_id]
            paths = RunFiles.of(self.folder, spec.run_id)
            metrics = self._metric_rows(spec, chunk, rows)
            files.append_csv(paths.csv, metrics)
            diagnosed = [
                self._diagnostic_rows(spec, epoch, arrays, rows)
                for epoch, arrays in chunk.diagnostics
                if epoch in spec.diagnostics
            ]
            diagnostics = pd.concat(diagnosed) if diagnosed else None
            if diagnostics is not None:
                files.append_csv(paths.diagnostics, diagnostics)
            complete = end >= spec.epochs
            if complete:
                self._finish(spec, paths, chunk.trajectories, rows)
            files.save_checkpoint(paths.checkpoint, [leaf[rows] for leaf in chunk.leaves], end, spec.run_id)
            files.write_json(paths.meta, self._meta(spec, end, self.history[spec.run_id]))
            self.trackers.log(spec, metrics, diagnostics)  # durable in the CSVs by now
            if complete:
                self.trackers.finish(spec, complete=True)
            if complete and spec.run_id in self.locks:
                self.locks.pop(spec.run_id).release(done=True)
        self.epochs_done = end

    def _finish(self, spec: RunSpec, paths: RunFiles, trajectories, rows: slice) -> None:
        """The run's last chunk: its trajectories, and its CSVs once more in (seed, epoch) order."""
        xs, us = (values[rows] for values in trajectories)
        if self.record.state_shapes is not None:  # keep the run's own state shape in the file
            shape = self.record.state_shapes[spec.level]
            xs = xs[(..., *(slice(0, s) for s in shape))]
        meta = {
            "run_id": spec.run_id,
            "experiment": spec.experiment,
            "problem": spec.problem,
            "level_key": spec.level_key,
            "level": spec.level,
            "flow": spec.flow,
            "clip": spec.clip,
            "drawing": self.record.drawing,
        }
        files.write_trajectories(paths.trajectories, xs, us, spec.seeds, meta)
        for path, order in ((paths.csv, ["seed", "epoch"]), (paths.diagnostics, ["seed", "epoch", "t"])):
            if path.exists():
                frame = read_run_csv(path, spec.epochs)
                files.write_csv(path, frame.sort_values(order, kind="stable"))

    def _meta(self, spec: RunSpec, epochs_done: int, history: list[dict]) -> dict:
        mine = {
            "worker": worker_name(),
            "from_epoch": self.record.start_epoch,
            "to_epoch": epochs_done,
            "started": _iso(self.started),
            "updated": _iso(time.time()),
        }
        meta = {
            "run_id": spec.run_id,
            "status": "complete" if epochs_done >= spec.epochs else "running",
            "epochs_done": epochs_done,
            "config": spec.as_dict(),
            "versions": files.versions(),
            **self.record.sidecar,
            "history": [*history, mine],
        }
        if spec.level in self.record.optima:
            meta["optimal_loss"] = self.record.optima[spec.level]
        return meta

    def _metric_rows(self, spec: RunSpec, chunk: Chunk, rows: slice) -> pd.DataFrame:
        """Tidy rows (seed-major, then epoch) for epochs ``chunk.start + 1 ... + chunk.n``."""
        n = chunk.n
        frame = _config_frame(spec, len(spec.seeds) * n, RUN_CONFIG)
        frame["seed"] = np.repeat(np.asarray(spec.seeds), n)
        frame["epoch"] = np.tile(np.arange(chunk.start + 1, chunk.start + n + 1), len(spec.seeds))
        for name, values in chunk.metrics.items():
            frame[name] = values[rows, :n].reshape(-1).astype(np.float64)
        if spec.level in self.record.optima:
            frame["optimality_gap"] = frame["test_loss"] / self.record.optima[spec.level] - 1.0
        frame["epoch_seconds"] = chunk.seconds
        frame["diverged"] = chunk.diverged[rows, :n].reshape(-1)
        return frame

    def _diagnostic_rows(self, spec: RunSpec, epoch: int, arrays, rows: slice) -> pd.DataFrame:
        """One row per (seed, t), t = 0 ... Nt; per-step quantities are empty at t = Nt."""
        n_seeds, n_t = len(spec.seeds), self.record.n_steps + 1
        frame = _config_frame(spec, n_seeds * n_t, DIAGNOSTIC_CONFIG)
        frame["seed"] = np.repeat(np.asarray(spec.seeds), n_t)
        frame["epoch"] = epoch
        frame["t"] = np.tile(np.arange(n_t), n_seeds)
        pad = np.full((n_seeds, 1), np.nan)
        for name, values in arrays.items():
            values = np.asarray(values[rows], np.float64)
            if values.shape[1] < n_t:  # per step: nothing at t = Nt
                values = np.concatenate([values, pad], axis=1)
            frame[name] = values.reshape(-1)
        return frame


def _config_frame(spec: RunSpec, n: int, columns) -> pd.DataFrame:
    """The run's configuration columns; ``precision`` only where it is not float32, so that the
    CSVs of earlier releases' runs (which have no such column) resume with the same columns."""
    frame = pd.DataFrame({name: getattr(spec, name) for name in columns}, index=range(n))
    if spec.precision != "float32":
        frame.insert(list(columns).index("clip") + 1, "precision", spec.precision)
    return frame


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
