"""What the commands print: listings, the plan, the programs and their estimate, progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from bptt_cli import config

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)


def print_list() -> None:
    for name in config.builtin_names():
        exp = config.load(name)
        scales = ", ".join(config.scale_names(exp)) if exp.problem != "toy" else "-"
        out_console.print(f"{name:10s} {exp.description}  [scales: {scales}]", markup=False)


def print_info(placement) -> None:
    import jax

    from bptt_cli.core import devices
    from bptt_cli.results import versions

    for name, version in versions().items():
        out_console.print(f"{name:10s} {version}")
    out_console.print(f"{'backend':10s} {jax.default_backend()}")
    out_console.print(
        f"{'cores':10s} {devices.usable_cores()} usable by this process; "
        f"{placement.count} CPU device(s): {placement.why}"
    )
    for d in jax.devices():
        out_console.print(f"{'device':10s} {d.id}: {d.device_kind} ({d.platform})")


def print_plan(grid, out: Path, placement, n_workers: int) -> None:
    """The grid (an ``api.Grid``), and where it trains (without a ``placement``: nowhere here,
    as with --target)."""
    exp, scale, specs, share = grid.experiment, grid.scale, grid.specs, grid.share
    first = specs[0]
    levels = sorted({s.level for s in specs})
    mine = f"; this worker's share: {share[0]}/{share[1]}" if share else ""
    options = "".join(f"{key} {value}, " for key, value in first.options)
    err_console.print(
        f"{exp.name} [{scale.lower()}]: {len(specs)} run(s) × {len(first.seeds)} seed(s); "
        f"{first.level_key} {levels}, flows {in_order(s.flow for s in specs)}, clips {in_order(s.clip for s in specs)}; "
        f"{options}{first.epochs} epochs, {first.n_data} states, batch {first.batch_size}, {first.optimizer} lr {first.learning_rate:g}, "
        f"data seed {first.data_seed}, seeds {first.seeds[0]}..{first.seeds[-1]}{mine} → {out / exp.name}",
        markup=False,
    )
    if placement is not None:
        import jax

        rows = sum(len(s.seeds) for s in specs)
        err_console.print(devices_line(jax.devices(), placement.why, rows, n_workers), markup=False)


def devices_line(devices: list, why: str, rows: int, n_workers: int) -> str:
    """Where the runs train, and why on that many devices."""
    kind = devices[0].platform
    if kind != "cpu":
        return f"on {len(devices)} {kind.upper()} device(s) ({devices[0].device_kind})"
    if n_workers > 1:
        from bptt_cli.core.devices import usable_cores

        return (
            f"on {usable_cores()} CPU cores: {n_workers} worker processes, each pinned to its own cores "
            "and training its own programs (--workers 1 for one process)"
        )
    line = f"on {len(devices)} CPU device(s): {why}"
    if len(devices) > rows:
        line += f"; only {rows} can be used: the grid has {rows} row(s) (runs × seeds)"
    return line


def in_order(items) -> str:
    return ", ".join(dict.fromkeys(items))


def print_programs(plan, profile, n_workers: int) -> None:
    """The programs of the plan, and an estimate when this machine has bench figures."""
    import jax

    from bptt_cli import estimate
    from bptt_cli.core import devices

    programs, done = plan.programs, len(plan.complete)
    device = jax.devices()[0]
    cores = max(1, devices.usable_cores() // n_workers)  # each worker's
    n_devices = devices.cpu_devices({}, cores)[0] if n_workers > 1 else len(jax.devices())
    where = f"{n_workers} worker processes of {n_devices} device(s) each" if n_workers > 1 else "one process"
    out_console.print(
        f"{len(programs)} program(s) on {device.platform} ({device.device_kind}, {len(jax.devices())} device(s)), "
        f"{where}, grouping {'wide' if profile.merge_flows else 'narrow'}; {done} run(s) already complete",
        markup=False,
    )
    figures = estimate.load()
    times = []
    for i, program in enumerate(programs, 1):
        used, load = devices.program_load(profile, program.rows, cores, n_devices)
        seconds = estimate.program_seconds(program, figures, load)
        times.append(seconds)
        on = f" · on {used} devices" if used > 1 else ""
        guess = "" if seconds is None else f"  ~{estimate.fmt(seconds)}"
        out_console.print(f"  {i}. {program.describe()}{on}{guess}", markup=False)
    if not programs:
        return
    if None in times or not figures:
        out_console.print(
            "no wall-time estimate: this machine has no bench figures for "
            + ("these problems" if figures else "any problem")
            + " (run `make bench` in a checkout, or `python bench/bench.py`)",
            markup=False,
        )
    else:
        total = estimate.plan_seconds(times, n_workers)
        out_console.print(
            f"estimated wall time: {estimate.fmt(total)} (from make bench on this machine)", markup=False
        )


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable]:
    """A Rich bar over run-epochs, fed by the runner's progress callback; when stderr is not a
    terminal (CI logs, files) no bar, only the lines the runner says are worth printing."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("run-epochs · runs {task.fields[runs]} · test loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, disable=not (enabled and err_console.is_terminal)) as bar:
        task = None

        def show(update) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task("starting", total=update.total, runs="", loss="")
            loss = "" if update.test_loss is None else f"{update.test_loss:.4g}"
            fields = {"loss": loss} if loss else {}
            bar.update(
                task,
                completed=update.done,
                description=update.status or "training",
                runs=f"{update.runs_done}/{update.runs_total}",
                **fields,
            )
            if update.line:
                bar.console.print(update.line, markup=False)

        yield show


def print_target_programs(plan, profile, target: str) -> bool:
    """Compile the programs for ``target`` (a GPU this machine need not have) and print per
    program its compile time, memory, kernel launches per epoch and estimated wall time; False
    when a program does not fit the target's memory. A target jax cannot compile for is a
    ``UserError``."""
    from bptt_cli import estimate
    from bptt_cli.config import UserError
    from bptt_cli.runner import aot

    programs = plan.programs
    try:
        aot.target_devices(target)
    except aot.TargetError as err:
        raise UserError(str(err)) from None
    capacity = aot.device_memory(target)
    measured = estimate.measured_launch_seconds(aot.description(target))
    per_launch = (measured, measured) if measured else aot.LAUNCH_SECONDS
    cost = (
        f"{measured * 1e6:.2f} µs per kernel launch (measured by make bench on this machine's {target})"
        if measured
        else f"{aot.LAUNCH_SECONDS[0] * 1e6:g} … {aot.LAUNCH_SECONDS[1] * 1e6:g} µs per kernel launch "
        "(an unmeasured range: see the README's GPU section)"
    )
    out_console.print(
        f"{len(programs)} program(s) compiled for {target} (no GPU needed; nothing runs), grouping "
        f"{'wide' if profile.merge_flows else 'narrow'}, unroll {profile.unroll}; wall time at {cost}",
        markup=False,
    )
    out_console.print(
        f"  {'#':>2s} {'compile':>8s} {'memory':>10s} {'launches/epoch':>14s} {'wall time':>19s}  program",
        markup=False,
    )
    fits, low, high = True, 0.0, 0.0
    for i, program in enumerate(programs, 1):
        result = aot.compile_for(program, target, profile)
        lo, hi = result.seconds(per_launch)
        low, high, fits = low + lo, high + hi, fits and result.fits()
        memory = f"{result.memory_bytes / 2**30:.2f} GiB" + ("" if result.fits() else " (!)")
        out_console.print(
            f"  {i:2d} {result.compile_seconds:7.1f}s {memory:>10s} {result.launches_per_epoch:14,d} "
            f"{_span(lo, hi):>19s}  {program.describe()}",
            markup=False,
        )
    if programs:
        out_console.print(
            f"total on one {target}, programs one after another: {_span(low, high)}",
            markup=False,
        )
    if not fits:
        err_console.print(
            f"bptt-run: error: a program marked (!) needs more memory than the {target}'s "
            f"{capacity / 2**30:.0f} GiB; use fewer seeds or levels per run (--seeds, --level)",
            markup=False,
        )
    return fits


def _span(low: float, high: float) -> str:
    from bptt_cli import estimate

    return estimate.fmt(low) if low == high else f"{estimate.fmt(low)} … {estimate.fmt(high)}"
