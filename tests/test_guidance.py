"""Guidance by repulsion (docs/model.md §6): physics against a NumPy transcription, gradients, sampler, loss."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from bptt_cli.core.task import Task
from bptt_cli.problems import guidance
from bptt_cli.problems.guidance import (
    PROBLEM,
    Params,
    controller,
    init_controller,
    loss,
    sample_data,
    sample_initial_states,
    step,
)

N_DRIVERS, N_EVADERS, N_STEPS = 2, 4, 60
REG_COEFS = (1.0, 0.1, 0.01, 0.001)
step_jit = jax.jit(step)  # compiled once per dtype; op-by-op dispatch is slow on this suite's CPU budget

# --- an independent transcription of docs/model.md §6 in plain float64 NumPy ------------------------


def ref_step(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """docs/model.md §6 written out agent by agent; constants typed in from docs/model.md, not from Params."""
    x = np.asarray(x, np.float64)
    u = np.asarray(u, np.float64)
    dt = 4.0 / 60.0
    pos, vel = x[:, 0], x[:, 1]
    n_agents = pos.shape[0]

    def dist(r):
        return 0.1 + math.sqrt(r[0] ** 2 + r[1] ** 2)

    acc = np.zeros_like(pos)
    big_x = np.zeros(2)
    for e in range(N_DRIVERS, n_agents):
        big_x += pos[e]
    for d in range(N_DRIVERS):
        w = pos[d] - big_x
        w_perp = np.array([-w[1], w[0]])
        a = u[d, 0] * w + u[d, 1] * w_perp - 1.0 * vel[d]
        for d2 in range(N_DRIVERS):
            if d2 != d:
                r = pos[d] - pos[d2]
                a = a + 0.2 * r / dist(r) ** 2
        acc[d] = a
    for e in range(N_DRIVERS, n_agents):
        a = -4.0 * vel[e]
        for d in range(N_DRIVERS):
            r = pos[e] - pos[d]
            a = a + 15.0 * r / dist(r) ** 2
        for e2 in range(N_DRIVERS, n_agents):
            if e2 != e:
                r = pos[e] - pos[e2]
                dee = dist(r)
                f = -(0.5 / dee - 1.0) / dee
                a = a + 0.2 * f * r
        acc[e] = a
    new = np.empty_like(x)
    new[:, 0] = pos + dt * vel
    new[:, 1] = vel + dt * acc
    return new


def ref_rollout(x0: np.ndarray, us: np.ndarray) -> np.ndarray:
    xs = [np.asarray(x0, np.float64)]
    for u in us:
        xs.append(ref_step(xs[-1], u))
    return np.stack(xs)


def moving_state(seed: int) -> np.ndarray:
    """A sampled start with random nonzero velocities, so every term of the step is exercised."""
    x = np.array(sample_initial_states(jax.random.key(seed), 1)[0], np.float64)
    rng = np.random.default_rng(seed)
    x[:, 1] = rng.normal(scale=0.7, size=(N_DRIVERS + N_EVADERS, 2))
    return x


def control_sequence(n_steps: int) -> np.ndarray:
    """A fixed, nonzero ``(n_steps, D, 2)`` control: attracting radial gain plus some swirl."""
    t = np.arange(n_steps)[:, None]
    d = np.arange(N_DRIVERS)[None, :]
    radial = -0.4 + 0.3 * np.sin(0.11 * t + d)
    tangential = 0.25 * np.cos(0.07 * t - 2.0 * d)
    return np.stack([radial, tangential], axis=-1)


def jax_rollout(x0: jax.Array, us: jax.Array) -> jax.Array:
    """``(n_steps + 1, ...)`` trajectory under a given control sequence (x0 included)."""

    def body(x, u):
        x_next = step(x, u)
        return x_next, x_next

    _, xs = jax.lax.scan(body, x0, us)
    return jnp.concatenate([x0[None], xs], axis=0)


def controlled_rollout(theta, x0s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Batched closed-loop rollout: ``xs (B, Nt+1, 6, 2, 2)``, ``us (B, Nt, 2, 2)``."""

    def one(x0):
        def body(x, _):
            u = controller(theta, x)
            x_next = step(x, u)
            return x_next, (x_next, u)

        _, (xs, us) = jax.lax.scan(body, x0, None, length=N_STEPS)
        return jnp.concatenate([x0[None], xs], axis=0), us

    return jax.vmap(one)(x0s)


def random_controller(key: jax.Array):
    """The initial network with a random (nonzero) last kernel."""
    theta = init_controller(key)
    k_w, k_b = jax.random.split(jax.random.fold_in(key, 1))
    theta[-1]["w"] = 0.1 * jax.random.normal(k_w, theta[-1]["w"].shape)
    theta[-1]["b"] = 0.1 * jax.random.normal(k_b, theta[-1]["b"].shape)
    return theta


# --- params -----------------------------------------------------------------------------


def test_params_match_spec():
    p = Params()
    assert p.dt == pytest.approx(4.0 / 60) and p.n_steps == 60
    assert p.dt * p.n_steps == pytest.approx(4.0)
    assert (p.n_drivers, p.n_evaders) == (2, 4)
    assert (p.softening, p.driver_damping, p.driver_repulsion) == (0.1, 1.0, 0.2)
    assert (p.evader_repulsion, p.evader_damping, p.evader_cohesion, p.flock_distance) == (
        15.0,
        4.0,
        0.2,
        0.5,
    )


# --- physics ----------------------------------------------------------------------------


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_step_matches_numpy_reference(seed):
    x = moving_state(seed)
    u = np.random.default_rng(100 + seed).normal(size=(N_DRIVERS, 2))
    got = step_jit(jnp.asarray(x), jnp.asarray(u))
    assert got.dtype == jnp.float64 and got.shape == x.shape
    np.testing.assert_allclose(np.asarray(got), ref_step(x, u), rtol=1e-12, atol=1e-12)


def test_one_step_float32_matches_numpy_reference():
    x = moving_state(3)
    u = np.random.default_rng(7).normal(size=(N_DRIVERS, 2))
    got = step_jit(jnp.asarray(x, jnp.float32), jnp.asarray(u, jnp.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), ref_step(x, u), rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("x64")
def test_full_horizon_matches_numpy_reference():
    x0 = moving_state(4)
    us = control_sequence(N_STEPS)
    got = np.asarray(jax.jit(jax_rollout)(jnp.asarray(x0), jnp.asarray(us)))
    want = ref_rollout(x0, us)
    assert got.shape == (N_STEPS + 1, N_DRIVERS + N_EVADERS, 2, 2)
    # the trajectory must actually move for the comparison to mean something
    assert np.abs(want[-1] - want[0]).max() > 0.5
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.usefixtures("x64")
def test_step_gradients():
    x = jnp.asarray(moving_state(5))
    u = jnp.asarray(np.random.default_rng(5).normal(size=(N_DRIVERS, 2)))
    check_grads(step_jit, (x, u), order=1, modes=("fwd", "rev"))
    check_grads(step_jit, (x, u), order=2, modes=("rev",))


@pytest.mark.usefixtures("x64")
def test_short_rollout_gradients():
    x0 = jnp.asarray(moving_state(6))
    us = jnp.asarray(control_sequence(5))
    objective = jax.jit(lambda x0, us: jnp.mean(jax_rollout(x0, us)[1:, 2:, 0] ** 2))
    check_grads(objective, (x0, us), order=1, modes=("fwd", "rev"))


@pytest.mark.usefixtures("x64")
def test_evader_permutation_equivariance():
    x = jnp.asarray(moving_state(8))
    u = jnp.asarray(np.random.default_rng(8).normal(size=(N_DRIVERS, 2)))
    for evader_perm in ([3, 1, 0, 2], [1, 2, 3, 0], [0, 1, 3, 2]):
        perm = np.array([0, 1] + [N_DRIVERS + i for i in evader_perm])
        assert not np.array_equal(perm, np.arange(6))
        np.testing.assert_allclose(step_jit(x[perm], u), step_jit(x, u)[perm], rtol=1e-13, atol=1e-13)


@pytest.mark.usefixtures("x64")
def test_driver_swap_equivariance():
    """Swapping the two drivers together with their controls swaps them in the result."""
    x = jnp.asarray(moving_state(9))
    u = jnp.asarray(np.random.default_rng(9).normal(size=(N_DRIVERS, 2)))
    perm = np.array([1, 0, 2, 3, 4, 5])
    np.testing.assert_allclose(step_jit(x[perm], u[::-1]), step_jit(x, u)[perm], rtol=1e-13, atol=1e-13)


def _coincident_states() -> dict[str, np.ndarray]:
    base = moving_state(10)
    evaders = base.copy()
    evaders[3] = evaders[2]  # same position and velocity: they stay together for the whole run
    driver_on_evader = base.copy()
    driver_on_evader[0, 0] = driver_on_evader[4, 0]
    all_in_one = base.copy()
    all_in_one[:, 0] = base[2, 0][None]
    return {"two_evaders": evaders, "driver_on_evader": driver_on_evader, "all_in_one": all_in_one}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", ["two_evaders", "driver_on_evader", "all_in_one"])
def test_coinciding_agents_have_finite_values_and_gradients(case):
    x = _coincident_states()[case]
    u = np.random.default_rng(11).normal(size=(N_DRIVERS, 2))
    got = step_jit(jnp.asarray(x), jnp.asarray(u))
    # values are the formula of docs/model.md §6 exactly (|0| = 0), not a smoothed version of it
    np.testing.assert_allclose(np.asarray(got), ref_step(x, u), rtol=1e-12, atol=1e-12)
    weights = jnp.asarray(np.random.default_rng(12).normal(size=x.shape))
    gx, gu = jax.jit(jax.grad(lambda x, u: jnp.sum(weights * step(x, u)), argnums=(0, 1)))(
        jnp.asarray(x), jnp.asarray(u)
    )
    assert np.isfinite(np.asarray(gx)).all() and np.isfinite(np.asarray(gu)).all()
    jx, ju = jax.jit(jax.jacfwd(step, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(u))
    assert np.isfinite(np.asarray(jx)).all() and np.isfinite(np.asarray(ju)).all()


def test_coinciding_evaders_stay_finite_over_the_horizon_float32():
    x0 = jnp.asarray(_coincident_states()["two_evaders"], jnp.float32)
    us = jnp.asarray(control_sequence(N_STEPS), jnp.float32)

    def objective(x0, us):
        return jnp.mean(jax_rollout(x0, us)[1:, 2:, 0] ** 2)

    value, (gx, gu) = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))(x0, us)
    xs = jax_rollout(x0, us)
    np.testing.assert_array_equal(xs[:, 2], xs[:, 3])  # they really stayed on top of each other
    assert np.isfinite(float(value))
    assert np.isfinite(np.asarray(gx)).all() and np.isfinite(np.asarray(gu)).all()


# --- data -------------------------------------------------------------------------------


def test_sampler_shapes_and_geometry():
    n = 2048
    x = np.asarray(sample_initial_states(jax.random.key(0), n))
    assert x.shape == (n, 6, 2, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, :, 1], 0.0)

    driver_r = np.linalg.norm(x[:, :2, 0].astype(np.float64), axis=-1)
    assert driver_r.min() >= 3.0 - 1e-5 and driver_r.max() <= 4.0 + 1e-5
    # radius U(3, 4) (not area-uniform, which would put 46 % below 3.5)
    assert abs(np.mean(driver_r < 3.5) - 0.5) < 0.03
    angles = np.arctan2(x[:, :2, 0, 1], x[:, :2, 0, 0])
    assert abs(np.mean(np.cos(angles))) < 0.05 and abs(np.mean(np.sin(angles))) < 0.05
    assert not np.allclose(x[:, 0, 0], x[:, 1, 0])  # drivers are drawn independently

    # some centre c with |c| in [1, 2] has every evader within ±0.5 of it, per coordinate
    evaders = x[:, 2:, 0].astype(np.float64)
    lo = evaders.max(axis=1) - 0.5 - 1e-6
    hi = evaders.min(axis=1) + 0.5 + 1e-6
    assert (lo <= hi).all()
    closest = np.linalg.norm(np.clip(0.0, lo, hi), axis=-1)
    farthest = np.linalg.norm(np.maximum(np.abs(lo), np.abs(hi)), axis=-1)
    assert (closest <= 2.0).all() and (farthest >= 1.0).all()
    # offsets fill the square: the evaders of one group spread up to almost 1 per coordinate
    spread = evaders.max(axis=1) - evaders.min(axis=1)
    assert spread.max() > 0.9 and spread.max() <= 1.0 + 1e-6
    group_r = np.linalg.norm(evaders.mean(axis=1), axis=-1)
    assert group_r.min() > 0.5 and group_r.max() < 2.5 and abs(group_r.mean() - 1.5) < 0.05


def test_sampler_determinism_and_split():
    key = jax.random.key(42)
    a = sample_initial_states(key, 16)
    np.testing.assert_array_equal(a, sample_initial_states(key, 16))
    assert not np.array_equal(a, sample_initial_states(jax.random.key(43), 16))
    train, test = sample_data(key, 8)
    assert train.shape == test.shape == (8, 6, 2, 2)
    assert train.dtype == test.dtype == jnp.float32
    np.testing.assert_array_equal(train, a[:8])
    np.testing.assert_array_equal(test, a[8:])


# --- controller -------------------------------------------------------------------------


def test_controller_layout_and_zero_start():
    theta = init_controller(jax.random.key(0))
    assert [layer["w"].shape for layer in theta] == [(24, 100), (100, 100), (100, 4)]
    np.testing.assert_array_equal(theta[-1]["w"], 0.0)
    assert [layer["w"].shape for layer in init_controller(jax.random.key(0), width=7)] == [
        (24, 7),
        (7, 7),
        (7, 4),
    ]
    x = sample_initial_states(jax.random.key(1), 3)
    for xi in x:
        u = controller(theta, xi)
        assert u.shape == (2, 2) and u.dtype == jnp.float32
        np.testing.assert_array_equal(u, 0.0)


def test_controller_output_layout():
    """Output entry ``2·d + k`` of the last layer is gain k of driver d."""
    theta = init_controller(jax.random.key(0))
    theta[-1]["b"] = jnp.arange(4.0)
    np.testing.assert_array_equal(controller(theta, jnp.zeros((6, 2, 2))), [[0.0, 1.0], [2.0, 3.0]])


# --- loss -------------------------------------------------------------------------------


def test_loss_against_numpy():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(3, N_STEPS + 1, 6, 2, 2))
    xs[:, 0] = 1e3  # x0 is not part of the loss
    xs[:, :, :2] = 1e3  # neither are the drivers
    xs[:, :, :, 1] = 1e3  # nor the velocities
    us = rng.normal(size=(3, N_STEPS, 2, 2))
    physics_want = np.mean(xs[:, 1:, 2:, 0, :] ** 2)
    reg_want = np.mean(us**2)
    for rc in (*REG_COEFS, 0.0):
        total, physics = loss(jnp.asarray(xs, jnp.float32), jnp.asarray(us, jnp.float32), rc)
        np.testing.assert_allclose(physics, physics_want, rtol=1e-5)
        np.testing.assert_allclose(total, physics_want + rc * reg_want, rtol=1e-5)


def test_problem_descriptor_and_task():
    assert PROBLEM.name == "guidance" and PROBLEM.level_key == "reg_coef"
    assert PROBLEM.level_type is float and PROBLEM.level_is_static is False
    assert PROBLEM.aux_metrics == ("physics_loss",) and dict(PROBLEM.default_options) == {}
    task = PROBLEM.make_task(0.1, {})
    assert isinstance(task, Task) and task.n_steps == 60 and task.control_shape == (2, 2)
    x = sample_initial_states(jax.random.key(0), 1)[0]
    u = jnp.ones((2, 2))
    np.testing.assert_array_equal(task.step(x, u), step(x, u))
    train, test = task.sample_data(jax.random.key(3), 4)
    np.testing.assert_array_equal(train, sample_data(jax.random.key(3), 4)[0])
    np.testing.assert_array_equal(test, sample_data(jax.random.key(3), 4)[1])
    theta = task.init_controller(jax.random.key(0))
    np.testing.assert_array_equal(task.controller(theta, x), 0.0)
    assert guidance.Params().n_steps == task.n_steps


def test_rollouts_are_finite_for_every_reg_coef():
    task = PROBLEM.make_task(1.0, {})
    x0s = task.sample_data(jax.random.key(0), 8)[0]
    traces = []

    def objective(theta, level):
        traces.append(None)
        xs, us = controlled_rollout(theta, x0s)
        total, aux = PROBLEM.make_task(level, {}).loss(xs, us)  # the level traced, as in training
        return total, (aux, xs, us)

    value_and_grad = jax.jit(jax.value_and_grad(objective, has_aux=True))
    for name, theta in [
        ("untrained", task.init_controller(jax.random.key(1))),
        ("random", random_controller(jax.random.key(2))),
    ]:
        for rc in REG_COEFS:
            (total, (aux, xs, us)), grads = value_and_grad(theta, jnp.float32(rc))
            assert xs.shape == (8, N_STEPS + 1, 6, 2, 2) and us.shape == (8, N_STEPS, 2, 2)
            assert np.isfinite(np.asarray(xs)).all(), name
            assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads)), name
            physics = aux["physics_loss"]
            np.testing.assert_allclose(physics, loss(xs, us, 0.0)[0], rtol=1e-6)
            np.testing.assert_allclose(total, loss(xs, us, rc)[0], rtol=1e-6)
            if name == "untrained":
                np.testing.assert_array_equal(us, 0.0)
                np.testing.assert_allclose(total, physics, rtol=1e-7)
            else:
                assert float(jnp.mean(us**2)) > 1e-3
                assert float(total) > float(physics)
    # one compiled program serves every reg_coef (and both parameter sets)
    assert len(traces) == 1
