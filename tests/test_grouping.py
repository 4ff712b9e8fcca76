"""A run's results do not depend on how it was grouped into programs: alone, with other flows,
clips or levels, with flows as per-row gates and levels padded (the GPU layout), or split into
shares for several workers."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bptt_cli import config, problems, results, runner
from bptt_cli.core import devices, flows, plan

GRID = """
problem = "cartpole"
[grid]
levels = [1, 2]
flows = ["C", "T3"]
clips = ["NORM", "NONE"]
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
METRICS = ["batch_loss", "train_loss", "test_loss", "update_sq_norm", "cos_mr", "c_kept_fraction"]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    path = tmp_path_factory.mktemp("def") / "g.toml"
    path.write_text(GRID)
    return config.resolve(config.load(str(path)))


def table(folder) -> pd.DataFrame:
    frame = results.read_results(folder)
    return frame.sort_values(["run_id", "seed", "epoch"]).set_index(["run_id", "seed", "epoch"])[METRICS]


@pytest.fixture(scope="module")
def narrow(specs, tmp_path_factory):
    out = tmp_path_factory.mktemp("narrow")
    report = runner.run(specs, out, profile=NARROW)
    assert len(report.trained) == len(specs) == 8
    assert len(report.programs) == 4  # 2 levels × 2 flows
    return table(out)


def test_wide_layout_is_one_program_and_equals_narrow(specs, narrow, tmp_path):
    """The GPU layout as a GPU compiles it: flows as per-row gates, levels padded, and the GPU
    profile's horizon unroll (cart-pole's 100 steps are not a multiple of it: the remainder
    steps run outside the loop)."""
    gpu_unroll = devices.profile("gpu").unroll
    assert gpu_unroll > 1 and 100 % gpu_unroll
    report = runner.run(specs, tmp_path, profile=replace(WIDE, unroll=gpu_unroll))
    assert len(report.programs) == 1  # flows as gates, 1 and 2 poles padded to 2
    assert "padded to 2" in report.programs[0] and "16 rows" in report.programs[0]
    wide = table(tmp_path)
    assert wide.index.equals(narrow.index)
    # Padding, per-row gates and unrolling change only the order of float32 reductions.
    np.testing.assert_allclose(wide.to_numpy(), narrow.to_numpy(), rtol=2e-5, atol=1e-7, equal_nan=True)


def test_a_run_alone_equals_the_run_in_its_group(specs, narrow, tmp_path):
    alone = [s for s in specs if (s.level, s.flow, s.clip) in {(2, "C", "NONE"), (1, "T3", "NORM")}]
    for spec in alone:
        runner.run([spec], tmp_path, profile=NARROW)
    single = table(tmp_path)
    np.testing.assert_allclose(
        single.to_numpy(), narrow.loc[single.index].to_numpy(), rtol=2e-6, atol=1e-8, equal_nan=True
    )


def test_shares_cover_the_grid_once_and_equal_the_whole(specs, narrow, tmp_path):
    shares = [plan.shard(specs, k, 3) for k in (1, 2, 3)]
    assert sorted(s.run_id for share in shares for s in share) == sorted(s.run_id for s in specs)
    assert [len(share) for share in shares] == [2, 3, 3]
    for share in shares:
        runner.run(share, tmp_path, profile=NARROW)
    split = table(tmp_path)
    assert split.index.equals(narrow.index)
    np.testing.assert_allclose(split.to_numpy(), narrow.to_numpy(), rtol=2e-6, atol=1e-8, equal_nan=True)


def test_plan_groups_by_device_layout(specs):
    work = [(s, 0) for s in specs]
    # The CPU layout: a program per (level, flow), its clips and seeds as rows; every run once.
    narrow = plan.plan(work, NARROW, problems.get)
    assert sorted(s.run_id for p in narrow for s in p.runs) == sorted(s.run_id for s in specs)
    assert [{(s.level, s.flow) for s in p.runs} for p in narrow] == [{(p.level, p.flow)} for p in narrow]
    assert len({(p.level, p.flow) for p in narrow}) == len(narrow)
    # The GPU layout: flows as per-row gates and levels padded, all in one program.
    (program,) = plan.plan(work, WIDE, problems.get)
    assert program.levels_padded and program.level == 2 and program.flow is None and program.pair
    assert program.flows == ["C", "T3"] and program.rows == 16
    # A resumed run restarts at another epoch: it cannot share the program of fresh runs.
    resumed = [(s, 2 if s.flow == "T3" else 0) for s in specs]
    assert len(plan.plan(resumed, WIDE, problems.get)) == 2
    # Without C rows a wide program computes one gradient per row.
    no_c = [(s, 0) for s in specs if s.flow != "C"]
    assert no_c
    assert not plan.plan(no_c, WIDE, problems.get)[0].pair


def test_auto_lays_a_cpu_grid_out_wide_only_where_compiling_is_its_time(monkeypatch):
    monkeypatch.delenv("BPTT_TINY_STEPS")  # the suite's own setting (conftest.py)

    def layout(platform, steps):
        p = devices.profile(platform, "auto", steps)
        return (p.merge_flows, p.pad_levels)

    assert layout("cpu", None) == (False, False)  # paper scale: a program per flow and shape
    assert layout("cpu", devices.TINY_STEPS + 1) == (False, False)
    assert layout("cpu", devices.TINY_STEPS) == (True, True)  # a smoke test: one program
    assert layout("gpu", 10**6) == (True, True)
    assert (
        devices.profile("cpu", "narrow", 4).merge_flows,
        devices.profile("cpu", "wide", 10**6).merge_flows,
    ) == (
        False,
        True,
    )  # an explicit grouping wins


def test_shard_parsing_and_slurm_defaults():
    assert plan.parse_shard("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "a/b", "2", "1/0", "-1/3"):
        with pytest.raises(ValueError, match="allowed: K/N"):
            plan.parse_shard(bad)
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3"}
    assert plan.shard_from_environment(env) == (3, 4)
    assert plan.shard_from_environment({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}) == (1, 2)
    assert plan.shard_from_environment({}) is None


def test_padded_cartpole_equals_unpadded_step_by_step():
    cartpole = problems.get("cartpole")
    options = dict(cartpole.default_options)
    n_poles = 2  # two real poles and two padded ones (1 → 2 is in the wide-layout test)
    plain = cartpole.make_task(n_poles, options)
    padded = cartpole.make_padded_task(jnp.float32(n_poles), 4, options)
    key = jax.random.key(n_poles)
    x_plain = plain.sample_data(key, 4)[1]
    x_pad = cartpole.make_padded_task(n_poles, 4, options).sample_data(key, 4)[1]
    np.testing.assert_array_equal(x_pad[:, : 1 + n_poles], x_plain)
    np.testing.assert_array_equal(x_pad[:, 1 + n_poles :], 0.0)
    init, init_pad = plain.init_controller(key), padded.init_controller(key)
    real = 2 * (1 + n_poles)  # first-layer inputs of the real state entries
    np.testing.assert_array_equal(init_pad[0]["w"][:real], init[0]["w"])
    np.testing.assert_array_equal(init_pad[0]["w"][real:], 0.0)
    for a, b in zip(jax.tree.leaves(init_pad[1:]), jax.tree.leaves(init[1:]), strict=True):
        np.testing.assert_array_equal(a, b)
    noise = jax.random.split(jax.random.key(99), len(jax.tree.leaves(init)))
    leaves = [
        w + 0.05 * jax.random.normal(k, w.shape) for w, k in zip(jax.tree.leaves(init), noise, strict=True)
    ]
    theta = jax.tree.unflatten(jax.tree.structure(init), leaves)  # a controller with a non-zero output
    theta_pad = [
        {"w": jnp.pad(theta[0]["w"], ((0, 2 * (4 - n_poles)), (0, 0))), "b": theta[0]["b"]},
        *theta[1:],
    ]
    # Compiled (as training runs them), not op by op: a couple of compiles instead of 200.
    rollout = jax.jit(flows.rollout, static_argnums=(0, 1, 2, 5))
    xs, us = rollout("R", plain.controller, plain.step, theta, x_plain, plain.n_steps)
    xs_pad, us_pad = rollout("R", padded.controller, padded.step, theta_pad, x_pad, padded.n_steps)
    np.testing.assert_allclose(xs_pad[:, :, : 1 + n_poles], xs, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(xs_pad[:, :, 1 + n_poles :], 0.0)
    np.testing.assert_allclose(padded.loss(xs_pad, us_pad)[0], plain.loss(xs, us)[0], rtol=1e-5)
    # The gradients of padded weights are exactly zero, so every optimizer leaves them at 0.
    gradients = jax.jit(flows.flow_gradients, static_argnums=(0, 1, 2, 3, 6))
    update = gradients(
        "C", padded.controller, padded.step, padded.loss, theta_pad, x_pad, 20, n_params=padded.n_params
    )
    assert not np.any(np.asarray(update.update[0]["w"][2 * (1 + n_poles) :]))
    reference = gradients("C", plain.controller, plain.step, plain.loss, theta, x_plain, 20)
    np.testing.assert_allclose(update.kept, reference.kept, rtol=1e-6)


def test_gates_equal_static_flows(x64):
    cartpole = problems.get("cartpole")
    task = cartpole.make_task(2, dict(cartpole.default_options))
    key = jax.random.key(0)
    theta = jax.tree.map(
        lambda w: (w + 0.1 * jax.random.normal(key, w.shape)).astype(jnp.float64), task.init_controller(key)
    )
    x0 = task.sample_data(key, 4)[0].astype(jnp.float64)
    args = (task.controller, task.step, task.loss, theta, x0, 30)
    # Compiled, as programs run them: a static flow is a static argument, gates are data.
    static_of = jax.jit(flows.flow_gradients, static_argnums=(0, 1, 2, 3, 6))
    gated_of = jax.jit(flows.flow_gradients, static_argnums=(1, 2, 3, 6), static_argnames="pair")
    # Each gate path once alone and once in a pair with M (as in a wide program with C rows).
    for flow, pair in (("R", False), ("M", True), ("S", False), ("T4", True)):
        static = static_of(flow, *args)
        gated = gated_of(flows.gates(flow), *args, pair=pair)
        assert float(gated.value[0]) == float(static.value[0])
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14), gated.update, static.update
        )
    static = static_of("C", *args)
    gated = gated_of(flows.gates("C"), *args, pair=True)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14), gated.update, static.update
    )
    assert float(gated.cos_mr) == pytest.approx(float(static.cos_mr), rel=1e-12)
    assert float(gated.kept) == float(static.kept)


def test_a_cut_path_that_overflows_does_not_poison_the_gradient():
    """d sqrt|x|/dx is infinite at 0: a multiplicative 0/1 mask would give 0·inf = NaN."""

    def controller(theta, x):
        return theta["a"] * jnp.sqrt(jnp.abs(x[0])) + theta["b"] * x[1]

    def step(x, u):
        return jnp.stack([x[0] + 0.1 * u, x[1]])

    def loss(xs, us):
        return jnp.mean(xs[:, -1, 0] ** 2), {}

    theta = {"a": jnp.float32(0.5), "b": jnp.float32(0.3)}
    x0 = jnp.asarray([[0.0, 1.0], [0.0, -1.0]])
    for flow in ("M", "S"):
        static = flows.flow_gradients(flow, controller, step, loss, theta, x0, 3)
        gated = flows.flow_gradients(flows.gates(flow), controller, step, loss, theta, x0, 3)
        assert all(np.isfinite(np.asarray(g)) for g in jax.tree.leaves(gated.update))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), gated.update, static.update)


def test_resumed_runs_keep_their_place_when_regrouped(specs, narrow, tmp_path, monkeypatch):
    """Train the one-pole T3 runs two epochs, then the whole grid wide: they resume in a program
    of their own and everything equals the narrow reference."""
    m_runs = [s for s in specs if s.flow == "T3" and s.level == 1]
    monkeypatch.setenv("BPTT_CHUNK_EPOCHS", "1")
    real_commit = results.ProgramWriter.commit

    def stop_after_two(self, chunk, *rest):
        real_commit(self, chunk, *rest)
        if chunk.start + chunk.n >= 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(results.ProgramWriter, "commit", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        runner.run(m_runs, tmp_path, profile=NARROW)
    monkeypatch.setattr(results.ProgramWriter, "commit", real_commit)
    report = runner.run(specs, tmp_path, profile=WIDE)
    assert len(report.programs) == 2 and len(report.resumed) == 2
    resumed = table(tmp_path)
    np.testing.assert_allclose(resumed.to_numpy(), narrow.to_numpy(), rtol=2e-5, atol=1e-7, equal_nan=True)
