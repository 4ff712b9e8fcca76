"""The checks of a run's input and environment, each raising one ``UserError`` line (the
command line's exit code 2) before anything is written: output folders, lock files, shards, a
GPU target, a problem's contract."""

from __future__ import annotations

import os
from pathlib import Path

from bptt_cli.config import UserError
from bptt_cli.results import LockError


def check_target(target: str, dry_run: bool) -> None:
    """A GPU to compile for (``--target``): a known name, with ``--dry-run``."""
    from bptt_cli.runner import aot

    if target not in aot.TARGETS:
        raise UserError(f"unknown target {target!r}; allowed: {', '.join(aot.TARGETS)}")
    if not dry_run:
        raise UserError(
            f"--target {target} compiles for a GPU without running anything; use it with --dry-run"
        )


def check_out(folder: Path, locks: bool = True) -> None:
    from bptt_cli.results import check_writable, probe_locks

    try:
        check_writable(folder)
    except PermissionError as err:
        raise UserError(
            f"output folder {str(folder)!r} is not writable ({err} is not a writable folder)"
        ) from None
    if locks:
        try:
            probe_locks(folder)
        except LockError as err:
            raise UserError(str(err)) from None


def check_shared_out(folder: Path, env) -> None:
    """In a SLURM array every task must reach the one results folder: refuse a folder inside
    the task's own temporary space (``TMPDIR``/``SLURM_TMPDIR`` where SLURM gives each job its
    own, or ``/dev/shm``), where each task would train the whole grid alone."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return
    resolved = folder.resolve()
    private = [
        (name, env[name]) for name in ("SLURM_TMPDIR", "TMPDIR") if env.get(name) not in (None, "", "/tmp")
    ]
    for name, place in [*private, ("/dev/shm", "/dev/shm")]:
        if resolved.is_relative_to(Path(place).resolve()):
            where = place if name == place else f"${name} = {place}"
            raise UserError(
                f"results folder {str(folder)!r} is in this array task's own temporary space ({where}); "
                "allowed: a folder every array task can reach (e.g. under the submit directory)"
            )


def check_locks(specs, out: Path) -> None:
    """Refuse lock files that are unreadable or not ours before anything is printed or written."""
    from bptt_cli.results import RunFiles, check_lock_file

    try:
        for spec in specs:
            check_lock_file(RunFiles.of(out / spec.experiment, spec.run_id).lock)
    except LockError as err:
        raise UserError(str(err)) from None


def shard(text: str | None) -> tuple[int, int] | None:
    from bptt_cli.core import plan

    try:
        if text is not None:
            return plan.parse_shard(text)
        return plan.shard_from_environment(dict(os.environ))
    except ValueError as err:
        raise UserError(str(err)) from None


def check_problem(specs) -> list[str]:
    """Each problem's contract, once per (problem, level, options), before training: evaluated
    abstractly for every problem; for a user's problem (not a built-in) also every
    transformation the run will apply and, on a few data states, whether ``step``'s gradients
    are dead. Returns the warnings (one line each); a broken contract is a ``UserError``."""
    from bptt_cli import problems

    seen, traced, warnings = set(), set(), []
    for spec in specs:
        key = (spec.problem_ref, spec.level, spec.options)
        if key in seen:
            continue
        seen.add(key)
        try:
            problem = problems.get(spec.problem_ref)
            problems.check(problem, spec.level, dict(spec.options))
            if spec.problem_ref in problems.NAMES:
                continue  # the built-in problems are tested
            trace = _trace_key(spec, problem)
            if trace not in traced:
                traced.add(trace)
                same = [s for s in specs if _trace_key(s, problem) == trace]
                problems.check_transforms(
                    problem,
                    spec.level,
                    dict(spec.options),
                    flows=[s.flow for s in same],
                    diagnostics=any(s.diagnostics for s in same),
                )
            warnings += problems.dead_gradients(problem, spec.level, dict(spec.options))
        except problems.ProblemError as err:
            raise UserError(str(err)) from None
    return warnings


def _trace_key(spec, problem) -> tuple:
    """Runs whose transformations one abstract trace checks: a level that is not static is
    traced, so one trace serves every level."""
    return (spec.problem_ref, spec.level if problem.level_is_static else None, spec.options)
