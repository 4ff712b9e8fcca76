"""Gradient diagnostics (docs/model.md §14) against independent computations, their invariants, and the
files the runner writes."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from bptt_cli import config, problems, results, runner
from bptt_cli.core import devices, diagnostics

sg = jax.lax.stop_gradient


def diagnose(task, theta, x0):
    """``diagnostics.diagnose``, compiled as the runner compiles it."""
    return jax.jit(lambda th, x: diagnostics.diagnose(task, th, x))(theta, x0)


def short(task, n_steps):
    return dataclasses.replace(task, n_steps=n_steps)


def random_theta(task, key, scale=0.3):
    """The problem's initial controller with a non-zero last layer (so that dN/dx matters)."""
    theta = task.init_controller(key)
    keys = jax.random.split(jax.random.key(7), len(jax.tree.leaves(theta)))
    leaves = [
        w + scale * jax.random.normal(k, w.shape, w.dtype)
        for w, k in zip(jax.tree.leaves(theta), keys, strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(theta), leaves)


def explicit_feedback(task, theta, x0, flow):
    """``|∂L/∂x_t|`` medians from a plain Python loop that adds a perturbation by hand."""
    net, sim = jax.vmap(task.controller, (None, 0)), jax.vmap(task.step)

    def loss_of(deltas):
        x = x0 + deltas[0]
        xs, us = [x], []
        for t in range(task.n_steps):
            u = net(theta, sg(x) if flow == "M" else x)
            x = sim(x, u) + deltas[t + 1]
            xs.append(x)
            us.append(u)
        return task.loss(jnp.stack(xs, 1), jnp.stack(us, 1))[0]

    lam = jax.jit(jax.grad(loss_of))(jnp.zeros((task.n_steps + 1, *x0.shape), x0.dtype))
    return np.median(
        np.linalg.norm(np.asarray(lam).reshape(task.n_steps + 1, x0.shape[0], -1), axis=-1), axis=1
    )


def explicit_jacobians(task, theta, x0):
    """Largest singular values from ``jnp.linalg.svd`` of ``jax.jacobian``, state by state: per
    step (physics, closed loop), and of the plain running products of those Jacobians in log10
    (median over the batch, then log10)."""
    size = x0[0].size

    @jax.jit
    def jacobians(x):  # one state: the physics Jacobian at its control, and the closed loop's
        u = task.controller(theta, x)
        j_p = jax.jacobian(task.step, argnums=0)(x, u).reshape(size, size)
        j_c = jax.jacobian(lambda s: task.step(s, task.controller(theta, s)))(x).reshape(size, size)
        return j_p, j_c, u

    def sigma(m):
        return np.linalg.svd(np.asarray(m), compute_uv=False)[0]

    physics, closed, sens_physics, sens_closed = [], [], [], []
    products = [(np.eye(size), np.eye(size)) for _ in range(x0.shape[0])]
    x = x0
    for _ in range(task.n_steps):
        per_state = [jacobians(x[b]) for b in range(x.shape[0])]
        products = [(j_p @ p, j_c @ c) for (j_p, j_c, _), (p, c) in zip(per_state, products, strict=True)]
        physics.append(np.median([sigma(p) for p, _, _ in per_state]))
        closed.append(np.median([sigma(c) for _, c, _ in per_state]))
        sens_physics.append(np.log10(np.median([sigma(p) for p, _ in products])))
        sens_closed.append(np.log10(np.median([sigma(c) for _, c in products])))
        x = jax.vmap(task.step)(x, jnp.stack([u for _, _, u in per_state]))
    return tuple(np.asarray(v) for v in (physics, closed, sens_physics, sens_closed))


@pytest.mark.parametrize("name", ["cartpole", "guidance"])
def test_feedback_and_jacobians_against_explicit_computations(name, x64):
    problem = problems.get(name)
    level = 2 if name == "cartpole" else 0.1
    task = short(problem.make_task(level, dict(problem.default_options)), 5)
    x0 = task.sample_data(jax.random.key(1), 2)[1].astype(jnp.float64)
    theta = jax.tree.map(lambda w: w.astype(jnp.float64), random_theta(task, jax.random.key(2)))
    got = diagnose(task, theta, x0)
    for flow in ("R", "M"):
        np.testing.assert_allclose(
            got[f"grad_norm_{flow}"], explicit_feedback(task, theta, x0, flow), rtol=1e-10
        )
    physics, closed, sens_physics, sens_closed = explicit_jacobians(task, theta, x0)
    np.testing.assert_allclose(got["jac_physics"], physics, rtol=1e-10)
    np.testing.assert_allclose(got["jac_closed_loop"], closed, rtol=1e-10)
    np.testing.assert_allclose(got["log10_sensitivity_physics"], sens_physics, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["log10_sensitivity_closed_loop"], sens_closed, rtol=1e-9, atol=1e-12)
    # The product's norm never exceeds the product of the norms (up to rounding).
    for kind in ("physics", "closed_loop"):
        bound = diagnostics.log10_growth(np.asarray(got[f"jac_{kind}"]))
        assert np.all(np.asarray(got[f"log10_sensitivity_{kind}"]) <= bound + 1e-9)
    assert not np.allclose(got["grad_norm_R"], got["grad_norm_M"])  # dN/dx matters here
    assert not np.allclose(got["jac_physics"], got["jac_closed_loop"])


def test_regular_feedback_equals_finite_differences(x64):
    """λ_t of flow R is the true total derivative: compare one entry by central differences."""
    problem = problems.get("cartpole")
    task = short(problem.make_task(1, dict(problem.default_options)), 8)
    x0 = task.sample_data(jax.random.key(3), 1)[1].astype(jnp.float64)
    theta = jax.tree.map(lambda w: w.astype(jnp.float64), random_theta(task, jax.random.key(4)))
    lam_norm = diagnose(task, theta, x0)["grad_norm_R"]
    net, sim = jax.vmap(task.controller, (None, 0)), jax.vmap(task.step)

    @functools.partial(jax.jit, static_argnums=0)
    def rest_of_rollout_loss(t, x):
        xs, us = [x], []
        for _ in range(t, task.n_steps):
            u = net(theta, x)
            x = sim(x, u)
            xs.append(x)
            us.append(u)
        return task.loss(jnp.stack(xs, 1), jnp.stack(us, 1))[0]

    def loss_from(t, x):
        return float(rest_of_rollout_loss(t, x))

    x = x0
    for t in range(task.n_steps):  # the FINAL loss depends on earlier states only through x_T
        eps = 1e-6
        grad = np.zeros(x.size)
        for i in range(x.size):
            bump = np.zeros(x.size)
            bump[i] = eps
            bump = jnp.asarray(bump.reshape(x.shape))
            grad[i] = (loss_from(t, x + bump) - loss_from(t, x - bump)) / (2 * eps)
        assert lam_norm[t] == pytest.approx(np.linalg.norm(grad), rel=1e-6)
        x = sim(x, net(theta, x))


@pytest.mark.parametrize("name", ["cartpole", "guidance", "pendulum"])
def test_zero_last_layer_makes_r_equal_m_at_epoch_0(name):
    problem = problems.get(name)
    level = {"cartpole": 3, "guidance": 0.01, "pendulum": 2}[name]
    task = short(problem.make_task(level, dict(problem.default_options)), 12)
    x0 = task.sample_data(jax.random.key(5), 4)[1]
    got = diagnose(task, task.init_controller(jax.random.key(6)), x0)
    np.testing.assert_array_equal(got["grad_norm_R"], got["grad_norm_M"])
    np.testing.assert_array_equal(got["jac_closed_loop"], got["jac_physics"])
    np.testing.assert_array_equal(got["log10_sensitivity_closed_loop"], got["log10_sensitivity_physics"])


@pytest.mark.parametrize("a", [1.0, 1.3])
def test_lqr_sensitivity_is_the_hand_computed_product(a, x64):
    """The LQR's Jacobians are known: ``A`` (the simulator) and ``A + B·K`` (the closed loop),
    the same for every state. ``A`` is ``a`` times a rotation, so ``‖A^(t+1)‖ = a^(t+1)``; the
    closed loop's product is a matrix power. The bound (the running product of per-step norms)
    is far above the truth for this non-normal closed loop."""
    problem = problems.get("lqr")
    task = problem.make_task(a, dict(problem.default_options))
    k = np.array([[0.3, -0.8, 0.1, -0.5]])
    theta = {"K": jnp.asarray(k)}
    x0 = task.sample_data(jax.random.key(1), 3)[1].astype(jnp.float64)
    got = diagnose(task, theta, x0)
    a_matrix = np.asarray(jax.jacobian(task.step)(x0[0], jnp.float64(0.0)))
    b = np.asarray(jax.jacobian(task.step, argnums=1)(x0[0], jnp.float64(0.0)))
    closed = a_matrix + np.outer(b, k)
    t = np.arange(1, task.n_steps + 1)
    np.testing.assert_allclose(got["log10_sensitivity_physics"], t * np.log10(a), atol=1e-9)
    truth = [np.log10(np.linalg.norm(np.linalg.matrix_power(closed, n), 2)) for n in t]
    np.testing.assert_allclose(got["log10_sensitivity_closed_loop"], truth, rtol=1e-9, atol=1e-9)
    bound = diagnostics.log10_growth(np.asarray(got["jac_closed_loop"]))
    assert bound[-1] > truth[-1] + 1.0  # a loose bound: more than a decade above the truth


def test_sensitivity_neither_overflows_nor_underflows():
    """In float32, 400 steps of the LQR's open loop (K = 0: the product is A^t, of norm a^t)
    leave float32's range (10^±38) for a = 1.3 and a = 0.5; the rescaled product does not."""
    problem = problems.get("lqr")
    for a in (1.3, 0.5):
        task = dataclasses.replace(problem.make_task(a, dict(problem.default_options)), n_steps=400)
        x0 = task.sample_data(jax.random.key(1), 2)[1]
        got = diagnose(task, task.init_controller(jax.random.key(0)), x0)
        expected = np.arange(1, 401) * np.log10(a)
        assert abs(expected[-1]) > 38
        for kind in ("physics", "closed_loop"):
            np.testing.assert_allclose(got[f"log10_sensitivity_{kind}"], expected, rtol=1e-4, atol=1e-4)


def test_quantum_physics_is_unitary():
    problem = problems.get("quantum")
    task = short(problem.make_task(jnp.float32(4), dict(problem.default_options)), 5)
    x0 = task.sample_data(jax.random.key(8), 3)[1]
    got = diagnose(task, task.init_controller(jax.random.key(9)), x0)
    np.testing.assert_allclose(got["jac_physics"], 1.0, atol=5e-6)
    np.testing.assert_allclose(got["log10_sensitivity_physics"], 0.0, atol=1e-5)  # unitary products
    assert np.all(got["jac_closed_loop"] > 1.0 + 1e-4)  # the CNN's feedback is not unitary


def test_log10_growth_is_a_running_product():
    jac = np.array([[10.0, 0.1, 100.0, 1.0]])
    np.testing.assert_allclose(diagnostics.log10_growth(jac), [[1.0, 0.0, 2.0, 2.0]])


GRID = """
problem = "cartpole"
[grid]
levels = [2]
flows = ["C", "R"]
clips = ["NONE", "NORM"]
[train]
epochs = 3
seeds = 2
seed = 0
data_seed = 1
n_data = 16
batch_size = 8
optimizer = "adam"
learning_rate = 1e-3
clip_value = 1.0
clip_norm = 1e-6
[diagnostics]
epochs = [0, 2, 3]
"""


def test_runner_writes_diagnostics_and_new_metric_columns(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text(GRID)
    specs = config.resolve(config.load(str(path)))
    runner.run(specs, tmp_path / "out", profile=devices.profile("cpu"))
    folder = tmp_path / "out" / "d"
    metrics = results.read_results(tmp_path / "out")
    diag = results.read_results(tmp_path / "out", kind="diagnostics")
    n_steps = 100
    assert len(diag) == 4 * 2 * 3 * (n_steps + 1)  # runs × seeds × diagnosed epochs × t
    assert list(diag.columns[-9:]) == ["t", *diagnostics.COLUMNS]
    assert sorted(diag["epoch"].unique()) == [0, 2, 3]
    last = diag[diag["t"] == n_steps]
    assert last[["jac_physics", "log10_growth_closed_loop", "log10_sensitivity_physics"]].isna().all().all()
    assert last["grad_norm_R"].notna().all()
    first = diag[diag["epoch"] == 0]
    assert (first["grad_norm_R"] == first["grad_norm_M"]).all()
    np.testing.assert_array_equal(first["jac_physics"], first["jac_closed_loop"])  # NaN at t = Nt on both
    by_flow = metrics.groupby("flow")
    assert by_flow["c_kept_fraction"].apply(lambda c: c.between(0, 1).all() and c.notna().all())["C"]
    assert by_flow["c_kept_fraction"].apply(lambda c: c.isna().all())["R"]
    clipped = metrics.groupby("clip")["clip_active_fraction"]
    assert (clipped.min()["NORM"], clipped.max()["NONE"]) == (1.0, 0.0)  # clip_norm 1e-6 always acts
    files = results.RunFiles.of(folder, specs[0].run_id)
    xs, us, seeds, meta = results.read_trajectories(files.trajectories)
    assert xs.shape == (2, 8, n_steps + 1, 3, 2) and us.shape == (2, 8, n_steps)
    assert list(seeds) == [0, 1] and meta["drawing"] == "bptt_cli.plotting.drawings:cartpole"
    assert meta["run_id"] == specs[0].run_id and meta["flow"] == specs[0].flow
    # The trajectories are the trained controller's: they end where the last test loss says.
    final = pd.read_csv(files.csv).query("epoch == 3")
    assert np.isfinite(xs).all() and len(final) == 2
