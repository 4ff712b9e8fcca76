"""What a run's files prove, and bringing damaged files back to it.

Before a run is resumed or counted complete, its files are read back whole (``inspect_run``):
each checkpoint (the last and the previous one) must load and belong to the run, the metrics
CSV must hold every (seed, epoch) row up to the epoch resumed from, the diagnostics CSV every
(seed, t) row of each diagnosed epoch up to it, and a complete run needs a readable sidecar and
trajectories. The run resumes from the latest checkpoint that all of them prove, or restarts
when none does; which rows get recomputed follows from that. A published run (gzipped CSVs, no
checkpoint) is complete when its files are whole, and is recomputed in full when they are not.

A damaged file is never deleted: ``repair`` (called under the run's lock) moves a checkpoint, a
sidecar or a trajectories file that cannot be read aside, to ``<name>.damaged-<UTC time>``;
a CSV with bad lines is copied there before its valid rows are written back. Each damaged file
gets one ``warning:`` line saying what was wrong and which rows are recomputed.

Damage is told apart from what a kill leaves behind: rows, or a torn line, after the last row
the checkpoint commits are the in-flight tail of an interrupted commit, cut back silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bptt_cli.core.spec import RunSpec
from bptt_cli.results import files
from bptt_cli.results.files import Checkpoint, DamagedFile, RunFiles
from bptt_cli.results.read import CsvScan, read_trajectories, scan_csv, warn


@dataclass(frozen=True)
class Damage:
    """A damaged file of a run.

    Attributes:
      path: the file.
      problem: what is wrong with it, as a phrase (``"does not load (BadZipFile: ...)"``).
      set_aside: the file is moved aside (it cannot be used); else it is a CSV whose valid
        rows are kept (a copy of it is set aside before they are written back).
      lost: the committed rows it no longer holds, as a phrase, or "".
    """

    path: Path
    problem: str
    set_aside: bool
    lost: str = ""


@dataclass(frozen=True)
class RunState:
    """Where a run stands according to its files.

    Attributes:
      start: the epochs they prove: the run resumes after epoch ``start`` (0: from scratch).
      checkpoint: the file holding the training state after ``start`` epochs (None at 0).
      epochs: the run's epochs (``start == epochs``: complete).
      damage: the damaged files, each with what was wrong.
    """

    start: int
    checkpoint: Path | None
    epochs: int
    damage: tuple[Damage, ...] = ()

    @property
    def complete(self) -> bool:
        return self.start >= self.epochs


Fits = Callable[[list[np.ndarray]], str | None]  # why leaves cannot be the run's state, or None


def inspect_run(spec: RunSpec, folder: Path, fits: Fits | None = None) -> RunState:
    """What the files of ``spec`` under ``folder`` prove (reads only; see the module docstring).
    ``fits`` checks a checkpoint's leaves against the training state they are to restore.

    Reading a run whole takes tens of milliseconds; a command looks at every run more than
    once (how many workers, what is left, what a claim finds), so the answer is kept while the
    files stay as they are (same size, time and inode)."""
    if fits is not None:
        return _inspect(spec, folder, fits)
    key = (
        spec.run_id,
        spec.epochs,
        spec.seeds,
        spec.diagnostics,
        folder,
        _signature(RunFiles.of(folder, spec.run_id)),
    )
    if key not in _inspected:
        if len(_inspected) > 4096:
            _inspected.clear()
        _inspected[key] = _inspect(spec, folder, None)
    return _inspected[key]


_inspected: dict[tuple, RunState] = {}


def _signature(paths: RunFiles) -> tuple:
    signature = []
    for path in (*paths.outputs, *paths.published):
        try:
            stat = path.stat()
        except FileNotFoundError:
            signature.append(None)
        else:
            signature.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(signature)


def _inspect(spec: RunSpec, folder: Path, fits: Fits | None) -> RunState:
    paths = RunFiles.of(folder, spec.run_id)
    damage: list[Damage] = []
    meta, meta_problem = _read_meta(paths.meta, spec.run_id)
    states: dict[Path, int] = {}
    _read_state(paths.checkpoint, spec, fits, states, damage)
    if paths.checkpoint not in states:
        _read_state(paths.previous, spec, fits, states, damage)
    stated = meta.get("epochs_done", 0) if meta else 0
    claimed = max([*states.values(), stated if isinstance(stated, int) else 0])
    if claimed == 0:  # nothing committed: nothing to prove (the run starts afresh)
        if meta_problem not in (None, "is missing"):
            damage.append(Damage(paths.meta, meta_problem, set_aside=True))
        return RunState(0, None, spec.epochs, tuple(damage))
    # Published data (``publish``): a finished run's gzipped CSVs, without checkpoints.
    published = not states and not paths.csv.exists() and gzipped(paths.csv).exists()
    if not states and not published:
        damage.append(Damage(paths.checkpoint, f"is missing (the sidecar states {claimed} epochs)", False))
    csvs = [gzipped(path) if published else path for path in (paths.csv, paths.diagnostics)]
    proven = min(
        _metrics_proven(csvs[0], spec, claimed, damage),
        _diagnostics_proven(csvs[1], spec, claimed, damage),
    )
    if meta_problem is not None:
        damage.append(Damage(paths.meta, meta_problem, set_aside=meta_problem != "is missing"))
        proven = min(proven, spec.epochs - 1)  # the sidecar is written again by the last chunk
    if proven >= spec.epochs and (max(states.values(), default=0) >= spec.epochs or published):
        problem = _trajectories_problem(paths.trajectories, spec)
        if problem is not None and not (published and problem == "is missing"):
            damage.append(Damage(paths.trajectories, problem, set_aside=problem != "is missing"))
            proven = spec.epochs - 1
    if published:  # complete when whole; else recomputed in full (the damaged files set aside)
        damage = [Damage(d.path, d.problem, d.path.exists(), d.lost) for d in damage]
        return RunState(spec.epochs if proven >= spec.epochs else 0, None, spec.epochs, tuple(damage))
    if states.get(paths.checkpoint, 0) > proven and paths.previous not in states:
        _read_state(paths.previous, spec, fits, states, damage)  # the previous one may be proven
    usable = [(epochs, path == paths.checkpoint, path) for path, epochs in states.items() if epochs <= proven]
    if not usable:
        return RunState(0, None, spec.epochs, tuple(damage))
    start, _, path = max(usable)
    return RunState(start, path, spec.epochs, tuple(damage))


def repair(spec: RunSpec, folder: Path, state: RunState) -> None:
    """Bring the run's files to ``state`` (under the run's lock): damaged files set aside with
    one warning line each, the checkpoint resumed from in its place, and temporary files a
    killed worker left removed. The CSVs are cut back to the start by the writer that resumes
    the run (their valid rows only)."""
    paths = RunFiles.of(folder, spec.run_id)
    if state.start == 0:
        outcome = "restarts from epoch 0"
    elif state.complete:
        outcome = "is complete"
    elif state.checkpoint == paths.previous:
        outcome = f"resumes from epoch {state.start} (its previous checkpoint)"
    else:
        outcome = f"resumes from epoch {state.start}"
    for damage in state.damage:
        kept = ""
        if damage.path.exists():
            aside = files.set_aside(damage.path, copy=not damage.set_aside)
            kept = f"; {'set aside' if damage.set_aside else 'its valid rows kept, the file copied'} as {aside.name}"
        lost = f"; rows recomputed: {damage.lost}" if damage.lost and not state.complete else ""
        warn(f"{damage.path}: {damage.problem}{kept}{lost}; run {spec.run_id} {outcome}")
    with files.writing(paths.checkpoint):
        if state.checkpoint == paths.previous:
            os.replace(paths.previous, paths.checkpoint)
        for stale in folder.glob(f".{spec.run_id}.*.tmp"):  # a killed worker's unfinished writes
            stale.unlink(missing_ok=True)


def epochs_committed(spec: RunSpec, out: Path) -> int:
    """Epochs of ``spec`` committed under ``out``: those its files prove."""
    return inspect_run(spec, out / spec.experiment).start


def saved_states(specs: list[RunSpec], out: Path) -> dict[str, list[np.ndarray]]:
    """Run id -> checkpointed training-state leaves, for the runs that have committed epochs
    (read after ``repair``, which puts the checkpoint resumed from in its place)."""
    saved = {}
    for spec in specs:
        try:
            checkpoint = files.read_checkpoint(RunFiles.of(out / spec.experiment, spec.run_id).checkpoint)
        except (FileNotFoundError, DamagedFile):
            continue
        saved[spec.run_id] = checkpoint.leaves
    return saved


# --- each file's part ---------------------------------------------------------------------


def _read_state(
    path: Path, spec: RunSpec, fits: Fits | None, states: dict[Path, int], damage: list[Damage]
) -> None:
    """Add the checkpoint at ``path`` to ``states`` if it can be the run's, to ``damage`` if not."""
    try:
        checkpoint = _checked(files.read_checkpoint(path), spec)
        problem = fits(checkpoint.leaves) if fits is not None else None
        if problem is not None:
            raise DamagedFile(problem)
        states[path] = checkpoint.epochs_done
    except FileNotFoundError:
        pass
    except DamagedFile as err:
        damage.append(Damage(path, str(err), set_aside=True))


def gzipped(path: Path) -> Path:
    """A CSV's published (gzipped) form."""
    return path.with_name(path.name + ".gz")


def _checked(checkpoint: Checkpoint, spec: RunSpec) -> Checkpoint:
    """``checkpoint``, if it can be the run's (its shapes are checked against the program later)."""
    if checkpoint.run_id is not None and checkpoint.run_id != spec.run_id:
        raise DamagedFile(f"belongs to run {checkpoint.run_id}")
    if checkpoint.leaves[0].shape[0] != len(spec.seeds):
        raise DamagedFile(f"holds {checkpoint.leaves[0].shape[0]} seeds, the run has {len(spec.seeds)}")
    if checkpoint.epochs_done > spec.epochs:
        raise DamagedFile(f"states {checkpoint.epochs_done} epochs, the run has {spec.epochs}")
    return checkpoint


def _read_meta(path: Path, run_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """The sidecar and what is wrong with it (None when nothing is)."""
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None, "is missing"
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"is not readable JSON ({files.reason(err)})"
    if (
        not isinstance(meta, dict)
        or meta.get("run_id") != run_id
        or not isinstance(meta.get("epochs_done"), int)
    ):
        return None, "is not this run's sidecar (run_id or epochs_done missing or wrong)"
    return meta, None


def _scan(path: Path, run_id: str) -> CsvScan | None:
    try:
        return scan_csv(path, run_id)
    except FileNotFoundError:
        return None


def _committed_damage(scan: CsvScan, frame: pd.DataFrame, committed: pd.Series) -> bool:
    """Whether the scan's bad lines touch committed rows: a bad line before the last committed
    row, or a duplicate. Bad lines after it (a torn last line above all) are what a kill during
    an append leaves, not damage."""
    if scan.unusable or scan.duplicates:
        return True
    if not scan.bad_lines:
        return False
    last = frame.loc[committed, "_line"].max() if committed.any() else 0
    return scan.bad_lines[0] < last


def _metrics_proven(path: Path, spec: RunSpec, claimed: int, damage: list[Damage]) -> int:
    """Epochs whose metrics rows are all in the CSV (every seed, epochs 1 ... that)."""
    scan = _scan(path, spec.run_id)
    if scan is None:
        damage.append(
            Damage(path, f"is missing (the run states {claimed} epochs)", False, _lost(spec, {}, claimed))
        )
        return 0
    frame = _with_lines(scan)
    frame = (
        frame[frame["seed"].isin(spec.seeds) & frame["epoch"].between(1, spec.epochs)]
        if len(frame)
        else frame
    )
    have = {seed: set(group["epoch"]) for seed, group in frame.groupby("seed")} if len(frame) else {}
    proven = min(_first_gap(have.get(seed, set())) for seed in spec.seeds)
    lost = _lost(spec, have, claimed)
    committed = frame["epoch"] <= claimed if len(frame) else pd.Series(dtype=bool)
    if lost or _committed_damage(scan, frame, committed):
        damage.append(Damage(path, scan.problems() or "rows missing", False, lost))
        proven = min(proven, spec.epochs - 1)  # a damaged file is written again
    return proven


def _diagnostics_proven(path: Path, spec: RunSpec, claimed: int, damage: list[Damage]) -> int:
    """Epochs before the first diagnosed epoch whose rows are not all there: every (seed, t)
    of each epoch present; in a clean file, from its first diagnosed epoch on, every epoch the
    definition diagnoses up to ``claimed`` (diagnostics switched on part-way are no damage);
    in a damaged one, every such epoch. Without a file nothing is required (it may never have
    been recorded)."""
    scan = _scan(path, spec.run_id)
    if scan is None:
        return spec.epochs
    frame = _with_lines(scan)
    if len(frame):
        frame = frame[frame["seed"].isin(spec.seeds) & frame["epoch"].between(0, spec.epochs)]
    committed = frame["epoch"] <= claimed if len(frame) else pd.Series(dtype=bool)
    damaged = _committed_damage(scan, frame, committed)
    frame = frame[committed] if len(frame) else frame
    present: dict[int, int] = {}
    n_t = 0
    if len(frame):
        n_t = int(frame["t"].max()) + 1
        present = {int(e): int(n) for e, n in frame.groupby("epoch").size().items()}  # rows are unique
    due = [e for e in spec.diagnostics if e <= claimed]
    if not damaged and present:
        due = [e for e in due if e >= min(present)]
    whole = len(spec.seeds) * n_t
    missing = sorted({e for e, n in present.items() if n < whole} | {e for e in due if e not in present})
    if not (missing or damaged):
        return spec.epochs
    lost = (
        f"diagnostics of epoch{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
        if missing
        else ""
    )
    damage.append(Damage(path, scan.problems() or "rows missing", False, lost))
    return min([e - 1 for e in missing] + [spec.epochs - 1])


def _trajectories_problem(path: Path, spec: RunSpec) -> str | None:
    try:
        _, _, seeds, meta = read_trajectories(path)
    except FileNotFoundError:
        return "is missing"
    except DamagedFile as err:
        return str(err)
    if meta.get("run_id") != spec.run_id or [int(s) for s in seeds] != list(spec.seeds):
        return "belongs to another run (run_id or seeds differ)"
    return None


def _with_lines(scan: CsvScan) -> pd.DataFrame:
    return scan.frame.assign(_line=scan.lines) if len(scan.frame) else scan.frame


def _first_gap(epochs: set[int]) -> int:
    """The largest e with epochs 1 ... e all present."""
    e = 0
    while e + 1 in epochs:
        e += 1
    return e


def _lost(spec: RunSpec, have: dict[int, set[int]], claimed: int) -> str:
    """The (seed, epoch) rows up to ``claimed`` missing from ``have``, e.g. "seed 43 epochs 1-3"."""
    parts = []
    for seed in spec.seeds:
        missing = [e for e in range(1, claimed + 1) if e not in have.get(seed, set())]
        if missing:
            parts.append(f"seed {seed} epoch{'s' if len(missing) > 1 else ''} {_ranges(missing)}")
    return "; ".join(parts)


def _ranges(numbers: list[int]) -> str:
    spans, first = [], numbers[0]
    for previous, current in zip(numbers, [*numbers[1:], None], strict=True):
        if current != previous + 1 if current is not None else True:
            spans.append(f"{first}" if first == previous else f"{first}-{previous}")
            first = current
    return ", ".join(spans)
