"""A new gradient flow is one entry in the flow registry (docs/development.md, "Adding a gradient
flow"): registered here, from the test, the combination of T10 with R trains through bptt-run's
runner (alone in its own program, and as per-row gates next to R: the GPU layout) and is drawn
by bptt-plot, with no other edit."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bptt_cli import config, plotting, problems, results, runner
from bptt_cli.core import devices, flow_names, flows, plan
from bptt_cli.plotting import curves

NAME, COLOUR = "CT10", "#9b5de5"  # T10's entries where their sign agrees with R's
GRID = f"""
problem = "cartpole"
[grid]
levels = [1]
flows = ["{NAME.lower()}", "R"]
clips = ["NORM"]
[train]
epochs = 3
seeds = 2
seed = 0
data_seed = 5
n_data = 16
batch_size = 8
optimizer = "adam"
learning_rate = 1e-2
clip_value = 1.0
clip_norm = 1.0
[diagnostics]
enabled = false
"""
NARROW = devices.profile("cpu", "narrow")
WIDE = devices.profile("cpu", "wide")
METRICS = ["batch_loss", "test_loss", "update_sq_norm", "cos_mr", "c_kept_fraction"]


@pytest.fixture
def new_flow():
    """The one edit: a registry entry (undone afterwards, so that other tests see the built-ins)."""
    flow = flow_names.register(flow_names.FlowDef(NAME, combines=("T10", "R"), colour=COLOUR))
    yield flow
    del flow_names.FLOWS[NAME]


def test_a_flow_is_refused_where_it_would_be_ambiguous():
    for bad in (
        flow_names.FlowDef("R", cuts=flow_names.Cuts()),  # taken
        flow_names.FlowDef("T7", cuts=flow_names.Cuts()),  # a truncation's name
        flow_names.FlowDef("c2", cuts=flow_names.Cuts()),  # not upper case
        flow_names.FlowDef("CC", combines=("C", "R")),  # C is itself combined
        flow_names.FlowDef("CX", combines=("X", "R")),  # X is no flow
    ):
        with pytest.raises(ValueError):
            flow_names.register(bad)
    with pytest.raises(ValueError, match="either its cuts or"):
        flow_names.FlowDef("RM", cuts=flow_names.Cuts(), combines=("M", "R"))
    assert list(flow_names.FLOWS) == ["R", "M", "C", "S"]


def cartpole_batch():
    task = problems.get("cartpole").make_task(2, {"loss": "FINAL"})
    key = jax.random.key(0)
    theta = jax.tree.map(
        lambda w: (w + 0.1 * jax.random.normal(key, w.shape)).astype(jnp.float64), task.init_controller(key)
    )
    x0 = task.sample_data(key, 4)[0].astype(jnp.float64)
    return task, theta, x0


def test_the_new_flow_is_its_rule_on_its_two_parts(new_flow, x64):
    """Static and per-row: T10's gradient where its sign agrees with R's (each part is checked
    against an explicit loop in test_flows.py)."""
    task, theta, x0 = cartpole_batch()
    args = (task.controller, task.step, task.loss, theta, x0, 30)
    g_t10 = flows.flow_gradients("T10", *args).update
    g_r = flows.flow_gradients("R", *args).update
    expected = jax.tree.map(lambda a, b: np.where(np.sign(a) == np.sign(b), a, 0.0), g_t10, g_r)
    static = flows.flow_gradients(NAME, *args)
    gated = flows.flow_gradients(flows.gates(NAME), *args, pair=True)
    for update in (static.update, gated.update):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14), update, expected)
    assert float(gated.cos_mr) == pytest.approx(float(flows.cosine(g_t10, g_r)), rel=1e-12)
    assert 0.0 < float(static.kept) < 1.0 and float(gated.kept) == float(static.kept)
    # A single flow in the same paired program keeps its own gradient.
    single = flows.flow_gradients(flows.gates("T10"), *args, pair=True)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14), single.update, g_t10)
    assert np.isnan(float(single.cos_mr))


def test_the_new_flow_trains_and_is_drawn(new_flow, tmp_path, monkeypatch):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    specs = config.resolve(config.load(str(path)))
    assert sorted(s.flow for s in specs) == [NAME, "R"]
    programs = plan.plan([(s, 0) for s in specs], WIDE, problems.get)
    assert len(programs) == 1 and programs[0].pair and programs[0].passes == 2

    narrow_dir, wide_dir = tmp_path / "narrow", tmp_path / "wide"
    assert len(runner.run(specs, narrow_dir, profile=NARROW).programs) == 2
    gpu_like = replace(WIDE, unroll=devices.profile("gpu").unroll)
    assert len(runner.run(specs, wide_dir, profile=gpu_like).programs) == 1
    tables = []
    for folder in (narrow_dir, wide_dir):
        frame = results.read_results(folder).sort_values(["flow", "seed", "epoch"])
        assert set(frame["flow"]) == {NAME, "R"}
        new = frame[frame["flow"] == NAME]
        assert np.isfinite(new[METRICS].to_numpy()).all()  # its cosine and kept fraction included
        assert frame[frame["flow"] == "R"]["cos_mr"].isna().all()
        tables.append(frame[METRICS].to_numpy())
    # Per-row gates, a paired program and unrolling change only the order of float32 reductions.
    np.testing.assert_allclose(tables[1], tables[0], rtol=2e-5, atol=1e-7, equal_nan=True)

    drawn = {}
    save = curves.save_figure

    def spy(fig, out_dir, stem, *rest):
        drawn[stem] = {line.get_label(): line.get_color() for ax in fig.axes for line in ax.get_lines()}
        return save(fig, out_dir, stem, *rest)

    monkeypatch.setattr(curves, "save_figure", spy)
    written = plotting.plot_all(narrow_dir, tmp_path / "figures")
    experiment = specs[0].experiment
    assert tmp_path / "figures" / f"{experiment}.png" in written
    assert drawn[experiment][f"{NAME} NORM"] == COLOUR
