"""The runner in process: a death between the CSV, checkpoint and sidecar writes, and programs shared
by runs that differ only in numbers."""

import itertools
from pathlib import Path

import pandas as pd
import pytest

from bptt_cli import config, results, runner

TINY = """
problem = "guidance"
[grid]
levels = [0.1, 0.001]
flows = ["R"]
clips = ["NORM", "NONE"]
[train]
epochs = 4
seeds = 2
seed = 0
data_seed = 3
n_data = 8
batch_size = 8
optimizer = "adam"
learning_rate = 1e-3
clip_value = 1.0
clip_norm = 1.0
[diagnostics]
enabled = false
"""


def load_specs(folder: Path):
    path = folder / "g.toml"
    path.write_text(TINY)
    return config.resolve(config.load(str(path)))


@pytest.fixture
def specs(tmp_path):
    return load_specs(tmp_path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid's metrics trained without interruption, once for the tests that cut it short."""
    folder = tmp_path_factory.mktemp("reference")
    runner.run(load_specs(folder), folder)
    return frame(folder / "g")


def frame(folder: Path) -> pd.DataFrame:
    parts = [pd.read_csv(p) for p in sorted(folder.glob("*.csv")) if not p.name.endswith(".diagnostics.csv")]
    return pd.concat(parts).drop(columns="epoch_seconds").sort_values(["run_id", "seed", "epoch"])


def test_numeric_levels_and_clips_share_one_program(specs, tmp_path, monkeypatch):
    cache = runner.ProgramCache()
    report = runner.run(specs, tmp_path / "a", cache=cache)
    assert len(report.trained) == 4
    assert cache.count("chunk") == 1  # 2 rc × 2 clips × 2 seeds: one program
    assert len(set(report.compile_seconds.values())) == 1
    table = frame(tmp_path / "a" / "g")
    assert {"batch_physics_loss", "train_physics_loss", "test_physics_loss"} <= set(table.columns)
    assert len(table) == 4 * 2 * 4


def test_death_between_csv_and_checkpoint_loses_nothing(specs, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("BPTT_CHUNK_EPOCHS", "1")
    real_save = results.files.save_checkpoint
    saved_epoch_2 = []

    def dying_save(path, leaves, epochs_done, run_id=None):
        # Killed in the second chunk at a run's checkpoint, its CSV already holding epoch 2,
        # after another run has saved epoch 2 and before the rest have: runs in every state.
        if epochs_done == 2 and saved_epoch_2:
            raise SystemExit("killed")
        if epochs_done == 2:
            saved_epoch_2.append(run_id)
        real_save(path, leaves, epochs_done, run_id)

    monkeypatch.setattr(results.files, "save_checkpoint", dying_save)
    with pytest.raises(SystemExit):
        runner.run(specs, tmp_path / "out")
    monkeypatch.setattr(results.files, "save_checkpoint", real_save)

    folder = tmp_path / "out" / "g"
    states = set()  # (last epoch in the CSV, epoch of the checkpoint) per run
    for spec in specs:
        files = results.RunFiles.of(folder, spec.run_id)
        states.add((pd.read_csv(files.csv)["epoch"].max(), results.load_checkpoint(files.checkpoint)[1]))
    assert states == {(2, 2), (2, 1), (1, 1)}, states  # one run's CSV is ahead of its checkpoint
    report = runner.run(specs, tmp_path / "out")
    assert len(report.resumed) == 4 and not report.found_complete
    pd.testing.assert_frame_equal(frame(folder), reference)

    # Everything is complete now: a third call trains nothing and touches nothing.
    stamps = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = runner.run(specs, tmp_path / "out")
    assert len(again.found_complete) == 4 and not again.trained
    assert stamps == {p: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.mark.parametrize("dies_at", ["part-way", "at the end"])
def test_death_between_checkpoint_and_sidecar(dies_at, specs, reference, tmp_path, monkeypatch):
    """The sidecar never states an epoch the checkpoint lacks; one left behind by a kill is
    brought level (resumed part-way, or found complete), and the histories still tile."""
    import json

    monkeypatch.setenv("BPTT_CHUNK_EPOCHS", "1")
    real_write = results.files.write_json
    finished = set()  # runs whose sidecar states the last epoch

    def dying_write(path, obj):
        # Killed writing a sidecar just after its run's checkpoint: the first one of epoch 2
        # (part-way), or the grid's last one (at the end, every checkpoint complete).
        epoch = obj.get("epochs_done") if path.name.endswith(".json") else None
        last = epoch == 4 and len(finished) == len(specs) - 1
        if epoch == 2 if dies_at == "part-way" else last:
            raise SystemExit("killed")
        if epoch == 4:
            finished.add(obj["run_id"])
        real_write(path, obj)

    monkeypatch.setattr(results.files, "write_json", dying_write)
    with pytest.raises(SystemExit):
        runner.run(specs, tmp_path / "out")
    monkeypatch.setattr(results.files, "write_json", real_write)

    folder = tmp_path / "out" / "g"
    behind = 0
    for spec in specs:
        files = results.RunFiles.of(folder, spec.run_id)
        checkpoint = results.load_checkpoint(files.checkpoint)
        meta = json.loads(files.meta.read_text()) if files.meta.exists() else {"epochs_done": 0}
        assert checkpoint is not None and meta["epochs_done"] <= checkpoint[1]
        behind += meta["epochs_done"] < checkpoint[1]
    assert behind == 1
    report = runner.run(specs, tmp_path / "out")
    assert len(report.found_complete) == (4 if dies_at == "at the end" else 0)
    pd.testing.assert_frame_equal(frame(folder), reference)
    for meta in map(json.loads, (p.read_text() for p in folder.glob("*.json"))):
        assert meta["status"] == "complete" and meta["epochs_done"] == 4
        spans = [(h["from_epoch"], h["to_epoch"]) for h in meta["history"]]
        assert spans[0][0] == 0 and spans[-1][1] == 4
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), spans


def test_threshold_is_not_identity(specs, tmp_path):
    import dataclasses
    import json

    runner.run(specs, tmp_path / "a")
    changed = [dataclasses.replace(spec, threshold=0.5) for spec in specs]
    assert [s.run_id for s in changed] == [s.run_id for s in specs]
    report = runner.run(changed, tmp_path / "a")
    assert len(report.found_complete) == 4 and not report.trained
    for meta in (tmp_path / "a" / "g").glob("*.json"):
        assert json.loads(meta.read_text())["config"]["threshold"] == 0.5
