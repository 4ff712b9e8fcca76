"""Everything that touches result files: layout and atomic writes (``files``), locks
(``locks``), readers (``read``), and committing chunks with the resume state (``commit``).

Layout under ``<out>/<experiment>/``, per run (one configuration, all its seeds):

- ``<run_id>.csv``: tidy metrics, one row per (seed, epoch), configuration columns first;
- ``<run_id>.diagnostics.csv``: gradient diagnostics, one row per (seed, diagnosed epoch, t);
- ``<run_id>.json``: the resolved configuration, versions, devices, progress and who trained it;
- ``<run_id>.ckpt.npz``: the training state after the last committed epoch (for resume);
- ``<run_id>.trajectories.npz``: test trajectories of the trained controllers (written last);
- ``<run_id>.lock``: present while a worker trains the run (held with ``flock``).

A chunk of epochs is committed by appending its rows to the CSVs, then replacing the
checkpoint and then the sidecar (an append is one ``write`` followed by ``fsync``; replacements
go through a temporary file and ``os.replace``). The checkpoint is the truth: a run is complete
when its checkpoint holds every epoch, and on resume CSV rows beyond it (a kill between the
writes) are dropped and recomputed identically. The sidecar, written after it, never states
more epochs than the checkpoint holds (a kill between the two leaves it one commit behind, and
the next worker brings it level), so every epoch a sidecar states can be resumed from. Readers drop a torn last line and
the rows beyond the sidecar's ``epochs_done``, so a folder can be plotted while it is being
written. When a run completes, its CSVs are rewritten once in (seed, epoch) order.
"""

from bptt_cli.results.commit import (
    ProgramRecord,
    ProgramWriter,
    epochs_committed,
    history_until,
    saved_states,
    settle_finished,
    written_before,
)
from bptt_cli.results.files import (
    CONFIG_COLUMNS,
    DIAGNOSTIC_CONFIG,
    FIGURES_DIR,
    RUN_CONFIG,
    RunFiles,
    append_csv,
    check_writable,
    load_checkpoint,
    save_checkpoint,
    versions,
    write_atomic,
    write_csv,
    write_json,
    write_trajectories,
)
from bptt_cli.results.locks import LockError, RunLock, check_lock_file, probe_locks, worker_name
from bptt_cli.results.read import (
    load_rows,
    read_metas,
    read_results,
    read_run_csv,
    read_trajectories,
    warn,
)

__all__ = [
    "CONFIG_COLUMNS",
    "DIAGNOSTIC_CONFIG",
    "FIGURES_DIR",
    "RUN_CONFIG",
    "LockError",
    "ProgramRecord",
    "ProgramWriter",
    "RunFiles",
    "RunLock",
    "append_csv",
    "check_lock_file",
    "check_writable",
    "epochs_committed",
    "history_until",
    "load_checkpoint",
    "load_rows",
    "probe_locks",
    "read_metas",
    "read_results",
    "read_run_csv",
    "read_trajectories",
    "save_checkpoint",
    "saved_states",
    "settle_finished",
    "versions",
    "warn",
    "worker_name",
    "write_atomic",
    "write_csv",
    "write_json",
    "write_trajectories",
    "written_before",
]
