"""Which runs share a compiled program: one small pure function, apart from the loop that trains.

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

from bptt_cli.config import RunSpec
from bptt_cli.core.devices import Profile
from bptt_cli.core.flow_names import flow_rank
from bptt_cli.core.task import ProblemDef


@dataclass(frozen=True)
class Program:
    """Runs trained together by one compiled, vmapped program.

    Attributes:
      level: the static level (one shape), the level every row is padded to (``padded``), or
        None when the level is a traced number.
      flow: the flow shared by every row, or None when the flow is per-row data.
      pair: with per-row flows, some row is C (every row computes g_R and g_M).
      start_epoch: where every run of the program resumes (0 for fresh runs).
    """

    problem: str
    problem_ref: str
    options: tuple
    level: Any
    padded: bool
    flow: str | None
    pair: bool
    optimizer: str
    batch_size: int
    n_data: int
    data_seed: int
    epochs: int
    start_epoch: int
    runs: tuple[RunSpec, ...]

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
    def single_gradient(self) -> bool:
        """Whether a row computes one gradient (C, or any row of a paired program, needs two)."""
        return not (self.pair or self.flow == "C")

    def describe(self) -> str:
        first = self.runs[0]
        levels = ",".join(map(str, self.levels))
        shape = f" (padded to {self.level})" if self.padded else ""
        clips = "/".join(sorted({s.clip for s in self.runs}))
        resume = f", resumes at epoch {self.start_epoch}" if self.start_epoch else ""
        return (
            f"{self.problem} {first.level_key}={levels}{shape} · flows {','.join(self.flows)} · "
            f"clips {clips} · {len(self.runs)} run(s) × {len(first.seeds)} seed(s) = {self.rows} rows · "
            f"{self.epochs} epochs{resume}"
        )


def plan(
    work: Sequence[tuple[RunSpec, int]], profile: Profile, problem_of: Callable[[str], ProblemDef]
) -> list[Program]:
    """Group ``(run, start_epoch)`` pairs into programs, in a deterministic order (the order of
    first appearance in ``work``, flows R, M, C, S, T<k> within a problem)."""
    groups: dict[tuple, list[RunSpec]] = {}
    for spec, start in work:
        problem = problem_of(spec.problem_ref or spec.problem)
        padded = bool(problem.level_is_static and profile.pad_levels and problem.make_padded_task)
        level = spec.level if problem.level_is_static and not padded else None
        flow = None if profile.merge_flows else spec.flow
        key = (
            spec.problem_ref or spec.problem,
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
        )
        groups.setdefault(key, []).append(spec)

    programs = []
    for key, specs in groups.items():
        ref, options, padded, level, flow, optimizer, batch_size, n_data, data_seed, epochs, start = key
        programs.append(
            Program(
                problem=specs[0].problem,
                problem_ref=ref,
                options=options,
                level=max(s.level for s in specs) if padded else level,
                padded=padded,
                flow=flow,
                pair=flow is None and any(s.flow == "C" for s in specs),
                optimizer=optimizer,
                batch_size=batch_size,
                n_data=n_data,
                data_seed=data_seed,
                epochs=epochs,
                start_epoch=start,
                runs=tuple(specs),
            )
        )
    first_seen = {}
    for i, (spec, _) in enumerate(work):
        first_seen.setdefault(spec.problem_ref or spec.problem, i)
    return sorted(
        programs,
        key=lambda p: (
            first_seen[p.problem_ref],
            p.start_epoch,
            -1 if p.level is None else p.level,
            flow_rank(p.flow) if p.flow else (-1, 0, ""),
        ),
    )


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
