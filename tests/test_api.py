"""The Python API (docs/python-api.md): a grid from a mapping trained in process and in a pool
of worker processes, its results as DataFrames, any folder and published data loaded alike,
and bad input raised as one-line ``UserError``s before anything is written."""

import os
from unittest import mock

import pandas as pd
import pytest

import bptt_cli
from bptt_cli import api
from bptt_cli.results.publish import publish

GRID = {
    "problem": "cartpole",
    "grid": {"levels": [1], "flows": ["R", "C"], "clips": ["NORM"]},
    "train": {"epochs": 2, "seeds": 2, "seed": 0, "data_seed": 1, "n_data": 16, "batch_size": 8},
    "diagnostics": {"epochs": [0, 2]},
}


@pytest.fixture(autouse=True, scope="module")
def environment():
    """What ``run`` sets for jax (device counts) is restored after the module."""
    with mock.patch.dict(os.environ):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "res"
    return out, bptt_cli.run(GRID, name="tiny", out=out, workers=1)


def test_run_returns_the_grids_metrics_and_diagnostics(trained):
    out, (metrics, diagnostics) = trained
    assert len(metrics) == 2 * 2 * 2  # runs x seeds x epochs
    assert set(metrics["flow"]) == {"R", "C"} and set(metrics["level"]) == {1}
    assert metrics["test_loss"].notna().all()
    assert set(diagnostics["epoch"]) == {0, 2} and set(diagnostics["flow"]) == {"R", "C"}
    again = bptt_cli.run(GRID, name="tiny", out=out, workers=1, flows=["C"])  # complete: nothing trained
    pd.testing.assert_frame_equal(again.metrics, metrics[metrics["flow"] == "C"].reset_index(drop=True))


def test_load_reads_a_results_folder_and_published_data_alike(trained, tmp_path):
    out, (metrics, diagnostics) = trained
    loaded = bptt_cli.load(out)
    pd.testing.assert_frame_equal(loaded.metrics, metrics)
    done, _ = publish(out, tmp_path / "published")
    assert len(done) == 2
    published = bptt_cli.load(tmp_path / "published")
    pd.testing.assert_frame_equal(published.metrics, metrics)
    pd.testing.assert_frame_equal(published.diagnostics, diagnostics)


def test_a_pool_of_workers_from_python(trained, tmp_path):
    """``api.train`` with two worker processes, each pinned to its cores and handed the plan
    (not a command line): every run trained once, the same metrics as in process."""
    _, (metrics, _) = trained
    placement = api.place()
    grid = api.grid(GRID, name="tiny")
    profile = placement.profile()
    plan = api.plan(grid, tmp_path, profile)
    assert len(plan.programs) == 2  # R and C: one worker each
    report = api.train(plan, tmp_path, profile, workers=2)
    assert sorted(report.trained) == sorted(spec.run_id for spec in grid.specs) and not report.interrupted
    pooled = bptt_cli.load(tmp_path).metrics
    pd.testing.assert_frame_equal(pooled.drop(columns="epoch_seconds"), metrics.drop(columns="epoch_seconds"))


@pytest.mark.parametrize(
    ("definition", "options", "message"),
    [
        (GRID, {"flows": ["X"]}, "unknown flow 'X'"),
        (GRID, {"epochs": 0}, "epochs must be a positive integer, got 0"),
        (GRID, {"name": "a/b"}, "invalid experiment name 'a/b'; allowed:"),
        ({**GRID, "colour": 1}, {}, "unknown key 'colour' in definition 'experiment'; allowed:"),
        (42, {}, "invalid definition 42; allowed: a built-in name, a .toml path or a mapping"),
        ("nope", {}, "unknown experiment 'nope'; allowed:"),
        (GRID, {"device": "tpu"}, "unknown device 'tpu'; allowed: auto, cpu, gpu"),
        (GRID, {"workers": 0}, "invalid workers 0; allowed: a positive integer"),
        (GRID, {"devices": 0}, "invalid device count 0; allowed: a positive integer"),
        (GRID, {"grouping": "tall"}, "unknown grouping 'tall'; allowed: auto, narrow, wide"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(definition, options, message, tmp_path):
    with pytest.raises(bptt_cli.UserError, match="^" + message.replace("(", r"\(")) as err:
        bptt_cli.run(definition, out=tmp_path / "out", **options)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_bad_device_count_in_the_environment(tmp_path, monkeypatch):
    """Refused before anything imports jax (whose import fails on it)."""
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "abc")
    with pytest.raises(
        bptt_cli.UserError, match=r"^invalid JAX_NUM_CPU_DEVICES 'abc'; allowed: a positive integer"
    ):
        bptt_cli.run(GRID, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_of_a_missing_folder(tmp_path):
    with pytest.raises(bptt_cli.UserError, match="does not exist; allowed: a folder of bptt-run results"):
        bptt_cli.load(tmp_path / "none")
