"""Published data: the finished runs behind a figure, small enough to commit.

A published folder has the layout of a results folder, holding finished runs only, each as

- ``<run_id>.json``: its sidecar, unchanged (configuration, versions, devices, history);
- ``<run_id>.csv.gz``: its metrics, every (seed, epoch) once, gzip without a time stamp so
  that publishing the same run twice gives the same bytes;
- ``<run_id>.diagnostics.csv.gz`` where the run has diagnostics.

No checkpoint, no lock and no trajectories (a quantum run's are 0.8 MB and no paper figure
draws them): ``bptt-plot`` reads such a folder as it reads a results folder, and
``bptt-run --out`` into it takes these runs as complete (``resume.epochs_committed``) and trains
only the rest, so a long campaign resumes from what was committed, on any machine.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from bptt_cli.results import files

COMPRESSED = ".csv.gz"


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzipped reproducibly (no file name, time stamp 0)."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def is_published(folder: Path, run_id: str) -> bool:
    """Whether ``folder`` holds ``run_id`` as a published (finished) run."""
    meta = folder / f"{run_id}.json"
    if not (folder / f"{run_id}{COMPRESSED}").is_file():
        return False
    try:
        sidecar = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return sidecar.get("status") == "complete" and sidecar.get("epochs_done") == sidecar.get(
        "config", {}
    ).get("epochs")


def finished_runs(source: Path) -> list[tuple[Path, dict]]:
    """``(folder, sidecar)`` of every finished run below ``source`` (plain, not yet published)."""
    found = []
    for meta in sorted(Path(source).rglob("*.json")):
        try:
            sidecar = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(sidecar, dict) or "run_id" not in sidecar:
            continue
        complete = sidecar.get("status") == "complete" and sidecar.get("epochs_done") == sidecar.get(
            "config", {}
        ).get("epochs")
        if complete and (meta.parent / f"{sidecar['run_id']}.csv").is_file():
            found.append((meta.parent, sidecar))
    return found


def publish(source: Path, dest: Path) -> tuple[list[str], list[str]]:
    """Copy every finished run below ``source`` into ``dest/<experiment>/`` in published form.
    Returns ``(published, already)``: run ids written, and run ids ``dest`` holds already (left
    as they are: a run id names what a run computes, so the copy there is the same run).

    Raises ``ValueError`` for a finished run whose metrics are not every (seed, epoch) once.
    """
    published, already = [], []
    for folder, sidecar in finished_runs(source):
        run_id, experiment = sidecar["run_id"], sidecar["config"]["experiment"]
        target = Path(dest) / experiment
        if is_published(target, run_id):
            already.append(run_id)
            continue
        metrics = pd.read_csv(folder / f"{run_id}.csv")
        expected = len(sidecar["config"]["seeds"]) * sidecar["config"]["epochs"]
        if len(metrics) != expected or metrics.duplicated(["seed", "epoch"]).any():
            raise ValueError(
                f"{folder / run_id}.csv holds {len(metrics)} rows, not one per seed and epoch ({expected})"
            )
        diagnostics = folder / f"{run_id}.diagnostics.csv"
        if diagnostics.is_file():
            files.write_atomic(
                target / f"{run_id}.diagnostics{COMPRESSED}", gzip_bytes(diagnostics.read_bytes())
            )
        # The metrics, then the sidecar: a folder cut short by a kill holds no sidecar without rows.
        files.write_atomic(
            target / f"{run_id}{COMPRESSED}", gzip_bytes((folder / f"{run_id}.csv").read_bytes())
        )
        files.write_json(target / f"{run_id}.json", sidecar)
        published.append(run_id)
    return published, already
