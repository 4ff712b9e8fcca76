"""The outcome table and the curve smoothing on synthetic results with known answers."""

import numpy as np
import pandas as pd
import pytest

from bptt_cli import summary
from bptt_cli.plotting import curves


def synthetic() -> pd.DataFrame:
    """Two configurations × three seeds × 10 epochs with hand-made test losses."""
    rows = []
    for flow, offsets in (("C", (0.0, 1.0, 2.0)), ("R", (10.0, 20.0, 30.0))):
        for seed, offset in zip((0, 1, 2), offsets, strict=True):
            for epoch in range(1, 11):
                rows.append(
                    {
                        "experiment": "syn",
                        "run_id": f"syn-{flow}",
                        "problem": "cartpole",
                        "level_key": "n_poles",
                        "level": 1,
                        "flow": flow,
                        "clip": "NORM",
                        "seed": seed,
                        "epoch": epoch,
                        # C: 11 - epoch + offset, so the median seed (offset 1) is 12 - epoch.
                        "test_loss": (11 - epoch + offset) if flow == "C" else offset,
                        "diverged": flow == "R" and seed == 2 and epoch >= 5,
                    }
                )
    return pd.DataFrame(rows)


def test_summary_known_answers():
    table = summary.summarize(synthetic(), {"syn-C": 5.0, "syn-R": None}).set_index("flow")
    c, r = table.loc["C"], table.loc["R"]
    assert c["n_seeds"] == 3 and c["epochs"] == 10
    # Final epoch: losses 1, 2, 3 -> median 2, quartiles 1.5 and 2.5.
    assert (c["final_test_median"], c["final_test_q25"], c["final_test_q75"]) == (2.0, 1.5, 2.5)
    assert c["best_test_loss"] == 2.0  # each seed's minimum is its final value
    assert c["first_epoch_below"] == 8  # median curve 12 - epoch < 5 first at epoch 8
    assert c["n_diverged"] == 0
    # Final losses 1, 2, 3 against 5: all three below, exact 95 % interval [0.292, 1].
    assert c["n_final_below"] == 3 and c["final_below_ci_low"] == pytest.approx(0.2924, abs=1e-4)
    assert c["final_below_ci_high"] == 1.0
    assert r["final_test_median"] == 20.0 and r["n_diverged"] == 1
    assert pd.isna(r["first_epoch_below"])  # no threshold


def test_threshold_never_reached_and_markdown():
    table = summary.summarize(synthetic(), {"syn-C": 0.5, "syn-R": 0.5})
    assert table["first_epoch_below"].isna().all()
    text = summary.to_markdown(table)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 2
    assert (
        "| syn | n_poles=1 | C | NORM | 3 | 10 | 2 [1.5, 2.5] | 2 | never (< 0.5) | 0 of 3 [0%, 71%] | 0 |"
        in text
    )


def test_moving_average_front_padded():
    values = np.array([4.0, 2.0, 6.0, 8.0])
    out = curves.smooth(values, window=3)
    np.testing.assert_allclose(out, [4.0, (4 + 4 + 2) / 3, (4 + 2 + 6) / 3, (2 + 6 + 8) / 3])
    assert curves.smooth(np.ones(50)).shape == (50,)
    np.testing.assert_allclose(curves.smooth(np.full(40, 3.0)), 3.0)


def test_band_is_median_and_quartiles_of_smoothed_seeds():
    frame = synthetic().query("flow == 'R'")
    epochs, q25, q50, q75 = curves.band(frame, "test_loss")
    np.testing.assert_array_equal(epochs, np.arange(1, 11))
    np.testing.assert_allclose(q50, 20.0)
    np.testing.assert_allclose(q25, 15.0)
    np.testing.assert_allclose(q75, 25.0)


def test_latest_runs_prefers_the_longest():
    short = synthetic().query("flow == 'C' and epoch <= 3").assign(run_id="syn-C-short")
    kept = curves.latest_runs(pd.concat([synthetic(), short]))
    assert "syn-C-short" not in set(kept["run_id"])
    assert set(kept["run_id"]) == {"syn-C", "syn-R"}


@pytest.mark.parametrize("window", [1, 30])
def test_smoothing_window_one_is_identity_and_trailing(window):
    values = np.arange(100, dtype=float)
    out = curves.smooth(values, window)
    if window == 1:
        np.testing.assert_array_equal(out, values)
    else:  # a trailing average lags a ramp by (window - 1) / 2 once past the padding
        np.testing.assert_allclose(out[40:], values[40:] - (window - 1) / 2)


def test_rows_follow_the_figures_order():
    """Levels by value (10 after 2), flows R, M, C, S, then truncations by k (the figures'
    order), clips NORM, VALUE, NONE (the clip preference): not the alphabet."""
    base = synthetic().query("flow == 'R' and seed == 0")
    frames = [
        base.assign(run_id=f"{flow}-{clip}-{level}", flow=flow, clip=clip, level=level)
        for level in (10, 2)
        for flow in ("T10", "S", "C", "T2", "M", "R")
        for clip in ("NONE", "VALUE", "NORM")
    ]
    table = summary.summarize(pd.concat(frames), {})
    keys = list(zip(table["level"], table["flow"], table["clip"], strict=True))
    flows = ["R", "M", "C", "S", "T2", "T10"]
    assert keys == [(lv, f, c) for lv in (2, 10) for f in flows for c in ("NORM", "VALUE", "NONE")]


def census(finals: dict[str, list[float]], diverged: dict[str, list[bool]] | None = None) -> pd.DataFrame:
    """One level, flows with given final test losses per seed (two epochs; the first at 100)."""
    rows = []
    for flow, values in finals.items():
        for seed, value in enumerate(values):
            for epoch, loss in ((1, 100.0), (2, value)):
                dead = bool(diverged and diverged.get(flow, [False] * len(values))[seed] and epoch == 2)
                rows.append(
                    {
                        "experiment": "q",
                        "run_id": f"q-{flow}",
                        "problem": "quantum",
                        "level_key": "target_state",
                        "level": "4",
                        "flow": flow,
                        "clip": "NORM",
                        "optimizer": "adam",
                        "seed": seed,
                        "epoch": epoch,
                        "test_loss": loss,
                        "diverged": dead,
                    }
                )
    return pd.DataFrame(rows)


def test_paired_comparisons_count_seeds_ratios_and_the_exact_sign_test():
    # C lower than R on 9 of 10 seeds; C against M: 5 lower, 5 higher.
    r = [100.0] * 10
    c = [50.0] * 9 + [200.0]
    m = [25.0] * 5 + [400.0] * 5
    table = summary.paired(census({"R": r, "M": m, "C": c})).set_index(["flow", "against"])
    c_r = table.loc[("C", "R")]
    assert (c_r["n_pairs"], c_r["n_lower"], c_r["n_ties"]) == (10, 9, 0)
    assert c_r["median_ratio"] == 0.5
    assert c_r["p_value"] == pytest.approx(2 * 11 / 1024)  # P(X <= 1) + P(X >= 9), X ~ B(10, 1/2)
    c_m = table.loc[("C", "M")]
    assert c_m["n_lower"] == 5 and c_m["p_value"] == pytest.approx(1.0)
    assert set(table.index) == {("M", "R"), ("C", "R"), ("C", "M")}


def test_a_diverged_seed_ranks_as_dead_and_both_dead_is_a_tie():
    """As released, a diverged run died: it loses to any finite loss, whatever value its
    frozen parameters still give."""
    frame = census(
        {"R": [1.0, 1.0, 5.0], "C": [2.0, 3.0, 4.0]}, {"R": [True, False, True], "C": [False, False, True]}
    )
    row = summary.paired(frame).iloc[0]
    assert (row["n_lower"], row["n_ties"]) == (1, 1)  # seed 0: C 2 < R dead; seed 2: both dead
    table = summary.summarize(frame, {}).set_index("flow")
    assert table.loc["R", "final_test_median"] == np.inf and table.loc["R", "n_diverged"] == 2
    assert table.loc["R", "best_test_loss"] == 100.0  # seeds 0 and 2 reached 100 before dying


def test_the_summary_says_when_seeds_are_too_few_for_any_p_below_005(tmp_path):
    text = summary.paired_markdown(summary.paired(census({"R": [3.0, 3.0, 3.0], "C": [1.0, 1.0, 1.0]})))
    assert "| q | target_state=4 | NORM | C vs R | 3 of 3 | 0.333 | 0.25 |" in text
    assert "no p-value can fall below 0.05" in text
    many = summary.paired_markdown(summary.paired(census({"R": [3.0] * 8, "C": [1.0] * 8})))
    assert "0.00781" in many and "no p-value" not in many


def test_runs_of_one_configuration_in_blocks_of_seeds_are_drawn_as_one():
    """A census trained in blocks of seeds (one run each) is one configuration; a shorter run
    of it (a smoke run) is left out, and so is a block whose seeds are already drawn."""
    blocks = []
    for run_id, seeds, epochs in (
        ("a", (0, 1), 10),
        ("b", (2, 3), 10),
        ("smoke", (0, 1), 2),
        ("again", (1, 2), 10),
    ):
        frame = census({"C": [1.0] * 4})
        frame = frame[frame["seed"].isin(seeds)].copy()
        frame["run_id"] = run_id
        frame["epoch"] = frame["epoch"] * epochs // 2
        blocks.append(frame)
    kept = curves.latest_runs(pd.concat(blocks))
    assert sorted(kept["run_id"].unique()) == ["a", "b"] and sorted(kept["seed"].unique()) == [0, 1, 2, 3]


def test_a_diverged_seed_smooths_to_inf_where_its_window_holds_the_divergence():
    out = curves.smooth(np.array([1.0, 2.0, np.inf, np.inf]), window=2)
    np.testing.assert_array_equal(out, [1.0, 1.5, np.inf, np.inf])


def test_a_variant_is_compared_seed_by_seed_with_the_default_and_basin_changes_counted():
    """C in float64 and C with another optimizer against C with Keras' Adam in float32, on the
    same seeds: which seeds end lower, and which end on the other side of the threshold."""
    default = census({"C": [20.0, 90.0, 95.0, 30.0, 92.0]})
    wider = census({"C": [25.0, 20.0, 94.0, 93.0, 91.0]}).assign(precision="float64", run_id="q-C-64")
    optax = census({"C": [10.0, 80.0]}).assign(optimizer="adam-optax", run_id="q-C-optax")
    frame = pd.concat([default, wider, optax], ignore_index=True)
    thresholds = {"q-C": 40.0, "q-C-64": 40.0, "q-C-optax": 40.0}
    table = summary.variants(frame, thresholds).set_index(["optimizer", "precision"])
    assert list(table.index) == [("adam", "float64"), ("adam-optax", "float32")]
    f64 = table.loc[("adam", "float64")]
    # Lower on seeds 1, 2, 4; seeds 1 (90 -> 20) and 3 (30 -> 93) cross 40 in opposite directions.
    assert (f64["n_pairs"], f64["n_lower"], f64["n_ties"]) == (5, 3, 0)
    assert (f64["n_below"], f64["n_below_default"], f64["n_changed"]) == (2, 2, 2)
    assert f64["median_ratio"] == pytest.approx(94.0 / 95.0)
    assert f64["p_value"] == pytest.approx(1.0)
    optax_row = table.loc[("adam-optax", "float32")]
    assert (optax_row["n_pairs"], optax_row["n_lower"], optax_row["n_changed"]) == (2, 2, 0)
    text = summary.variants_markdown(summary.variants(frame, thresholds))
    assert (
        "| q | target_state=4 | C | NORM | float64 | 3 of 5 | 0.989 | 1 | 2 against 2 (< 40) | 2 of 5 |"
        in text
    )
    assert "| adam-optax | 2 of 2 |" in text
    assert summary.variants(default, thresholds).empty  # nothing but the default: no table


def test_the_summary_files_hold_the_variants_only_where_there_are_some(tmp_path):
    default = census({"C": [20.0, 90.0]})
    summary.write(default, {"q-C": {"config": {"threshold": 40.0}}}, tmp_path)
    assert (
        not (tmp_path / "variants.csv").exists()
        and "default optimizer" not in (tmp_path / "summary.md").read_text()
    )
    wider = census({"C": [95.0, 91.0]}).assign(precision="float64", run_id="q-C-64")
    metas = {"q-C": {"config": {"threshold": 40.0}}, "q-C-64": {"config": {"threshold": 40.0}}}
    summary.write(pd.concat([default, wider]), metas, tmp_path)
    written = pd.read_csv(tmp_path / "variants.csv")
    assert written.loc[0, "precision"] == "float64" and written.loc[0, "n_changed"] == 1
    assert "Against the default optimizer and precision" in (tmp_path / "summary.md").read_text()


def test_a_run_of_another_optimizer_or_precision_is_its_own_curve_in_its_flows_colour():
    import matplotlib.pyplot as plt

    frame = pd.concat(
        [
            census({"C": [1.0, 2.0], "R": [3.0, 4.0]}),
            census({"C": [5.0, 6.0]}).assign(optimizer="adam-optax", run_id="q-C-optax"),
            census({"C": [7.0, 8.0]}).assign(precision="float64", run_id="q-C-64"),
        ],
        ignore_index=True,
    )
    rows = curves._ordered(summary.as_released(frame))
    fig, ax = plt.subplots()
    styles = []  # as asked for: matplotlib names a custom dash pattern "--" when asked back
    plot = ax.plot
    ax.plot = lambda *a, **k: styles.append(k["linestyle"]) or plot(*a, **k)
    curves._draw(ax, rows, "test_loss", ["R", "C"])
    lines = {line.get_label(): line for line in ax.get_lines()}
    plt.close(fig)
    assert list(lines) == ["R NORM", "C NORM", "C NORM adam-optax", "C NORM float64"]
    assert styles[0] == styles[1] == "--"  # clip NORM's
    assert len({str(style) for style in styles[1:]}) == 3 and not set(map(str, styles[2:])) & {"-", "--", ":"}
    assert lines["C NORM"].get_color() == lines["C NORM float64"].get_color() != lines["R NORM"].get_color()
    own = curves.band(rows[rows["run_id"] == "q-C-optax"], "test_loss")[2]  # its own seeds only
    np.testing.assert_array_equal(lines["C NORM adam-optax"].get_ydata(), own)


def test_against_draws_yours_over_the_published_runs_of_the_same_optimizer_and_precision(tmp_path):
    import matplotlib

    from bptt_cli.plotting import against

    published = pd.concat(
        [
            census({"C": [1.0, 2.0, 3.0]}),
            census({"C": [9.0]}).assign(optimizer="adam-optax", run_id="q-C-optax"),
        ]
    ).assign(problem="quantum")
    mine = census({"C": [8.0, 10.0]}).assign(optimizer="adam-optax", run_id="mine-optax")
    table = against.compare(mine, published)
    assert len(table) == 1 and table.loc[0, "n_published"] == 1 and table.loc[0, "verdict"] == "inside"
    assert against.describe(table)[0].startswith("q target_state=4 C NORM adam-optax: at epoch 2")
    seen = []
    original = matplotlib.axes.Axes.plot
    matplotlib.axes.Axes.plot = lambda self, *a, **k: seen.append(k) or original(self, *a, **k)
    try:
        against.plot_against(mine, published, tmp_path)
    finally:
        matplotlib.axes.Axes.plot = original
    assert sum(k.get("color") == "0.6" for k in seen) == 1  # the one published adam-optax seed
    assert [k["label"] for k in seen if "label" in k] == ["C NORM adam-optax (yours)"]
