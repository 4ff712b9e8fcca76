"""Everything that touches result files: layout and atomic writes (``files``), locks
(``locks``), readers (``read``), committing chunks (``commit``) and the resume state the files
prove (``resume``).

Layout under ``<out>/<experiment>/``, per run (one configuration, all its seeds):

- ``<run_id>.csv``: tidy metrics, one row per (seed, epoch), configuration columns first;
- ``<run_id>.diagnostics.csv``: gradient diagnostics, one row per (seed, diagnosed epoch, t);
- ``<run_id>.json``: the resolved configuration, versions, devices, progress and who trained it;
- ``<run_id>.ckpt.npz``: the training state after the last committed epoch (for resume), and
  ``<run_id>.ckpt.previous.npz`` the one before it (resumed from when the last is damaged);
- ``<run_id>.trajectories.npz``: test trajectories of the trained controllers (written last);
- ``<run_id>.lock``: present while a worker trains the run (held with ``flock``);
- ``<name>.damaged-<UTC time>``: a damaged file set aside (never read again, never deleted).

A chunk of epochs is committed by appending its rows to the CSVs, then replacing the
checkpoint and then the sidecar (an append is one ``write`` followed by ``fsync``, so the rows
are durable before the checkpoint that claims them; replacements go through a temporary file,
``fsync`` and ``os.replace``). So a checkpoint never claims an epoch whose rows are not in the
CSVs, and on resume CSV rows beyond it (a kill between the writes) are dropped and recomputed
identically. The sidecar, written after it, never states more epochs than the checkpoint holds
(a kill between the two leaves it one commit behind, and the next worker brings it level).

Every file is validated when it is read back (``resume``): a run resumes from the latest
checkpoint its CSVs prove, damaged files are set aside with a warning line, and the rows they
held are recomputed. Readers drop torn or malformed lines and the rows beyond the sidecar's
``epochs_done``, so a folder can be plotted while it is being written, and say so, one line
per file. When a run completes, its CSVs are rewritten once in (seed, epoch) order. A write
that fails (a full disk, a quota, a read-only folder) is a ``DiskError`` naming the folder;
what was committed before it stays valid.
"""

from bptt_cli.results.commit import (
    ProgramRecord,
    ProgramWriter,
    history_until,
    settle_finished,
    written_before,
)
from bptt_cli.results.files import (
    CONFIG_COLUMNS,
    DIAGNOSTIC_CONFIG,
    FIGURES_DIR,
    RUN_CONFIG,
    TRAINED_BY_DEFAULT,
    Checkpoint,
    DamagedFile,
    DiskError,
    RunFiles,
    append_csv,
    check_writable,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    set_aside,
    versions,
    write_atomic,
    write_csv,
    write_json,
    write_trajectories,
)
from bptt_cli.results.locks import LockError, RunLock, check_lock_file, probe_locks, worker_name
from bptt_cli.results.read import (
    CsvScan,
    load_rows,
    read_metas,
    read_results,
    read_run_csv,
    read_trajectories,
    scan_csv,
    warn,
)
from bptt_cli.results.resume import Damage, RunState, epochs_committed, inspect_run, repair, saved_states

__all__ = [
    "CONFIG_COLUMNS",
    "DIAGNOSTIC_CONFIG",
    "FIGURES_DIR",
    "RUN_CONFIG",
    "TRAINED_BY_DEFAULT",
    "Checkpoint",
    "CsvScan",
    "Damage",
    "DamagedFile",
    "DiskError",
    "LockError",
    "ProgramRecord",
    "ProgramWriter",
    "RunFiles",
    "RunLock",
    "RunState",
    "append_csv",
    "check_lock_file",
    "check_writable",
    "epochs_committed",
    "history_until",
    "inspect_run",
    "load_checkpoint",
    "load_rows",
    "probe_locks",
    "read_checkpoint",
    "read_metas",
    "read_results",
    "read_run_csv",
    "read_trajectories",
    "repair",
    "save_checkpoint",
    "saved_states",
    "scan_csv",
    "set_aside",
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
