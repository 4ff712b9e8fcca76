"""Figures and the summary table, from result files only (this package never imports jax)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")


def save_figure(fig, out_dir: Path, stem: str, dpi: int = 130) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf``, each atomically."""
    import io

    from bptt_cli.results import write_atomic

    written = []
    for ext in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=dpi)
        path = out_dir / f"{stem}.{ext}"
        write_atomic(path, buffer.getvalue())
        written.append(path)
    return written


def plot_all(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Every figure the results under ``results_dir`` allow, plus ``summary.csv``/``summary.md``.

    Per experiment: the test-loss curves (from the run CSVs), the gradient diagnostics (from
    ``*.diagnostics.csv``, where there are any) and the trajectory picture (from
    ``*.trajectories.npz``, where there are any); over the paper's problems, the overview of R
    against C; then the toy figures. Returns the paths written (empty when there are no
    results at all).
    """
    from bptt_cli import results, summary
    from bptt_cli.plotting import curves, diagnostics, overview, toy, trajectories

    results_dir, figures_dir = Path(results_dir), Path(figures_dir)
    written: list[Path] = []
    frame = results.read_results(results_dir)
    if not frame.empty:
        frame = summary.as_released(curves.latest_runs(frame))
        for experiment, rows in frame.groupby("experiment", sort=True):
            written += curves.plot_experiment(str(experiment), rows, figures_dir)
        written += overview.plot_overview(frame, figures_dir)
        written += summary.write(frame, results.read_metas(results_dir), results_dir)
    diagnosed = results.read_results(results_dir, kind="diagnostics")
    if not diagnosed.empty:
        for experiment in sorted(diagnosed["experiment"].astype(str).unique()):
            written += diagnostics.plot_diagnostics(experiment, diagnosed, figures_dir)
    written += trajectories.plot_trajectories(results_dir, figures_dir)
    for toy_dir in sorted({p.parent for p in results_dir.rglob("fig1_fields.csv")}):
        written += toy.plot(toy_dir, figures_dir)
    return written
