"""Published data (issue 28 item 5): finished runs copied small into a folder that bptt-plot
reads as it reads results and that bptt-run takes as complete; bptt-plot --against compares a
user's runs with them."""

import shutil
import sys

import pandas as pd
import pytest

from bptt_cli import config, results
from bptt_cli.core import devices
from bptt_cli.results.publish import publish

TINY = {"levels": [1], "clips": ["NORM"], "epochs": 3, "n_data": 16, "diagnostics": False}


def specs(flows=("R", "C"), seed=42, seeds=2):
    return config.resolve(config.load("cartpole"), "smoke", flows=list(flows), seed=seed, seeds=seeds, **TINY)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from bptt_cli import runner

    root = tmp_path_factory.mktemp("published")
    runner.run(specs(), root / "results", profile=devices.profile("cpu"))
    runner.run(specs(seed=50, seeds=3), root / "mine", profile=devices.profile("cpu"))
    return root


def main(tool, *args, capsys):
    """The command line in process: (exit code, stdout, stderr)."""
    from bptt_cli import cli

    argv = sys.argv
    sys.argv = [tool, *map(str, args)]
    try:
        with pytest.raises(SystemExit) as exit_:
            (cli.plot_main if tool == "bptt-plot" else cli.run_main)()
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_published_runs_read_as_the_results_they_came_from_and_small(trained, tmp_path):
    published, already = publish(trained / "results", tmp_path / "pub")
    assert sorted(published) == sorted(s.run_id for s in specs()) and already == []
    folder = tmp_path / "pub" / "cartpole"
    kinds = sorted(p.name.split(".", 1)[1] for p in folder.iterdir())
    assert kinds == ["csv.gz", "csv.gz", "json", "json"]
    before, after = (
        results.read_results(path).sort_values(["run_id", "seed", "epoch"]).reset_index(drop=True)
        for path in (trained / "results", tmp_path / "pub")
    )
    pd.testing.assert_frame_equal(before, after)
    # Publishing again changes nothing, and the same runs publish to the same bytes anywhere.
    again, already = publish(trained / "results", tmp_path / "pub")
    assert again == [] and sorted(already) == sorted(published)
    publish(trained / "results", tmp_path / "again")
    for path in folder.glob("*.csv.gz"):
        assert path.read_bytes() == (tmp_path / "again" / "cartpole" / path.name).read_bytes()


def test_bptt_run_into_published_data_trains_only_what_is_missing(trained, tmp_path):
    from bptt_cli import runner

    publish(trained / "results", tmp_path / "pub")
    grid = specs(flows=("R", "M", "C"))
    report = runner.run(grid, tmp_path / "pub", profile=devices.profile("cpu"))
    assert report.trained == [grid[1].run_id]  # M only
    assert sorted(report.found_complete) == sorted([grid[0].run_id, grid[2].run_id])
    frame = results.read_results(tmp_path / "pub")
    assert len(frame) == 3 * 2 * 3 and not frame.duplicated(["run_id", "seed", "epoch"]).any()


def test_bptt_plot_draws_published_data_and_compares_runs_against_it(trained, tmp_path, capsys):
    publish(trained / "results", tmp_path / "pub")
    code, out, err = main("bptt-plot", tmp_path / "pub", capsys=capsys)
    assert code == 0 and (tmp_path / "pub" / "figures" / "cartpole.png").exists()
    assert "| cartpole | n_poles=1 | C | NORM | 2 | 3 |" in out

    mine = tmp_path / "mine"
    shutil.copytree(trained / "mine", mine)
    code, out, err = main("bptt-plot", mine, "--against", tmp_path / "pub", capsys=capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if "the published spread" in line]
    assert len(lines) == 2 and all("(3 seeds) is " in line and "of 2 seeds" in line for line in lines)
    table = pd.read_csv(mine / "against.csv")
    assert set(table["verdict"]) <= {"inside", "below", "above"} and set(table["flow"]) == {"R", "C"}
    for row in table.itertuples():
        inside = row.published_low <= row.mine_median <= row.published_high
        assert (row.verdict == "inside") == inside
    assert (mine / "figures" / "against_cartpole.png").exists()


def test_against_with_nothing_in_common_is_one_line_exit_2(trained, tmp_path, capsys):
    publish(trained / "results", tmp_path / "pub")
    other = tmp_path / "other"
    shutil.copytree(trained / "mine", other)
    for sidecar in (other / "cartpole").glob("*.json"):  # the same runs under another experiment
        sidecar.unlink()
    for csv in (other / "cartpole").glob("*.csv"):
        frame = pd.read_csv(csv)
        frame["experiment"] = "elsewhere"
        frame.to_csv(csv, index=False)
    code, _, err = main("bptt-plot", other, "--against", tmp_path / "pub", capsys=capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "is in" in err
    assert not (other / "figures").exists() and not (other / "summary.md").exists()  # nothing written
