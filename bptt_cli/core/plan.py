"""The plan, decided without jax: which runs share a compiled program, how a program's rows
are laid out, and in which chunks of epochs it advances.

Everything that can be a row of the vmapped axis is a row: seeds, clip modes, learning rates
and numeric levels always; on a GPU also flows (as per-row gates) and shape-changing levels
(padded to the largest). What stays static (the optimizer, the minibatch size, the data, the
epochs, where a resumed run restarts) splits programs. Also here: the deterministic share of a
grid that ``--shard K/N`` takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bptt_cli.core.devices import Profile
from bptt_cli.core.flow_names import flow_def, flow_rank
from bptt_cli.core.spec import RunSpec
from bptt_cli.core.task import ProblemDef

MAX_CHUNK = 64  # epochs per compiled call at most (the metric buffers' length)


@dataclass(frozen=True)
class Program:
    """Runs trained together by one compiled, vmapped program.

    Attributes:
      level: the static level (one shape), the level every row is padded to
        (``levels_padded``), or None when the level is a traced number.
      flow: the flow shared by every row, or None when the flow is per-row data.
      start_epoch: where every run of the program resumes (0 for fresh runs).
    """

    problem: str
    problem_ref: str
    options: tuple
    level: Any
    levels_padded: bool
    flow: str | None
    optimizer: str
    batch_size: int
    n_data: int
    data_seed: int
    epochs: int
    start_epoch: int
    runs: tuple[RunSpec, ...]
    precision: str = "float32"

    @property
    def rows(self) -> int:
        return sum(len(spec.seeds) for spec in self.runs)

    @property
    def flows(self) -> list[str]:
        return sorted({s.flow for s in self.runs}, key=flow_rank)

    @property
    def levels(self) -> list:
        return sorted({s.level for s in self.runs})

    @property
    def passes(self) -> int:
        """Backward passes per row and minibatch: 2 where some row's flow is combined (in a
        paired program every row runs two), else 1."""
        return max(flow_def(flow).passes for flow in self.flows)

    @property
    def pair(self) -> bool:
        """With per-row flows, whether some row is a combined flow (every row then computes
        two gradients in one vmapped pass)."""
        return self.flow is None and self.passes == 2

    def describe(self) -> str:
        first = self.runs[0]
        levels = ",".join(map(str, self.levels))
        shape = f" (padded to {self.level})" if self.levels_padded else ""
        clips = "/".join(sorted({s.clip for s in self.runs}))
        resume = f", resumes at epoch {self.start_epoch}" if self.start_epoch else ""
        wide = f" · {self.precision}" if self.precision != "float32" else ""
        return (
            f"{self.problem} {first.level_key}={levels}{shape} · flows {','.join(self.flows)} · "
            f"clips {clips} · {len(self.runs)} run(s) × {len(first.seeds)} seed(s) = {self.rows} rows · "
            f"{self.epochs} epochs{wide}{resume}"
        )


def plan(
    work: Sequence[tuple[RunSpec, int]], profile: Profile, problem_of: Callable[[str], ProblemDef]
) -> list[Program]:
    """Group ``(run, start_epoch)`` pairs into programs, in a deterministic order (the order of
    first appearance in ``work``, flows R, M, C, S, T<k> within a problem)."""
    groups: dict[tuple, list[RunSpec]] = {}
    for spec, start in work:
        problem = problem_of(spec.problem_source)
        padded = bool(problem.level_is_static and profile.pad_levels and problem.make_padded_task)
        level = spec.level if problem.level_is_static and not padded else None
        flow = None if profile.merge_flows else spec.flow
        key = (
            spec.problem_source,
            spec.options,
            padded,
            level,
            flow,
            spec.optimizer,
            spec.batch_size,
            spec.n_data,
            spec.data_seed,
            spec.epochs,
            start,
            spec.precision,
        )
        groups.setdefault(key, []).append(spec)

    programs = []
    for key, specs in groups.items():
        (
            ref,
            options,
            padded,
            level,
            flow,
            optimizer,
            batch_size,
            n_data,
            data_seed,
            epochs,
            start,
            precision,
        ) = key
        programs.append(
            Program(
                problem=specs[0].problem,
                problem_ref=ref,
                options=options,
                level=max(s.level for s in specs) if padded else level,
                levels_padded=padded,
                flow=flow,
                optimizer=optimizer,
                batch_size=batch_size,
                n_data=n_data,
                data_seed=data_seed,
                epochs=epochs,
                start_epoch=start,
                runs=tuple(specs),
                precision=precision,
            )
        )
    first_seen = {}
    for i, (spec, _) in enumerate(work):
        first_seen.setdefault(spec.problem_source, i)
    return sorted(
        programs,
        key=lambda p: (
            first_seen[p.problem_ref],
            p.start_epoch,
            -1 if p.level is None else p.level,
            flow_rank(p.flow) if p.flow else (-1, 0, ""),
        ),
    )


@dataclass(frozen=True)
class Plan:
    """What a grid still needs, made once (``runner.plan_runs``) and handed down to whatever
    shows, counts, compiles or trains it: in one process or split over a pool of workers.

    Attributes:
      programs: the programs to train, in order.
      complete: the runs found complete when the plan was made (an unlocked look: a worker
        checks each run again once it has claimed it).
    """

    programs: tuple[Program, ...]
    complete: tuple[RunSpec, ...] = ()

    @property
    def runs(self) -> list[RunSpec]:
        """The runs to train."""
        return [spec for program in self.programs for spec in program.runs]

    @property
    def run_epochs(self) -> int:
        """Run-epochs to train (epochs left times seeds, summed over the runs)."""
        return sum((p.epochs - p.start_epoch) * len(spec.seeds) for p in self.programs for spec in p.runs)

    def rotated(self, first: int) -> Plan:
        """The same plan starting at program ``first`` (wrapping around), so that workers sharing
        a grid start on different programs."""
        if not self.programs:
            return self
        k = first % len(self.programs)
        return Plan(self.programs[k:] + self.programs[:k], self.complete)


@dataclass(frozen=True)
class RowLayout:
    """A program's vmapped axis: each run's seeds in turn, then filler rows (copies of the last
    row, never committed) up to a multiple of the device count, so the axis shards evenly.

    Attributes:
      rows: ``(run, seed)`` per row, fillers included.
      slices: run id -> the run's rows.
    """

    rows: tuple[tuple[RunSpec, int], ...]
    slices: dict[str, slice]

    @classmethod
    def of(cls, program: Program, n_devices: int) -> RowLayout:
        real = [(spec, seed) for spec in program.runs for seed in spec.seeds]
        bounds = np.cumsum([0] + [len(spec.seeds) for spec in program.runs])
        slices = {
            spec.run_id: slice(int(lo), int(hi))
            for spec, lo, hi in zip(program.runs, bounds[:-1], bounds[1:], strict=True)
        }
        return cls(tuple(real + [real[-1]] * (-len(real) % n_devices)), slices)

    @property
    def n_real(self) -> int:
        """Rows that belong to a run (the fillers excluded)."""
        return max(s.stop for s in self.slices.values())


def chunk_stops(program: Program) -> list[int]:
    """Epochs at which a chunk must end: the diagnosed epochs inside the program's span (the
    diagnostics are taken there) and its last epoch."""
    diagnosed = {e for spec in program.runs for e in spec.diagnostics}
    return sorted({e for e in diagnosed if program.start_epoch < e < program.epochs} | {program.epochs})


def next_chunk(done: int, wanted: int, stops: Sequence[int], cap: int = MAX_CHUNK) -> int:
    """Epochs in the chunk after ``done``: ``wanted`` (the host's choice, for a steady commit
    rate), at least 1, at most ``cap``, never past the next stop."""
    stop = next(s for s in stops if s > done)
    return max(1, min(wanted, cap, stop - done))


@dataclass
class Chunk:
    """A chunk of epochs as fetched to the host (NumPy arrays), ready to commit.

    Attributes:
      start, n: the chunk trained epochs ``start + 1 ... start + n``.
      metrics: name -> ``(rows, max_chunk)``, NaN past ``n``; ``diverged`` likewise (bool).
      leaves: the training state's leaves after the chunk, each ``(rows, ...)``.
      diagnostics: ``(epoch, name -> (rows, n_steps or n_steps + 1))`` taken in this chunk
        (epoch 0's come with the first chunk).
      trajectories: ``(xs, us)`` per row after the last epoch, else None.
      seconds: wall seconds per epoch, measured between landings.
    """

    start: int
    n: int
    metrics: dict[str, Any]
    diverged: Any
    leaves: list
    diagnostics: list[tuple[int, dict[str, Any]]]
    trajectories: Any
    seconds: float


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` with ``1 <= K <= N`` -> ``(K, N)``; ValueError otherwise."""
    parts = text.strip().split("/")
    try:
        k, n = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"invalid shard {text!r}; allowed: K/N with 1 <= K <= N, e.g. 2/4") from None
    if not 1 <= k <= n:
        raise ValueError(f"invalid shard {text!r}; allowed: K/N with 1 <= K <= N, e.g. 2/4")
    return k, n


def shard_from_environment(env: dict[str, str]) -> tuple[int, int] | None:
    """``(K, N)`` of a SLURM array task (task ids may start anywhere), or None outside one."""
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
    first = int(env.get("SLURM_ARRAY_TASK_MIN", 0 if task < count else 1))
    return parse_shard(f"{task - first + 1}/{count}")


def shard(specs: Sequence[RunSpec], k: int, n: int) -> list[RunSpec]:
    """Share ``k`` of ``n`` of a grid: a contiguous block of the grid's order (levels, then
    flows, then clips), so that a share trains few programs. Every worker computes the same
    split from the same command, whatever its device."""
    lo, hi = (len(specs) * (k - 1)) // n, (len(specs) * k) // n
    return list(specs[lo:hi])
