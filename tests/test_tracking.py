"""Live curves: TensorBoard event files written while a grid trains (read back here record by
record), never holding an epoch twice or one its CSV lacks, however the run was cut short;
Weights & Biases in its offline mode; and the options' bad input."""

import json
import struct
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from clitools import cli, definition, here

from bptt_cli import config, results, runner
from bptt_cli.results import tracking

GRID = """
problem = "guidance"
[grid]
levels = [0.1]
flows = ["C"]
clips = ["NORM", "NONE"]
[train]
epochs = 4
seeds = 2
seed = 0
data_seed = 3
n_data = 8
batch_size = 8
[diagnostics]
epochs = [0, 2]
"""


def specs_of(folder: Path):
    path = folder / "g.toml"
    path.write_text(GRID)
    return config.resolve(config.load(str(path)))


def curves(folder: Path) -> pd.DataFrame:
    """Every scalar under ``folder`` as TensorBoard reads it: run (a seed's subfolder), tag, step."""
    return tracking.read_scalars(folder)


def test_read_events_leaves_out_a_torn_last_record(tmp_path):
    path = tmp_path / "events.out.tfevents.1.host"
    whole = b"".join(tracking._record(tracking._event(step=k)) for k in (1, 2))
    path.write_bytes(whole + whole[: len(whole) // 3])
    assert [event.step for event in tracking.read_events(path)] == [1, 2]
    header = struct.unpack_from("<Q", whole)[0]
    assert header == len(tracking._event(step=1).SerializeToString())


def test_event_files_hold_each_epoch_committed_while_the_grid_trains(tmp_path, monkeypatch):
    """Read back after every commit (the progress callback): each seed's curve holds exactly the
    epochs its CSV holds, and at the end every metric column of the CSV, the diagnostics'
    summary at each diagnosed epoch and the run's configuration as hparams."""
    monkeypatch.setenv("BPTT_CHUNK_EPOCHS", "1")
    specs = specs_of(tmp_path)
    folder = tmp_path / "out" / "g"
    seen = []

    def check(progress: runner.Progress) -> None:
        if not folder.is_dir():
            return
        table = curves(folder)
        for spec in specs:
            csv = results.RunFiles.of(folder, spec.run_id).csv
            if not csv.exists():
                continue
            rows = pd.read_csv(csv)
            for seed in spec.seeds:
                run = f"{spec.run_id}.tb/seed_{seed}"
                steps = table[(table.run == run) & (table.tag == "test_loss")]["step"].tolist()
                assert steps == sorted(rows[rows.seed == seed]["epoch"].tolist()), (run, steps)
                seen.append(len(steps))

    runner.run(specs, tmp_path / "out", progress=check)
    assert {1, 2, 3, 4} <= set(seen)  # read while the grid trained, epoch after epoch

    table = curves(folder)
    assert table.run.nunique() == len(specs) * 2
    for spec in specs:
        rows = pd.read_csv(results.RunFiles.of(folder, spec.run_id).csv)
        for seed in spec.seeds:
            mine = table[table.run == f"{spec.run_id}.tb/seed_{seed}"]
            wanted = rows[rows.seed == seed].sort_values("epoch")
            for column in ("test_loss", "train_loss", "batch_loss", "update_sq_norm", "test_physics_loss"):
                got = mine[mine.tag == column].sort_values("step")
                np.testing.assert_allclose(got["value"], wanted[column], rtol=1e-6, err_msg=column)
            assert len(mine[mine.tag == "c_kept_fraction"]) == 4
            diagnosed = mine[mine.tag == "diagnostics/log10_grad_norm_R_t0"]
            assert sorted(diagnosed["step"]) == [0, 2]
            events = [
                e
                for path in (folder / f"{spec.run_id}.tb" / f"seed_{seed}").iterdir()
                for e in tracking.read_events(path)
            ]
            tags = [v.tag for e in events for v in e.summary.value]
            assert tags.count("_hparams_/session_start_info") == 1
            assert tags.count("_hparams_/session_end_info") == 1  # complete
            start = next(
                v for e in events for v in e.summary.value if v.tag == "_hparams_/session_start_info"
            )
            content = start.metadata.plugin_data.content
            assert spec.flow.encode() in content and b"learning_rate" in content and b"seed" in content
    assert not list(folder.rglob(".new-*"))


def test_a_run_cut_short_and_resumed_holds_each_epoch_once(tmp_path, monkeypatch):
    """Killed after one run's epoch-2 checkpoint (its CSV ahead of another's): the event files
    hold no epoch the checkpoints do not; resumed, each seed's curve is epochs 1..4 once, equal
    to the CSV. A damaged checkpoint sends the run back a chunk: its curve goes back with it."""
    monkeypatch.setenv("BPTT_CHUNK_EPOCHS", "1")
    specs = specs_of(tmp_path)
    folder = tmp_path / "out" / "g"
    real_save = results.files.save_checkpoint
    saved = []

    def dying_save(path, leaves, epochs_done, run_id=None):
        if epochs_done == 2 and saved:
            raise SystemExit("killed")
        if epochs_done == 2:
            saved.append(run_id)
        real_save(path, leaves, epochs_done, run_id)

    monkeypatch.setattr(results.files, "save_checkpoint", dying_save)
    with pytest.raises(SystemExit):
        runner.run(specs, tmp_path / "out")
    monkeypatch.setattr(results.files, "save_checkpoint", real_save)
    table = curves(folder)
    for spec in specs:
        done = results.load_checkpoint(results.RunFiles.of(folder, spec.run_id).checkpoint)[1]
        logged = table[table.run.str.startswith(spec.run_id) & (table.tag == "test_loss")]
        assert logged["step"].max() <= done
        if done == 2:  # this run's last checkpoint is damaged: it resumes from epoch 1
            results.RunFiles.of(folder, spec.run_id).checkpoint.write_bytes(b"damaged")

    runner.run(specs, tmp_path / "out")
    table = curves(folder)
    for spec in specs:
        rows = pd.read_csv(results.RunFiles.of(folder, spec.run_id).csv)
        for seed in spec.seeds:
            got = table[(table.run == f"{spec.run_id}.tb/seed_{seed}") & (table.tag == "test_loss")]
            assert got["step"].tolist() == [1, 2, 3, 4]
            np.testing.assert_allclose(
                got["value"], rows[rows.seed == seed].sort_values("epoch")["test_loss"], rtol=1e-6
            )
        assert len(list((folder / f"{spec.run_id}.tb" / f"seed_{spec.seeds[0]}").glob("*tfevents*"))) == 1


def test_tensorboard_off_or_in_a_folder_of_its_own(tmp_path, capsys):
    path = definition(tmp_path, epochs=2, seeds=1, diagnostics=False)
    off = here(
        "bptt-run",
        path,
        "--flow",
        "R",
        "--out",
        tmp_path / "a",
        "--tensorboard",
        "off",
        "--workers",
        "1",
        capsys=capsys,
        cwd=tmp_path,
    )
    assert off.returncode == 0, off.stderr
    assert not list((tmp_path / "a").rglob("*tfevents*")) and not list((tmp_path / "a").rglob("*.tb"))
    named = here(
        "bptt-run",
        path,
        "--flow",
        "R",
        "--out",
        tmp_path / "b",
        "--tensorboard",
        tmp_path / "tb",
        "--workers",
        "1",
        capsys=capsys,
        cwd=tmp_path,
    )
    assert named.returncode == 0, named.stderr
    assert not list((tmp_path / "b").rglob("*tfevents*"))
    runs = {p.parent.relative_to(tmp_path / "tb").as_posix() for p in (tmp_path / "tb").rglob("*tfevents*")}
    ids = sorted(p.stem for p in (tmp_path / "b" / "tiny").glob("*.json"))
    assert runs == {f"tiny/{run_id}/seed_0" for run_id in ids} and len(ids) == 2
    # The readers of results ignore event files: nothing to warn about, every row read.
    assert len(results.read_results(tmp_path / "b")) == 2 * 2 and not capsys.readouterr().err


@pytest.mark.parametrize("option", ["--tensorboard", "--compile-cache"])
def test_a_folder_that_cannot_be_written_is_one_line_exit_2_nothing_written(option, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = definition(tmp_path, epochs=2, seeds=1, diagnostics=False)
    result = here(
        "bptt-run", path, "--out", tmp_path / "out", option, blocker / "sub", capsys=capsys, cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(blocker / "sub") in lines[0] and "allowed" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_wandb_without_the_package_is_one_line_exit_2(tmp_path, capsys):
    path = definition(tmp_path, epochs=2, seeds=1, diagnostics=False)
    with mock.patch.dict(sys.modules, {"wandb": None}):  # import wandb raises ImportError
        result = here(
            "bptt-run", path, "--out", tmp_path / "out", "--wandb", "p", capsys=capsys, cwd=tmp_path
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'bptt-cli[wandb]'" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


# --- Weights & Biases, offline --------------------------------------------------------------


def wandb_records(path: Path):
    """The records of a W&B transaction log (``run-<id>.wandb``): a 7-byte header, then LevelDB's
    log format (32 KiB blocks of records, each ``crc32 | length | type | data``, a record split
    over blocks as first, middle and last parts), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    at, block, parts = 7, 32768, b""
    while at + 7 <= len(data):
        room = block - at % block
        _, length, kind = struct.unpack_from("<IHB", data, at)
        if room < 7 or (length == 0 and kind == 0):  # the padded end of a block
            at += room
            continue
        parts += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):  # a full record, or a record's last part
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


@pytest.mark.slow  # a whole grid logged through wandb offline; the event files are checked above
def test_wandb_offline_one_run_per_run_grouped_by_experiment(tmp_path, jax_cache):
    pytest.importorskip("wandb")  # in the dev extra: installed wherever the suite is
    path = definition(tmp_path, epochs=2, seeds=2, diagnostics=False)
    result = cli(
        "bptt-run",
        path,
        "--flow",
        "C",
        "--out",
        tmp_path / "out",
        "--wandb",
        "bptt-test",
        "--workers",
        "1",
        cache=jax_cache,
        cwd=tmp_path,
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp_path / "wandb"),
        WANDB_SILENT="true",
    )
    assert result.returncode == 0, result.stderr
    ids = sorted(p.stem for p in (tmp_path / "out" / "tiny").glob("*.json"))
    logs = sorted((tmp_path / "wandb").rglob("run-*.wandb"))
    assert sorted(p.stem.removeprefix("run-") for p in logs) == ids and len(ids) == 2
    for log in logs:
        run_id = log.stem.removeprefix("run-")
        records = list(wandb_records(log))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert (run.run_id, run.run_group, run.project, run.job_type) == (run_id, "tiny", "bptt-test", "C")
        configured = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert configured["flow"] == "C" and configured["seeds"] == [0, 1] and configured["run_id"] == run_id
        history = {}
        for record in records:
            if record.WhichOneof("record_type") == "history":
                items = {"/".join(i.nested_key) or i.key: i.value_json for i in record.history.item}
                history[record.history.step.num] = items
        rows = pd.read_csv(tmp_path / "out" / "tiny" / f"{run_id}.csv")
        assert sorted(history) == [1, 2]
        for epoch, logged in history.items():
            for seed in (0, 1):
                wanted = rows[(rows.seed == seed) & (rows.epoch == epoch)]["test_loss"].item()
                assert float(logged[f"test_loss/seed_{seed}"]) == pytest.approx(wanted, rel=1e-6)
            assert "c_kept_fraction/median" in logged and "update_sq_norm/median" in logged
