"""The reference grid of ``test_previous_release.py``, and how its values were made.

Every flow (``T2`` included), two clip modes and two levels of each paper problem, a few
epochs on a few states, trained in process with the CPU layout on one device. The stored
``previous_release.csv`` was written by the release before the runner's redesign (commit
85df171), with this file run against that checkout::

    PYTHONPATH=<checkout of 85df171> python tests/data/previous_release.py tests/data/previous_release.csv
"""

import sys
import tempfile
from pathlib import Path

import pandas as pd

GRID = {
    "cartpole": [1, 2],
    "guidance": [0.1, 0.001],
    "quantum": [3, 4],
}
FLOWS = ["R", "M", "S", "C", "T2"]
CLIPS = ["NORM", "NONE"]
# The stored values were trained with optax's Adam, the default up to 0.3.0 (now "adam-optax").
TRAIN = {"seeds": 2, "epochs": 3, "n_data": 16, "batch_size": 8, "optimizer": "adam-optax"}
KEYS = ["experiment", "level", "flow", "clip", "seed", "epoch"]
METRICS = ["batch_loss", "train_loss", "test_loss", "update_sq_norm", "diverged"]


def specs():
    from bptt_cli import config

    return [
        spec
        for name, levels in GRID.items()
        for spec in config.resolve(
            config.load(name), levels=levels, flows=FLOWS, clips=CLIPS, diagnostics=False, **TRAIN
        )
    ]


def train(out: Path) -> pd.DataFrame:
    """The grid trained under ``out``, one row per (run, seed, epoch): KEYS, then METRICS."""
    from bptt_cli import results
    from bptt_cli.core import devices

    try:
        from bptt_cli import runner  # since the redesign
    except ImportError:
        from bptt_cli.core import runner
    runner.run(specs(), out, profile=devices.profile("cpu"))
    frame = results.read_results(out)
    return frame[KEYS + METRICS].sort_values(KEYS).reset_index(drop=True)


if __name__ == "__main__":
    # python previous_release.py OUT.csv [PROBLEM]: the whole grid, or one problem's part of it
    if len(sys.argv) > 2:
        GRID = {sys.argv[2]: GRID[sys.argv[2]]}
    with tempfile.TemporaryDirectory() as folder:
        train(Path(folder)).to_csv(sys.argv[1], index=False, float_format="%.9g")
