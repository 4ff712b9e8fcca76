"""Command-line entry points: ``bptt-run`` trains, ``bptt-plot`` draws.

jax is imported inside the commands, so ``--help`` and input errors answer at once. Every
error a user can cause ends as one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bptt_cli import api, config
from bptt_cli.cli import show
from bptt_cli.cli.show import err_console, out_console
from bptt_cli.config import UserError
from bptt_cli.core.devices import GROUPINGS
from bptt_cli.results import DiskError

run_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
plot_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


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
            "--flow",
            "-f",
            metavar="FLOW",
            help="Gradient flow: R, M, S, C, T<k> or one registered in Python; repeat for several.",
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
        str | None,
        typer.Option(
            help="adam (Keras' rule, as released), adam-optax (the rule of releases up to 0.3.0), sgd, "
            "momentum-0.8/0.9/0.95, adagrad, adadelta, rmsprop."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="float32 (as released) or float64: the whole run in double precision (jax's x64); "
            "float64 runs sit beside float32 runs of the same configuration."
        ),
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
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            metavar="KEY=VALUE",
            help="Set a problem option, as the definition's [options] table does (e.g. "
            "controller=mlp); repeatable.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder.")] = Path("results"),
    tensorboard: Annotated[
        str | None,
        typer.Option(
            metavar="on|off|DIR",
            help="TensorBoard event files of every run, written while it trains: on (beside each "
            "run's CSV, in <run_id>.tb/), off, or a folder DIR (DIR/<experiment>/<run_id>/) "
            "[default: $BPTT_TENSORBOARD, else on].",
        ),
    ] = None,
    wandb: Annotated[
        str | None,
        typer.Option(
            metavar="PROJECT",
            help="Also log every run to this Weights & Biases project (one W&B run per run, grouped "
            "by experiment; WANDB_MODE=offline works without a network). Needs pip install "
            "'bptt-cli[wandb]'.",
        ),
    ] = None,
    compile_cache: Annotated[
        str | None,
        typer.Option(
            metavar="DIR|off",
            help="Keep compiled programs in DIR for later runs, resumed runs, workers and SLURM tasks "
            "(jax's persistent compilation cache), or off [default: $BPTT_COMPILE_CACHE, else "
            "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/bptt-cli/jax].",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute runs that are already complete.")] = False,
    device: Annotated[str, typer.Option(help="auto (GPU when jax sees one), cpu or gpu.")] = "auto",
    devices_count: Annotated[
        int | None,
        typer.Option(
            "--devices",
            metavar="N",
            help="jax CPU devices to spread a program's rows over, up to one per row [default: as "
            "many as split the grid's rows best over the cores this process may use, at most two "
            "per core (9 rows on 2 cores: 3 devices; 1 row: 1); JAX_NUM_CPU_DEVICES or XLA_FLAGS "
            "win].",
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
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the programs that would run (and an estimate) and stop.")
    ] = False,
    target: Annotated[
        str | None,
        typer.Option(
            metavar="GPU",
            help="With --dry-run: compile every program for this GPU (h100, a100) without one, and "
            "print per program its compile time, memory, kernel launches per epoch and an estimated "
            "wall time. Needs jax's CUDA plugin (make gpu-compile installs one).",
        ),
    ] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="List the built-in experiments and their scales.")
    ] = False,
    info: Annotated[bool, typer.Option("--info", help="Print devices and versions.")] = False,
) -> None:
    if target is not None:
        api.checks.check_target(target, dry_run)
    if device.lower() not in api.policy.DEVICES:
        raise UserError(f"unknown device {device!r}; allowed: {', '.join(api.policy.DEVICES)}")
    if list_:
        show.print_list()
        return
    if info:
        show.print_info(api.place(device.lower(), devices_count, target))
        return
    if experiment is None:
        raise UserError(
            "missing experiment; give a built-in name (see bptt-run --list) or a path to a .toml file"
        )

    api.check_devices(devices_count)  # before anything imports jax
    _logging_and_cache(out, tensorboard, wandb, compile_cache)
    exp = config.load(experiment)
    if exp.problem == "toy":
        api.place(device.lower(), devices_count, target)
        _run_toy(exp, out, force)
        return
    if grouping.lower() not in GROUPINGS:
        raise UserError(f"unknown grouping {grouping!r}; allowed: {', '.join(GROUPINGS)}")
    grouping = grouping.lower()
    grid = api.grid(
        exp,
        scale,
        options=config.parse_options(option or []),
        levels=level,
        flows=flow,
        clips=clip,
        epochs=epochs,
        seeds=seeds,
        seed=seed,
        optimizer=optimizer,
        precision=precision,
        learning_rate=learning_rate,
        batch_size=batch_size,
        data_seed=data_seed,
        diagnostics=diagnostics,
        shard=shard,
    )
    placement = api.place(device.lower(), devices_count, target, grid)
    for warning in api.check(grid, out):
        err_console.print(f"bptt-run: warning: {warning}", markup=False)
    profile = placement.profile(grouping, grid.steps)
    plan = api.plan(grid, out, profile, force)
    if target is not None:
        show.print_plan(grid, out, None, 1)
        if not show.print_target_programs(plan, profile, target):
            raise typer.Exit(1)
        return
    n_workers = api.n_workers(workers, placement, profile, plan)
    show.print_plan(grid, out, placement, n_workers)
    if dry_run:
        show.print_programs(plan, profile, n_workers)
        return

    try:
        with show.progress_bar() as progress:
            report = api.train(
                plan, out, profile, workers=n_workers, grouping=grouping, force=force, progress=progress
            )
    except api.WorkerError as err:
        err_console.print(f"bptt-run: {err}", markup=False)
        raise typer.Exit(1) from None
    if report.interrupted:
        err_console.print("interrupted: completed epochs are saved; rerun the same command to resume")
        raise typer.Exit(130)
    share = grid.share
    err_console.print(
        f"done: {len(report.trained)} run(s) trained, {len(report.found_complete)} found complete, "
        f"{len(report.left_to_others)} left to other workers"
        + (f" (share {share[0]}/{share[1]} of {len(grid.specs)})" if share else "")
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
    against: Annotated[
        Path | None,
        typer.Option(
            metavar="PUBLISHED",
            help="Also draw RESULTS' runs over the seeds of the same configurations in PUBLISHED "
            "(e.g. docs/data/paper-norm) and say, per configuration, whether they fall inside "
            "the published spread (RESULTS/against.csv, figures against_<experiment>).",
        ),
    ] = None,
    publish: Annotated[
        Path | None,
        typer.Option(
            metavar="DEST",
            help="Copy RESULTS' finished runs into DEST as published data (metrics and diagnostics "
            "gzipped, no checkpoints), which bptt-plot reads and bptt-run --out DEST takes as "
            "complete; then stop.",
        ),
    ] = None,
) -> None:
    if not results_dir.is_dir():
        raise UserError(f"results folder {str(results_dir)!r} does not exist; run bptt-run first")
    if publish is not None:
        _publish(results_dir, publish)
        return
    if against is not None and not against.is_dir():
        raise UserError(
            f"published folder {str(against)!r} does not exist; allowed: a folder of bptt-run results"
        )
    figures = out or results_dir / "figures"
    api.checks.check_out(figures, locks=False)
    comparison = _comparison(results_dir, against) if against is not None else None

    from bptt_cli import plotting

    written = plotting.plot_all(results_dir, figures)
    if not written:
        raise UserError(f"no bptt-run results found under {str(results_dir)!r}")
    for path in written:
        err_console.print(f"wrote {path}")
    summary_md = results_dir / "summary.md"
    if summary_md.exists():
        out_console.print(summary_md.read_text())
    if comparison is not None:
        from bptt_cli import results
        from bptt_cli.plotting import against as against_

        table, mine, theirs = comparison
        results.write_csv(results_dir / "against.csv", table)
        for path in [*against_.plot_against(mine, theirs, figures), results_dir / "against.csv"]:
            err_console.print(f"wrote {path}")
        for line in against_.describe(table):
            out_console.print(line, markup=False, soft_wrap=True)


def _comparison(results_dir: Path, published: Path):
    """``(table, mine, theirs)`` of ``--against``, checked before anything is written."""
    from bptt_cli import results
    from bptt_cli.plotting import against

    mine, theirs = results.read_results(results_dir), results.read_results(published)
    table = against.compare(mine, theirs) if not (mine.empty or theirs.empty) else None
    if table is None or table.empty:
        raise UserError(
            f"no configuration of {str(results_dir)!r} is in {str(published)!r}; allowed: a published folder "
            "holding the same experiment, level, flow, clip, optimizer and precision"
        )
    return table, mine, theirs


def _publish(results_dir: Path, dest: Path) -> None:
    api.checks.check_out(dest, locks=False)
    from bptt_cli.results.publish import publish

    try:
        done, already = publish(results_dir, dest)
    except ValueError as err:
        raise UserError(str(err)) from None
    if not done and not already:
        raise UserError(f"no finished run under {str(results_dir)!r} to publish")
    err_console.print(
        f"published {len(done)} finished run(s) into {dest}; {len(already)} were there already", markup=False
    )


# --- helpers ----------------------------------------------------------------------------


def _logging_and_cache(
    out: Path, tensorboard: str | None, wandb: str | None, compile_cache: str | None
) -> None:
    """``--tensorboard``, ``--wandb`` and ``--compile-cache``, checked (one line and exit code 2
    for a folder that cannot be written, or W&B not installed) and put into the environment,
    which a pool's workers and SLURM tasks inherit, before anything is written or compiled."""
    import os

    from bptt_cli.core import compile_cache as cache
    from bptt_cli.results import check_writable, tracking

    where = tracking.tensorboard_setting(tensorboard or os.environ.get(tracking.TENSORBOARD_VARIABLE) or "on")
    if where not in (tracking.ON, tracking.OFF):
        try:
            check_writable(Path(where))
        except PermissionError as err:
            raise UserError(
                f"TensorBoard folder {where!r} is not writable ({err} is not a writable folder); "
                "allowed: on, off or a writable folder"
            ) from None
    if wandb:
        missing = tracking.wandb_missing()
        if missing:
            raise UserError(missing)
        wandb_dir = os.environ.get("WANDB_DIR") or "."
        try:
            check_writable(Path(wandb_dir))
        except PermissionError as err:
            raise UserError(
                f"W&B folder {wandb_dir!r} is not writable ({err} is not a writable folder); allowed: "
                "a writable WANDB_DIR"
            ) from None
        os.environ[tracking.WANDB_VARIABLE] = wandb
    os.environ[tracking.TENSORBOARD_VARIABLE] = where
    folder, why = cache.resolve(compile_cache)
    try:
        cache.check(folder)
    except PermissionError as err:
        if why != "default":
            raise UserError(
                f"compilation cache folder {str(folder)!r} cannot be written ({err}); allowed: a "
                "writable folder, or off"
            ) from None
        err_console.print(
            f"bptt-run: warning: compilation cache off: {str(folder)!r} cannot be written ({err})",
            markup=False,
        )
        folder = None
    os.environ[cache.VARIABLE] = str(folder) if folder is not None else cache.OFF
    cache.use(folder)  # and a damaged entry said in one line


def _run_toy(exp, out: Path, force: bool) -> None:
    api.checks.check_out(out, locks=False)
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
    except (UserError, DiskError) as err:
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
