"""The Python API of grids and results; ``bptt-run`` is a thin layer over it.

Two calls for a user (re-exported as ``bptt_cli.run`` and ``bptt_cli.load``)::

    metrics, diagnostics = bptt_cli.run("cartpole", scale="smoke", flows=["R", "C"], workers=1)
    metrics, diagnostics = bptt_cli.load("docs/data/quantum-census")

and the steps ``run`` takes, one function each, which the command line calls between its
printing: :func:`place` (where this process computes), :func:`grid` (a definition with a scale
and overrides, validated and expanded into runs), :func:`check` (folders, lock files, each
problem's contract), :func:`plan` (made once, and handed to everything that follows),
:func:`n_workers` and :func:`train` (in this process, or a pool of worker processes). Bad input
raises ``UserError`` with a one-line message naming the value and what is allowed, before
anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from bptt_cli import config
from bptt_cli.api import checks
from bptt_cli.config import UserError
from bptt_cli.core import devices as policy
from bptt_cli.core.plan import Plan
from bptt_cli.core.spec import RunSpec
from bptt_cli.results import DiskError, LockError

if TYPE_CHECKING:
    import pandas as pd

    from bptt_cli.runner import Progress, Report

__all__ = [
    "Grid",
    "Results",
    "UserError",
    "WorkerError",
    "check",
    "check_devices",
    "grid",
    "load",
    "n_workers",
    "place",
    "plan",
    "run",
    "train",
]


class Results(NamedTuple):
    """Tidy results: one row per run, seed and epoch (``metrics``) and per run, seed, diagnosed
    epoch and step (``diagnostics``), with the configuration's columns (``experiment``,
    ``run_id``, ``level``, ``flow``, ``clip``, ...; ``level`` a number)."""

    metrics: pd.DataFrame
    diagnostics: pd.DataFrame


class WorkerError(RuntimeError):
    """A worker process failed without a one-line reason (its traceback is on stderr)."""


@dataclass(frozen=True)
class Grid:
    """A definition resolved into runs.

    Attributes:
      experiment: the parsed definition; ``scale``: the scale applied.
      specs: every run of the grid; ``share``: ``(K, N)`` when this process trains share K of N.
    """

    experiment: config.Experiment
    scale: str
    specs: list[RunSpec]
    share: tuple[int, int] | None = None

    @property
    def mine(self) -> list[RunSpec]:
        """The runs this process trains: its share, else the whole grid."""
        from bptt_cli.core.plan import shard

        return shard(self.specs, *self.share) if self.share else self.specs

    @property
    def rows(self) -> int:
        """The rows of this process's runs: no program of them is wider."""
        return sum(len(spec.seeds) for spec in self.mine)

    @property
    def steps(self) -> int:
        """Optimizer steps of this process's longest run."""
        return max((s.epochs * (s.n_data // s.batch_size) for s in self.mine), default=0)


def place(
    device: str = "auto", devices: int | None = None, target: str | None = None, the_grid: Grid | None = None
) -> policy.Placement:
    """Where this process computes (``core.devices.configure``): ``device`` ``"auto"``,
    ``"cpu"`` or ``"gpu"``; ``devices`` jax CPU devices (default: two per usable core, or only
    those the widest program of ``the_grid`` uses); a ``target`` GPU to compile for without one.
    Device counts take effect only where jax has not started a backend yet in this process (it
    reads them once); workers are fresh processes."""
    try:
        return policy.configure(device, devices, target=target, rows=the_grid.rows if the_grid else None)
    except ValueError as err:
        raise UserError(str(err)) from None


def check_devices(devices: int | None = None) -> None:
    """The device count asked for and those in the environment (``JAX_NUM_CPU_DEVICES``, a count
    in ``XLA_FLAGS``), refused before anything imports jax: it reads them once, and a bad one
    makes its import fail."""
    try:
        policy.cpu_devices(os.environ, policy.usable_cores(), devices)
    except ValueError as err:
        raise UserError(str(err)) from None


def grid(
    definition: str | Path | Mapping[str, Any] | config.Experiment,
    scale: str = "paper",
    *,
    name: str = "experiment",
    levels: Sequence | None = None,
    flows: Sequence[str] | None = None,
    clips: Sequence[str] | None = None,
    seeds: int | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    optimizer: str | None = None,
    precision: str | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    data_seed: int | None = None,
    options: Mapping[str, Any] | None = None,
    diagnostics: bool | None = None,
    shard: str | None = None,
) -> Grid:
    """A definition (a built-in name, a ``.toml`` path, or a mapping as the file would parse,
    named ``name``) at ``scale`` with overrides, validated and expanded into runs. ``shard``
    ``"K/N"`` takes share K of N (default in a SLURM array: the task's share)."""
    exp = _definition(definition, name)
    if exp.problem == "toy":
        raise UserError("the toy fields are not a grid; allowed: bptt-run toy, or a definition of a problem")
    specs = config.resolve(
        exp,
        scale,
        diagnostics=diagnostics,
        option_overrides=dict(options or {}),
        levels=list(levels) if levels else None,
        flows=list(flows) if flows else None,
        clips=list(clips) if clips else None,
        epochs=epochs,
        seeds=seeds,
        seed=seed,
        optimizer=optimizer,
        precision=precision,
        learning_rate=learning_rate,
        batch_size=batch_size,
        data_seed=data_seed,
    )
    return Grid(exp, scale.lower(), specs, checks.shard(shard))


def _definition(definition, name: str) -> config.Experiment:
    if isinstance(definition, config.Experiment):
        return definition
    if isinstance(definition, Mapping):
        return config.from_mapping(definition, name)
    if isinstance(definition, str | Path):
        return config.load(str(definition))
    raise UserError(f"invalid definition {definition!r}; allowed: a built-in name, a .toml path or a mapping")


def check(the_grid: Grid, out: Path) -> list[str]:
    """The results folder (writable, with working locks, reachable by every task of a SLURM
    array), its lock files and each problem's contract, before anything is written. Returns
    warnings (one line each)."""
    out = Path(out)
    checks.check_shared_out(out, os.environ)
    checks.check_out(out)
    checks.check_locks(the_grid.mine, out)
    return checks.check_problem(the_grid.specs)


def plan(the_grid: Grid, out: Path, profile: policy.Profile, force: bool = False) -> Plan:
    """The plan of this process's share under ``out``: made once, handed to the listing, the
    worker count, the GPU compile and the workers."""
    from bptt_cli import runner

    return runner.plan_runs(the_grid.mine, Path(out), profile, force)


def n_workers(asked: int | None, placement: policy.Placement, profile: policy.Profile, the_plan: Plan) -> int:
    """Worker processes for this machine: as asked (at most one per usable core), else on a CPU
    whose device count we chose one per core, at most one per program; else 1."""
    _check_workers(asked)
    cores = policy.usable_cores()
    if asked is not None:
        return min(asked, cores)
    if profile.platform != "cpu" or not placement.fit:
        return 1
    return max(1, min(cores, len(the_plan.programs)))


def _check_workers(asked: int | None) -> None:
    if asked is not None and asked < 1:
        raise UserError(f"invalid workers {asked}; allowed: a positive integer")


def train(
    the_plan: Plan,
    out: Path,
    profile: policy.Profile,
    *,
    workers: int = 1,
    grouping: str = "auto",
    force: bool = False,
    progress: Callable[[Progress], None] | None = None,
) -> Report:
    """Train ``the_plan`` under ``out`` in this process, or with ``workers`` processes pinned to
    their own cores. A full disk or a foreign lock file raises ``UserError`` (once, whichever
    worker met it); a worker that crashed raises ``WorkerError``. An interrupt (Ctrl-C) returns
    a report with ``interrupted`` set: what was committed is kept, and training again resumes."""
    from bptt_cli import runner

    out = Path(out)
    if workers <= 1:
        try:
            return runner.run(the_plan, out, force=force, profile=profile, progress=progress)
        except (DiskError, LockError) as err:
            raise UserError(str(err)) from None
    from bptt_cli import workers as pool

    def tell(done: int, total: int) -> None:
        if progress is not None:
            progress(runner.Progress(done, total, 0, 0, f"{workers} workers"))

    merged = pool.run_pool(the_plan, out, workers, force=force, grouping=grouping.lower(), progress=tell)
    if merged.errors:  # a full disk: said once, however many workers met it
        raise UserError("; ".join(merged.errors))
    if merged.failed:
        k, code = merged.failed[0]
        raise WorkerError(f"worker {k} failed with exit code {code}")
    return runner.Report(
        trained=merged.trained,
        found_complete=merged.found_complete,
        left_to_others=merged.left_to_others,
        interrupted=merged.interrupted,
    )


def run(
    definition: str | Path | Mapping[str, Any],
    scale: str = "paper",
    *,
    name: str = "experiment",
    levels: Sequence | None = None,
    flows: Sequence[str] | None = None,
    clips: Sequence[str] | None = None,
    seeds: int | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    optimizer: str | None = None,
    precision: str | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    data_seed: int | None = None,
    options: Mapping[str, Any] | None = None,
    diagnostics: bool | None = None,
    out: str | Path = "results",
    force: bool = False,
    device: str = "auto",
    devices: int | None = None,
    workers: int | None = None,
    grouping: str = "auto",
    shard: str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Results:
    """Train a grid, as ``bptt-run`` does, and return its runs' results (finished runs are
    skipped and interrupted ones resume, under ``out/<experiment>/``).

    ``definition`` is a built-in name, a ``.toml`` path or a mapping as such a file parses
    (named ``name``); the keywords override the definition's grid and ``[train]`` table as the
    command line's options do (``options`` its ``[options]``). ``workers`` defaults as
    ``bptt-run``'s ``--workers`` does (one process per core on a CPU); ``workers=1`` trains in
    this process, where ``progress`` is called with a ``runner.Progress`` after every chunk.
    Raises ``UserError`` for bad input, before anything is written.
    """
    from bptt_cli import runner

    if grouping.lower() not in policy.GROUPINGS:
        raise UserError(f"unknown grouping {grouping!r}; allowed: {', '.join(policy.GROUPINGS)}")
    _check_workers(workers)
    check_devices(devices)
    the_grid = grid(
        definition,
        scale,
        name=name,
        levels=levels,
        flows=flows,
        clips=clips,
        seeds=seeds,
        seed=seed,
        epochs=epochs,
        optimizer=optimizer,
        precision=precision,
        learning_rate=learning_rate,
        batch_size=batch_size,
        data_seed=data_seed,
        options=options,
        diagnostics=diagnostics,
        shard=shard,
    )
    placement = place(device.lower(), devices, the_grid=the_grid)
    out = Path(out)
    check(the_grid, out)
    profile = placement.profile(grouping.lower(), the_grid.steps)
    the_plan = plan(the_grid, out, profile, force)
    count = n_workers(workers, placement, profile, the_plan)
    report: runner.Report = train(
        the_plan, out, profile, workers=count, grouping=grouping.lower(), force=force, progress=progress
    )
    if report.interrupted:
        raise KeyboardInterrupt("interrupted: completed epochs are saved; run again to resume")
    return load(out / the_grid.experiment.name, runs=[spec.run_id for spec in the_grid.mine])


def load(folder: str | Path, runs: Sequence[str] | None = None) -> Results:
    """Every run below ``folder`` (a results folder of ``bptt-run``, or published data: json
    and csv.gz) as tidy frames, ``runs`` (run ids) only where given. Rows a run has not
    committed, or that cannot be read, are left out with a warning line per file."""
    import pandas as pd

    from bptt_cli.results import read_results

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"results folder {str(folder)!r} does not exist; allowed: a folder of bptt-run results"
        )
    frames = []
    for kind in ("metrics", "diagnostics"):
        frame = read_results(folder, kind)
        if runs is not None and not frame.empty:
            frame = frame[frame["run_id"].isin(set(runs))].reset_index(drop=True)
        if "level" in frame:
            frame["level"] = pd.to_numeric(frame["level"])
        frames.append(frame)
    return Results(*frames)
