"""Command-line entry points: ``bptt-run`` trains, ``bptt-plot`` draws.

jax is imported inside the commands, so ``--help`` and input errors answer at once. Every
error a user can cause ends as one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from bptt_cli import config
from bptt_cli.config import UserError
from bptt_cli.results import LockError

GROUPINGS = ("auto", "narrow", "wide")

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)

run_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
plot_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)

DEVICES = ("auto", "cpu", "gpu")


@run_app.command(
    help=(
        "Train an experiment definition (a built-in NAME or a PATH to a .toml file) with all seeds "
        "in parallel and write tidy CSV metrics under OUT/<experiment>/. Finished runs are skipped, "
        "interrupted ones resume; options override the definition's grid."
    )
)
def run(
    experiment: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME|PATH", help="Built-in experiment name (see --list) or path to a .toml definition."
        ),
    ] = None,
    scale: Annotated[
        str, typer.Option("--scale", "-s", help="Named scale of the definition: paper, quick, smoke, ...")
    ] = "paper",
    seeds: Annotated[int | None, typer.Option(help="Number of init seeds trained in parallel.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per run.")] = None,
    flow: Annotated[
        list[str] | None,
        typer.Option(
            "--flow", "-f", metavar="FLOW", help="Gradient flow R, M, S, C or T<k>; repeat for several."
        ),
    ] = None,
    clip: Annotated[
        list[str] | None,
        typer.Option("--clip", "-c", metavar="CLIP", help="Clip mode NONE, VALUE or NORM; repeatable."),
    ] = None,
    level: Annotated[
        list[str] | None,
        typer.Option(
            "--level",
            "-l",
            metavar="LEVEL",
            help="Complexity level (poles / rc / target state) from the grid; repeatable.",
        ),
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option(help="adam, sgd, momentum-0.8/0.9/0.95, adagrad, adadelta, rmsprop.")
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", "--lr", help="Learning rate.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Minibatch size; must divide the training set.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="First init seed (seeds SEED ... SEED+SEEDS-1 train in parallel).")
    ] = None,
    data_seed: Annotated[
        int | None, typer.Option(help="Seed of the initial states (shared by all runs).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder.")] = Path("results"),
    force: Annotated[bool, typer.Option("--force", help="Recompute runs that are already complete.")] = False,
    device: Annotated[str, typer.Option(help="auto (GPU when jax sees one), cpu or gpu.")] = "auto",
    devices_count: Annotated[
        int | None,
        typer.Option(
            "--devices",
            metavar="N",
            help="jax CPU devices to spread programs and rows over [default: one per core this "
            "process may use, unless JAX_NUM_CPU_DEVICES or XLA_FLAGS set a count].",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            metavar="K/N",
            help="Train share K of N of the grid (default in a SLURM array: the task's share). "
            "Workers sharing a results folder never train the same run.",
        ),
    ] = None,
    grouping: Annotated[
        str,
        typer.Option(
            help="How runs share compiled programs: auto (by device), narrow (one per flow and "
            "shape: the CPU layout) or wide (flows and padded levels merged: the GPU layout)."
        ),
    ] = "auto",
    diagnostics: Annotated[
        bool | None,
        typer.Option(
            "--diagnostics/--no-diagnostics",
            help="Record gradient diagnostics at epochs 0, 1, 10, 100, 1000 [default: as the "
            "definition says, on].",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            metavar="N",
            help="Worker processes on this machine sharing the grid, each pinned to its own cores "
            "[default: on a CPU one per usable core, at most one per program; 1 on a GPU or with "
            "--devices].",
        ),
    ] = None,
    worker: Annotated[str | None, typer.Option(hidden=True)] = None,  # K/N: one of a pool's workers
    worker_report: Annotated[Path | None, typer.Option(hidden=True)] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the programs that would run (and an estimate) and stop.")
    ] = False,
    list_: Annotated[
        bool, typer.Option("--list", help="List the built-in experiments and their scales.")
    ] = False,
    info: Annotated[bool, typer.Option("--info", help="Print devices and versions.")] = False,
) -> None:
    if device.lower() not in DEVICES:
        raise UserError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    if worker is not None:
        from bptt_cli import workers as pool

        pool.become_worker()
    cpu_devices = _set_cpu_devices(devices_count)
    _select_device(device.lower())
    if list_:
        _print_list()
        return
    if info:
        _print_info(cpu_devices)
        return
    if experiment is None:
        raise UserError(
            "missing experiment; give a built-in name (see bptt-run --list) or a path to a .toml file"
        )

    exp = config.load(experiment)
    if exp.problem == "toy":
        _run_toy(exp, out, force)
        return
    if grouping.lower() not in GROUPINGS:
        raise UserError(f"unknown grouping {grouping!r}; allowed: {', '.join(GROUPINGS)}")
    specs = config.resolve(
        exp,
        scale,
        diagnostics=diagnostics,
        levels=level or None,
        flows=flow or None,
        clips=clip or None,
        epochs=epochs,
        seeds=seeds,
        seed=seed,
        optimizer=optimizer,
        learning_rate=learning_rate,
        batch_size=batch_size,
        data_seed=data_seed,
    )
    share = _shard(shard)
    from bptt_cli.core import plan

    mine = plan.shard(specs, *share) if share else specs
    _check_out(out)
    _check_locks(mine, out)
    _check_problem(specs)
    from bptt_cli import runner
    from bptt_cli import workers as pool
    from bptt_cli.core import devices

    profile = devices.current(grouping.lower())
    n_workers = _n_workers(workers, profile, cpu_devices, devices_count, mine, out) if worker is None else 1
    if worker is None:
        _print_plan(exp, scale, specs, out, share, cpu_devices, n_workers)
    if dry_run:
        _print_programs(mine, out, profile, n_workers)
        return

    if n_workers > 1:
        with _progress_bar() as progress:
            report = pool.run_pool(sys.argv[1:], n_workers, mine, out, _pool_progress(progress, n_workers))
        failed = [(k, code) for k, code in enumerate(report.exit_codes, 1) if code not in (0, 130)]
        if failed:  # each worker has said why on stderr already
            if not any(code == 2 for _, code in failed):
                err_console.print(f"bptt-run: worker {failed[0][0]} failed with exit code {failed[0][1]}")
            raise typer.Exit(2 if any(code == 2 for _, code in failed) else 1)
    else:
        rotate = int(worker.split("/")[0]) - 1 if worker else 0
        try:
            with _progress_bar(enabled=worker is None) as progress:
                report = runner.run(mine, out, force=force, profile=profile, progress=progress, rotate=rotate)
        except LockError as err:
            raise UserError(str(err)) from None
        if worker_report is not None:
            pool.write_report(worker_report, report)
        if worker is not None:
            raise typer.Exit(130 if report.interrupted else 0)
    if report.interrupted:
        err_console.print("interrupted: completed epochs are saved; rerun the same command to resume")
        raise typer.Exit(130)
    err_console.print(
        f"done: {len(report.trained)} run(s) trained, {len(report.found_complete)} found complete, "
        f"{len(report.left_to_others)} left to other workers"
        + (f" (share {share[0]}/{share[1]} of {len(specs)})" if share else "")
        + f"; results in {out / exp.name}",
        markup=False,
    )


@plot_app.command(
    help=(
        "Draw the paper's figures from the CSVs under RESULTS (PNG and PDF into RESULTS/figures) and "
        "write RESULTS/summary.csv and RESULTS/summary.md; the summary table is printed."
    )
)
def plot(
    results_dir: Annotated[Path, typer.Argument(help="Folder holding bptt-run outputs.")] = Path("results"),
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Figure folder [default: RESULTS/figures].")
    ] = None,
) -> None:
    if not results_dir.is_dir():
        raise UserError(f"results folder {str(results_dir)!r} does not exist; run bptt-run first")
    figures = out or results_dir / "figures"
    _check_out(figures, locks=False)

    from bptt_cli import plotting

    written = plotting.plot_all(results_dir, figures)
    if not written:
        raise UserError(f"no bptt-run results found under {str(results_dir)!r}")
    for path in written:
        err_console.print(f"wrote {path}")
    summary_md = results_dir / "summary.md"
    if summary_md.exists():
        out_console.print(summary_md.read_text())


# --- helpers ----------------------------------------------------------------------------


def _set_cpu_devices(requested: int | None) -> tuple[int, str]:
    """Give jax one CPU device per usable core (or the count asked for), before it is imported:
    jax reads ``JAX_NUM_CPU_DEVICES`` when it starts. Returns the count and why."""
    from bptt_cli.core import devices

    try:
        count, why, ours = devices.cpu_devices(os.environ, devices.usable_cores(), requested)
    except ValueError as err:
        raise UserError(str(err)) from None
    if ours:
        os.environ["JAX_NUM_CPU_DEVICES"] = str(count)
    return count, why


def _select_device(device: str) -> None:
    """Must run before jax is imported by anything: JAX_PLATFORMS is read at start-up."""
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif device == "gpu":
        # jax already prefers a GPU when it has one; here we only refuse to fall back to the CPU.
        import jax

        try:
            jax.devices("gpu")
        except Exception:  # jax raises RuntimeError, or asserts when every backend is filtered out
            raise UserError(
                "device 'gpu' requested but jax sees no GPU (install the CUDA build: make install where nvidia-smi works, or pip install 'bptt-cli[gpu]'); "
                "allowed here: auto, cpu"
            ) from None


def _check_out(folder: Path, locks: bool = True) -> None:
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


def _check_locks(specs, out: Path) -> None:
    """Refuse lock files that are unreadable or not ours before anything is printed or written."""
    from bptt_cli.results import RunFiles, check_lock_file

    try:
        for spec in specs:
            check_lock_file(RunFiles.of(out / spec.experiment, spec.run_id).lock)
    except LockError as err:
        raise UserError(str(err)) from None


def _shard(text: str | None) -> tuple[int, int] | None:
    from bptt_cli.core import plan

    try:
        if text is not None:
            return plan.parse_shard(text)
        return plan.shard_from_environment(dict(os.environ))
    except ValueError as err:
        raise UserError(str(err)) from None


def _check_problem(specs) -> None:
    """Evaluate each problem's contract abstractly, once per (problem, level), before training."""
    from bptt_cli import problems

    seen = set()
    for spec in specs:
        key = (spec.problem_ref, spec.level, spec.options)
        if key in seen:
            continue
        seen.add(key)
        try:
            problems.check(problems.get(spec.problem_ref), spec.level, dict(spec.options))
        except problems.ProblemError as err:
            raise UserError(str(err)) from None


def _print_list() -> None:
    for name in config.builtin_names():
        exp = config.load(name)
        scales = ", ".join(config.scale_names(exp)) if exp.problem != "toy" else "-"
        out_console.print(f"{name:10s} {exp.description}  [scales: {scales}]", markup=False)


def _print_info(cpu_devices: tuple[int, str]) -> None:
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


def _print_plan(
    exp, scale: str, specs, out: Path, share, cpu_devices: tuple[int, str], n_workers: int
) -> None:
    import jax

    first = specs[0]
    levels = sorted({s.level for s in specs})
    mine = f"; this worker's share: {share[0]}/{share[1]}" if share else ""
    err_console.print(
        f"{exp.name} [{scale.lower()}]: {len(specs)} run(s) × {len(first.seeds)} seed(s); "
        f"{first.level_key} {levels}, flows {_in_order(s.flow for s in specs)}, clips {_in_order(s.clip for s in specs)}; "
        f"{first.epochs} epochs, {first.n_data} states, batch {first.batch_size}, {first.optimizer} lr {first.learning_rate:g}, "
        f"data seed {first.data_seed}, seeds {first.seeds[0]}..{first.seeds[-1]}{mine} → {out / exp.name}",
        markup=False,
    )
    rows = sum(len(s.seeds) for s in specs)
    err_console.print(_devices_line(jax.devices(), cpu_devices, rows, n_workers), markup=False)


def _devices_line(devices: list, cpu_devices: tuple[int, str], rows: int, n_workers: int) -> str:
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


def _in_order(items) -> str:
    return ", ".join(dict.fromkeys(items))


def _print_programs(specs, out: Path, profile, n_workers: int) -> None:
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


def _n_workers(asked: int | None, profile, cpu_devices, devices_count, specs, out: Path) -> int:
    """Worker processes for this machine: as asked (at most one per usable core), else on a CPU
    whose device count we chose one per core, at most one per program; else 1."""
    from bptt_cli import problems, runner
    from bptt_cli.core import devices, plan

    if asked is not None and asked < 1:
        raise UserError(f"invalid workers {asked}; allowed: a positive integer")
    cores = devices.usable_cores()
    if asked is not None:
        return min(asked, cores)
    if profile.platform != "cpu" or devices_count is not None or not cpu_devices[1].startswith("one per"):
        return 1
    programs = plan.plan(runner.pending_work(specs, out), profile, problems.get)
    return max(1, min(cores, len(programs)))


def _pool_progress(show: Callable, n_workers: int) -> Callable[[int, int], None]:
    """The bar's callback, fed from a pool of workers (run-epochs only)."""
    from bptt_cli.runner import Progress

    def update(done: int, total: int) -> None:
        show(Progress(done, total, 0, 0, f"{n_workers} workers"))

    return update


@contextmanager
def _progress_bar(enabled: bool = True) -> Iterator[Callable]:
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


def _run_toy(exp, out: Path, force: bool) -> None:
    _check_out(out, locks=False)
    from bptt_cli import toy

    written = toy.run(out / exp.name, force=force)
    for path in written:
        err_console.print(f"wrote {path}")
    if not written:
        err_console.print(f"toy fields already in {out / exp.name} (--force recomputes them)")


def _main(app: typer.Typer, prog: str) -> None:
    """Run a Typer app so that every input error is ONE line and exit code 2."""
    try:
        code = app(prog_name=prog, standalone_mode=False)
    except UserError as err:
        err_console.print(f"{prog}: error: {err}", markup=False)
        sys.exit(2)
    except typer.Abort:
        err_console.print(f"{prog}: aborted", markup=False)
        sys.exit(130)
    except Exception as err:
        # Click's usage errors (bad option, bad value), whichever click typer ships with.
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        err_console.print(f"{prog}: error: {err.format_message()}", markup=False)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def run_main() -> None:
    _main(run_app, "bptt-run")


def plot_main() -> None:
    _main(plot_app, "bptt-plot")
