"""Live curves where researchers look: TensorBoard event files (on by default) and Weights &
Biases (optional), both fed from the rows each commit appends to a run's CSVs.

TensorBoard: one event file per seed, in ``<out>/<experiment>/<run_id>.tb/seed_<seed>/`` (or
``<folder>/<experiment>/<run_id>/seed_<seed>/`` for a folder the user names), so that
``tensorboard --logdir <out>`` shows each seed of each run as a run of its own, overlays the
flows and levels of a grid tag by tag, and filters them by their configuration (the hparams
plugin). Per epoch, every metric column of the CSV (losses, update norm, clip rate, C's kept
fraction, a problem's extra parts); per diagnosed epoch, a summary of the gradient diagnostics.
The rows are written after the commit that made them durable, so an event file never holds
an epoch its CSV lacks; when a worker takes a run up (fresh or resumed), the run's event files
are written anew from the rows its CSV keeps (one file per seed, replaced atomically), then
grow chunk by chunk: a resumed run holds each epoch once, however often it was interrupted,
and a kill between a commit and its events loses nothing. Event files are written here,
without TensorFlow: records framed as TFRecord (length, masked CRC-32C) around tensorboardX's
protocol buffers.

Weights & Biases (``pip install 'bptt-cli[wandb]'``): one W&B run per run, named by its run
id, grouped by experiment, its configuration as W&B's config; per epoch, each metric per seed
(``test_loss/seed_42``) and its median over the seeds (``test_loss/median``). A resumed run
continues its W&B run and logs only the epochs after its checkpoint. ``WANDB_MODE=offline``
logs without a network (``wandb sync`` uploads later).

Both are chosen by the environment, which the command line sets from its options (and pool
workers and SLURM tasks inherit): ``BPTT_TENSORBOARD`` ``on`` (the default), ``off`` or a
folder; ``BPTT_WANDB`` a W&B project (unset: off).
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bptt_cli.core.spec import RunSpec
from bptt_cli.results.files import RUN_CONFIG, writing

TENSORBOARD_VARIABLE = "BPTT_TENSORBOARD"
WANDB_VARIABLE = "BPTT_WANDB"
ON, OFF = "on", "off"
NOT_METRICS = frozenset(RUN_CONFIG) | {"precision", "seed", "epoch", "t"}
EVENTS = "tfevents"  # what TensorBoard looks for in a file name


@dataclass(frozen=True)
class Tracking:
    """Where a run's curves go.

    Attributes:
      tensorboard: write TensorBoard event files.
      tensorboard_dir: their folder, or None: beside each run's CSV.
      wandb_project: log to this Weights & Biases project, or None.
    """

    tensorboard: bool = True
    tensorboard_dir: Path | None = None
    wandb_project: str | None = None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Tracking:
        where = env.get(TENSORBOARD_VARIABLE, ON) or ON
        return cls(
            tensorboard=where.lower() != OFF,
            tensorboard_dir=None if where.lower() in (ON, OFF) else Path(where),
            wandb_project=env.get(WANDB_VARIABLE) or None,
        )

    def tensorboard_folder(self, folder: Path, spec: RunSpec) -> Path:
        """The run's TensorBoard folder (a subfolder per seed); ``folder`` holds its CSV."""
        if self.tensorboard_dir is None:
            return folder / f"{spec.run_id}.tb"
        return self.tensorboard_dir / spec.experiment / spec.run_id


def tensorboard_setting(value: str) -> str:
    """``--tensorboard``'s value as the environment holds it: ``on``, ``off`` or a folder."""
    return value.lower() if value.lower() in (ON, OFF) else value


class Trackers:
    """The sinks a program's writer feeds, run by run (none where tracking is off)."""

    def __init__(self, tracking: Tracking, folder: Path):
        self.tracking, self.folder = tracking, folder
        self.tensorboard: dict[str, _TensorBoardRun] = {}
        self.wandb: dict[str, Any] = {}

    def start(
        self, spec: RunSpec, start: int, kept: pd.DataFrame | None, diagnosed: pd.DataFrame | None
    ) -> None:
        """The run is taken up at epoch ``start``; ``kept`` and ``diagnosed`` are the rows its
        CSVs keep (epochs up to ``start``), or None."""
        if self.tracking.tensorboard:
            root = self.tracking.tensorboard_dir or self.folder  # the folder an error names
            run = _TensorBoardRun(self.tracking.tensorboard_folder(self.folder, spec), spec, root)
            run.rebuild(kept, diagnosed)
            self.tensorboard[spec.run_id] = run
        if self.tracking.wandb_project:
            self.wandb[spec.run_id] = _wandb_run(self.tracking.wandb_project, spec, start)

    def log(self, spec: RunSpec, metrics: pd.DataFrame, diagnosed: pd.DataFrame | None) -> None:
        """Rows just committed to the run's CSVs."""
        if spec.run_id in self.tensorboard:
            self.tensorboard[spec.run_id].append(metrics, diagnosed)
        if spec.run_id in self.wandb:
            _wandb_log(self.wandb[spec.run_id], metrics, diagnosed)

    def finish(self, spec: RunSpec, complete: bool) -> None:
        """The run is done in this worker (``complete``: trained to its last epoch)."""
        if spec.run_id in self.tensorboard:
            run = self.tensorboard.pop(spec.run_id)
            if complete:
                run.end()
        if spec.run_id in self.wandb:
            self.wandb.pop(spec.run_id).finish(exit_code=0 if complete else 1)

    def close(self) -> None:
        """Every run still open ends here (interrupted, or stopped by an error)."""
        self.tensorboard.clear()
        for run in self.wandb.values():
            run.finish(exit_code=1)
        self.wandb.clear()


# --- TensorBoard ----------------------------------------------------------------------------


class _TensorBoardRun:
    """One run's event files: one per seed, in a subfolder per seed. A write that fails (a full
    disk) is a ``DiskError`` naming ``root``, the results folder (or the folder the user named)."""

    def __init__(self, folder: Path, spec: RunSpec, root: Path):
        self.folder, self.spec, self.root = folder, spec, root
        self.files: dict[int, Path] = {}

    def seed_folder(self, seed: int) -> Path:
        return self.folder / f"seed_{seed}"

    def rebuild(self, kept: pd.DataFrame | None, diagnosed: pd.DataFrame | None) -> None:
        """Replace each seed's event files by one holding the configuration and the rows kept."""
        stamp = f"{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        for seed in self.spec.seeds:
            folder = self.seed_folder(seed)
            records = [_record(_event(file_version="brain.Event:2"))]
            records += [_record(_event(summary=s)) for s in _hparams(self.spec, seed)]
            records += _metric_records(kept, seed)
            records += _diagnostic_records(_of_seed(diagnosed, seed))
            path = folder / f"events.out.{EVENTS}.{stamp}.bptt"
            with writing(self.root / path.name):
                folder.mkdir(parents=True, exist_ok=True)
                temporary = folder / f".new-{os.getpid()}.tmp"
                temporary.write_bytes(b"".join(records))
                for old in folder.iterdir():
                    if EVENTS in old.name or (old.name.startswith(".new-") and old != temporary):
                        old.unlink(missing_ok=True)
                os.replace(temporary, path)
            self.files[seed] = path

    def append(self, metrics: pd.DataFrame, diagnosed: pd.DataFrame | None) -> None:
        columns = _columns(metrics)
        for seed, path in self.files.items():
            records = _metric_records(metrics, seed, columns)
            records += _diagnostic_records(_of_seed(diagnosed, seed))
            _append(path, b"".join(records), self.root)

    def end(self) -> None:
        """The hparams plugin's end of session: the run is complete."""
        from tensorboardX.proto.api_pb2 import Status

        for path in self.files.values():
            _append(path, _record(_event(summary=_hparams_end(Status.Value("STATUS_SUCCESS")))), self.root)


def _append(path: Path, data: bytes, root: Path) -> None:
    if data:
        with writing(root / path.name), open(path, "ab") as f:
            f.write(data)


def _of_seed(frame: pd.DataFrame | None, seed: int) -> pd.DataFrame | None:
    return None if frame is None or frame.empty else frame[frame["seed"] == seed]


def _columns(frame: pd.DataFrame | None) -> tuple | None:
    """``(names, seeds, epochs, values)`` of a frame of metric rows, split once per chunk."""
    if frame is None or frame.empty:
        return None
    names = [c for c in frame.columns if c not in NOT_METRICS]
    return names, frame["seed"].to_numpy(), frame["epoch"].to_numpy(), frame[names].to_numpy(np.float64)


def _metric_records(frame: pd.DataFrame | None, seed: int, columns: tuple | None = None) -> list[bytes]:
    """One event per epoch of ``seed`` holding every metric column of the CSV rows (finite
    values only)."""
    columns = columns or _columns(frame)
    if columns is None:
        return []
    names, seeds, epochs, values = columns
    mine = seeds == seed
    now = time.time()
    return [
        _record(_event(step=int(epoch), wall_time=now, summary=_scalars(zip(names, row, strict=True))))
        for epoch, row in zip(epochs[mine], values[mine], strict=True)
    ]


# How a diagnostics column along the horizon becomes one number per diagnosed epoch.
def _first(v: np.ndarray) -> float:
    return float(v[0])


def _last(v: np.ndarray) -> float:
    finite = v[np.isfinite(v)]
    return float(finite[-1]) if finite.size else math.nan


def _log10_first(v: np.ndarray) -> float:
    return float(np.log10(v[0])) if v[0] > 0 else math.nan


SUMMARIES = {  # column -> (tag, reduction over t)
    "grad_norm_R": ("log10_grad_norm_R_t0", _log10_first),  # the gradient reaching the start
    "grad_norm_M": ("log10_grad_norm_M_t0", _log10_first),
    "jac_physics": ("max_jac_physics", lambda v: float(np.nanmax(v)) if np.isfinite(v).any() else math.nan),
    "jac_closed_loop": (
        "max_jac_closed_loop",
        lambda v: float(np.nanmax(v)) if np.isfinite(v).any() else math.nan,
    ),
    "log10_sensitivity_physics": ("log10_sensitivity_physics", _last),  # over the whole horizon
    "log10_sensitivity_closed_loop": ("log10_sensitivity_closed_loop", _last),
    "log10_growth_physics": ("log10_growth_physics", _last),
    "log10_growth_closed_loop": ("log10_growth_closed_loop", _last),
}


def diagnostic_summary(rows: pd.DataFrame) -> dict[str, float]:
    """One diagnosed epoch of one seed (rows ordered by t) as ``diagnostics/<tag>`` numbers."""
    rows = rows.sort_values("t")
    return {
        f"diagnostics/{tag}": reduce(rows[column].to_numpy(np.float64))
        for column, (tag, reduce) in SUMMARIES.items()
        if column in rows
    }


def _diagnostic_records(frame: pd.DataFrame | None) -> list[bytes]:
    if frame is None or frame.empty:
        return []
    now = time.time()
    return [
        _record(_event(step=int(epoch), wall_time=now, summary=_scalars(diagnostic_summary(rows).items())))
        for epoch, rows in frame.groupby("epoch", sort=True)
    ]


def _scalars(pairs) -> Any:
    from tensorboardX.proto.summary_pb2 import Summary

    return Summary(
        value=[Summary.Value(tag=name, simple_value=float(v)) for name, v in pairs if math.isfinite(v)]
    )


def _event(step: int = 0, wall_time: float | None = None, summary=None, file_version: str | None = None):
    from tensorboardX.proto.event_pb2 import Event

    event = Event(wall_time=time.time() if wall_time is None else wall_time, step=step)
    if file_version is not None:
        event.file_version = file_version
    if summary is not None:
        event.summary.CopyFrom(summary)
    return event


def _record(event) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the event, its masked CRC-32C."""
    from tensorboardX.record_writer import masked_crc32c

    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def hyperparameters(spec: RunSpec, seed: int) -> dict[str, str | float | bool]:
    """A seed's configuration as TensorBoard's hparams and W&B's config take it (flat)."""
    values: dict[str, Any] = {
        key: value
        for key, value in spec.as_dict().items()
        if key not in ("seeds", "diagnostics", "options", "problem_ref", "threshold")
    }
    values.update({f"option_{key}": value for key, value in spec.options})
    values.update(seed=seed, run_id=spec.run_id)
    return {
        key: value if isinstance(value, (str, bool, int, float)) else str(value)
        for key, value in values.items()
    }


METRICS_SHOWN = ("test_loss", "train_loss", "batch_loss", "update_sq_norm")  # the hparams table's columns


def _hparams(spec: RunSpec, seed: int) -> tuple:
    from tensorboardX.summary import hparams

    experiment, start, _ = hparams(hyperparameters(spec, seed), {name: math.nan for name in METRICS_SHOWN})
    return experiment, start


def _hparams_end(status: int):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    content = HParamsPluginData(session_end_info=SessionEndInfo(status=status), version=0)
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])


def read_events(path: Path) -> list[Any]:
    """The events of one event file, in order (a torn last record, a write cut short, is left
    out, as TensorBoard leaves it)."""
    from tensorboardX.proto.event_pb2 import Event

    data, events, at = Path(path).read_bytes(), [], 0
    while at + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        if at + 12 + length + 4 > len(data):
            break
        events.append(Event.FromString(data[at + 12 : at + 12 + length]))
        at += 12 + length + 4
    return events


def read_scalars(folder: Path) -> pd.DataFrame:
    """Every scalar of the event files under ``folder``: columns ``run`` (the subfolder, as
    TensorBoard names it), ``tag``, ``step``, ``value``."""
    rows = []
    for path in sorted(Path(folder).rglob(f"*{EVENTS}*")):
        run = str(path.parent.relative_to(folder))
        for event in read_events(path):
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    rows.append((run, value.tag, event.step, value.simple_value))
    return pd.DataFrame(rows, columns=["run", "tag", "step", "value"])


# --- Weights & Biases -----------------------------------------------------------------------


def wandb_missing() -> str | None:
    """Why W&B cannot be used here (one line), or None."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return "--wandb needs the wandb package; allowed: install it with pip install 'bptt-cli[wandb]', or leave --wandb out"
    return None


def _wandb_run(project: str, spec: RunSpec, start: int):
    import wandb

    config = {key: value for key, value in hyperparameters(spec, spec.seeds[0]).items() if key != "seed"}
    config["seeds"] = list(spec.seeds)
    return wandb.init(
        project=project,
        group=spec.experiment,
        job_type=spec.flow,
        name=spec.run_id,
        id=spec.run_id,
        resume="allow",
        config=config,
        reinit="create_new",
        settings=wandb.Settings(console="off", quiet=True, silent=True),
    )


def _wandb_log(run, metrics: pd.DataFrame, diagnosed: pd.DataFrame | None) -> None:
    names = [c for c in metrics.columns if c not in NOT_METRICS]
    diagnostic = {}
    if diagnosed is not None and not diagnosed.empty:
        for (seed, epoch), rows in diagnosed.groupby(["seed", "epoch"], sort=True):
            diagnostic.setdefault(int(epoch), {}).update(
                {f"{tag}/seed_{seed}": v for tag, v in diagnostic_summary(rows).items() if math.isfinite(v)}
            )
    per_epoch = dict(diagnostic)
    for epoch, rows in metrics.groupby("epoch", sort=True):
        values = per_epoch.setdefault(int(epoch), {})
        for name in names:
            column = rows[name].to_numpy(np.float64)
            values.update(
                {
                    f"{name}/seed_{seed}": v
                    for seed, v in zip(rows["seed"], column, strict=True)
                    if math.isfinite(v)
                }
            )
            if np.isfinite(column).any():
                values[f"{name}/median"] = float(np.nanmedian(column))
    for epoch in sorted(per_epoch):  # W&B's steps only go forward (epoch 0: the diagnostics before training)
        run.log(per_epoch[epoch], step=epoch)
