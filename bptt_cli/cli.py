"""Command-line entry points: ``bptt-run`` trains, ``bptt-plot`` draws.

jax is imported inside the commands, so ``--help`` and input errors answer at once. Every
error a user can cause ends as one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bptt_cli import config
from bptt_cli.config import UserError

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
    data_seed: Annotated[
        int | None, typer.Option(help="Seed of the initial states (shared by all runs).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder.")] = Path("results"),
    force: Annotated[bool, typer.Option("--force", help="Recompute runs that are already complete.")] = False,
    device: Annotated[str, typer.Option(help="auto (GPU when jax sees one), cpu or gpu.")] = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved runs and stop.")] = False,
    list_: Annotated[
        bool, typer.Option("--list", help="List the built-in experiments and their scales.")
    ] = False,
    info: Annotated[bool, typer.Option("--info", help="Print devices and versions.")] = False,
) -> None:
    if device.lower() not in DEVICES:
        raise UserError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    _select_device(device.lower())
    if list_:
        _print_list()
        return
    if info:
        _print_info()
        return
    if experiment is None:
        raise UserError(
            "missing experiment; give a built-in name (see bptt-run --list) or a path to a .toml file"
        )

    exp = config.load(experiment)
    if exp.problem == "toy":
        _run_toy(exp, out, force)
        return
    specs = config.resolve(
        exp,
        scale,
        levels=level or None,
        flows=flow or None,
        clips=clip or None,
        epochs=epochs,
        seeds=seeds,
        optimizer=optimizer,
        learning_rate=learning_rate,
        batch_size=batch_size,
        data_seed=data_seed,
    )
    _check_out(out)
    _print_plan(exp, scale, specs, out)
    if dry_run:
        return

    from bptt_cli.core import runner

    report = runner.run(specs, out, force=force, console=err_console)
    if report.interrupted:
        err_console.print("interrupted: completed epochs are saved; rerun the same command to resume")
        raise typer.Exit(130)
    err_console.print(
        f"done: {len(report.completed)} run(s) trained, {len(report.skipped)} already complete; "
        f"results in {out / exp.name}"
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
    _check_out(figures)

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
                "device 'gpu' requested but jax sees no GPU (install the CUDA build: make install-gpu); "
                "allowed here: auto, cpu"
            ) from None


def _check_out(folder: Path) -> None:
    from bptt_cli.results import check_writable

    try:
        check_writable(folder)
    except PermissionError as err:
        raise UserError(
            f"output folder {str(folder)!r} is not writable ({err} is not a writable folder)"
        ) from None


def _print_list() -> None:
    for name in config.builtin_names():
        exp = config.load(name)
        scales = ", ".join(config.scale_names(exp)) if exp.problem != "toy" else "-"
        out_console.print(f"{name:10s} {exp.description}  [scales: {scales}]")


def _print_info() -> None:
    import jax

    from bptt_cli.results import versions

    for name, version in versions().items():
        out_console.print(f"{name:10s} {version}")
    out_console.print(f"{'backend':10s} {jax.default_backend()}")
    for d in jax.devices():
        out_console.print(f"{'device':10s} {d.id}: {d.device_kind} ({d.platform})")


def _print_plan(exp, scale: str, specs, out: Path) -> None:
    first = specs[0]
    levels = sorted({s.level for s in specs})
    err_console.print(
        "".join(
            [
                f"{exp.name} [{scale.lower()}]: {len(specs)} run(s) × {len(first.seeds)} seed(s); "
                f"{first.level_key} {levels}, flows {sorted({s.flow for s in specs})}, clips {sorted({s.clip for s in specs})}; "
                f"{first.epochs} epochs, {first.n_data} states, batch {first.batch_size}, {first.optimizer} lr {first.learning_rate:g}, "
                f"data seed {first.data_seed}, seeds {first.seeds[0]}..{first.seeds[-1]} → {out / exp.name}"
            ]
        ),
        markup=False,
    )


def _run_toy(exp, out: Path, force: bool) -> None:
    _check_out(out)
    from bptt_cli import toy

    written = toy.run(out / exp.name, force=force)
    for path in written:
        err_console.print(f"wrote {path}")
    if not written:
        err_console.print(f"toy fields already in {out / exp.name} (--force recomputes them)")


def _main(app: typer.Typer, prog: str) -> None:
    """Run a Typer app so that every input error is ONE line and exit code 2."""
    from typer._click.exceptions import ClickException

    try:
        code = app(prog_name=prog, standalone_mode=False)
    except UserError as err:
        err_console.print(f"{prog}: error: {err}", markup=False)
        sys.exit(2)
    except ClickException as err:
        err_console.print(f"{prog}: error: {err.format_message()}", markup=False)
        sys.exit(2)
    except typer.Abort:
        err_console.print(f"{prog}: aborted", markup=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def run_main() -> None:
    _main(run_app, "bptt-run")


def plot_main() -> None:
    _main(plot_app, "bptt-plot")
