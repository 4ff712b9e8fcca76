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


def print_info(cpu_devices: tuple[int, str]) -> None:
    import jax

    from bptt_cli.core import devices
    from bptt_cli.results import versions

    for name, version in versions().items():
        out_console.print(f"{name:10s} {version}")
    out_console.print(f"{'backend':10s} {jax.default_backend()}")
    out_console.print(
        f"{'cores':10s} {devices.usable_cores()} usable by this process; "
        f"{cpu_devices[0]} CPU device(s): {cpu_devices[1]}"
    )
    for d in jax.devices():
        out_console.print(f"{'device':10s} {d.id}: {d.device_kind} ({d.platform})")


def print_plan(
    exp, scale: str, specs, out: Path, share, cpu_devices: tuple[int, str], n_workers: int
) -> None:
    import jax

    first = specs[0]
    levels = sorted({s.level for s in specs})
    mine = f"; this worker's share: {share[0]}/{share[1]}" if share else ""
    err_console.print(
        f"{exp.name} [{scale.lower()}]: {len(specs)} run(s) × {len(first.seeds)} seed(s); "
        f"{first.level_key} {levels}, flows {in_order(s.flow for s in specs)}, clips {in_order(s.clip for s in specs)}; "
        f"{first.epochs} epochs, {first.n_data} states, batch {first.batch_size}, {first.optimizer} lr {first.learning_rate:g}, "
        f"data seed {first.data_seed}, seeds {first.seeds[0]}..{first.seeds[-1]}{mine} → {out / exp.name}",
        markup=False,
    )
    rows = sum(len(s.seeds) for s in specs)
    err_console.print(devices_line(jax.devices(), cpu_devices, rows, n_workers), markup=False)


def devices_line(devices: list, cpu_devices: tuple[int, str], rows: int, n_workers: int) -> str:
    """Where the runs train, and why on that many devices."""
    kind = devices[0].platform
    if kind != "cpu":
        return f"on {len(devices)} {kind.upper()} device(s) ({devices[0].device_kind})"
    if n_workers > 1:
        return (
            f"on {cpu_devices[0]} CPU cores: {n_workers} worker processes, each pinned to its own cores "
            f"and training its own programs ({cpu_devices[1]}; --workers 1 for one process)"
        )
    line = f"on {len(devices)} CPU device(s): {cpu_devices[1]}"
    if len(devices) > rows:
        line += f"; only {rows} can be used: the grid has {rows} row(s) (runs × seeds)"
    return line


def in_order(items) -> str:
    return ", ".join(dict.fromkeys(items))


def print_programs(specs, out: Path, profile, n_workers: int) -> None:
    """The programs this worker would run, and an estimate when this machine has bench figures."""
    import jax

    from bptt_cli import estimate, problems, runner
    from bptt_cli.core import devices, plan

    work = runner.pending_work(specs, out)
    done = len(specs) - len(work)
    programs = plan.plan(work, profile, problems.get)
    device = jax.devices()[0]
    n_devices = max(1, devices.usable_cores() // n_workers) if n_workers > 1 else len(jax.devices())
    where = f"{n_workers} worker processes of {n_devices} device(s) each" if n_workers > 1 else "one process"
    out_console.print(
        f"{len(programs)} program(s) on {device.platform} ({device.device_kind}, {len(jax.devices())} device(s)), "
        f"{where}, grouping {'wide' if profile.merge_flows else 'narrow'}; {done} run(s) already complete",
        markup=False,
    )
    figures = estimate.load()
    times = []
    for i, program in enumerate(programs, 1):
        seconds = estimate.program_seconds(program, figures, n_devices)
        times.append(seconds)
        guess = "" if seconds is None else f"  ~{estimate.fmt(seconds)}"
        out_console.print(f"  {i}. {program.describe()}{guess}", markup=False)
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


def pool_progress(show: Callable, n_workers: int) -> Callable[[int, int], None]:
    """The bar's callback, fed from a pool of workers (run-epochs only)."""
    from bptt_cli.runner import Progress

    def update(done: int, total: int) -> None:
        show(Progress(done, total, 0, 0, f"{n_workers} workers"))

    return update


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
