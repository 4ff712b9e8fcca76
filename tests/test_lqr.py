"""LQR (docs/model.md §12): the step against NumPy, the optimum against an independent optimizer."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from bptt_cli import problems
from bptt_cli.core import flows
from bptt_cli.problems import lqr

LEVELS = (1.0, 1.1, 1.2, 1.3)


def reference_a(a):
    """``a · blockdiag(Rot(0.3), Rot(0.7))`` written out."""
    c1, s1, c2, s2 = math.cos(0.3), math.sin(0.3), math.cos(0.7), math.sin(0.7)
    return a * np.array([[c1, -s1, 0, 0], [s1, c1, 0, 0], [0, 0, c2, -s2], [0, 0, s2, c2]])


B = np.array([0.0, 1.0, 0.0, 1.0])


def simulated_loss(k, a, x0, n_steps=50, rho=0.1):
    """The §12 loss of ``u = K·x`` by plain simulation in float64 (no second-moment trick)."""
    a_matrix, x = reference_a(a), np.array(x0, dtype=np.float64)
    states = controls = 0.0
    for _ in range(n_steps):
        u = x @ np.asarray(k).reshape(4)
        controls += np.mean(u**2)
        x = x @ a_matrix.T + np.outer(u, B)
        states += np.mean(np.sum(x**2, axis=1))
    return states / n_steps + rho * controls / n_steps


@pytest.fixture(scope="module")
def test_states():
    """The default test set: data_seed 42, 256 states (second half of the draw)."""
    return np.asarray(lqr.sample_data(jax.random.key(42), 256)[1], np.float64)


@pytest.mark.parametrize("a", LEVELS)
def test_step_matches_numpy(a):
    rng = np.random.default_rng(int(a * 10))
    xs, us = rng.normal(size=(6, 4)), rng.normal(size=6)
    params = lqr.Params(a=a)
    for x, u in zip(xs, us, strict=True):
        expected = reference_a(a) @ x + B * u
        out = lqr.step(jnp.asarray(x, jnp.float32), jnp.float32(u), params)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
        with jax.enable_x64(True):
            out64 = lqr.step(jnp.asarray(x), jnp.float64(u), params)
            assert out64.dtype == jnp.float64
            np.testing.assert_allclose(out64, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("a", LEVELS)
def test_eigenvalue_moduli_equal_a(a, x64):
    jacobian = jax.jacobian(lqr.step)(jnp.zeros(4), jnp.float64(0.0), lqr.Params(a=a))
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(np.asarray(jacobian))), a, rtol=1e-12)


def test_sample_data():
    train, test = lqr.sample_data(jax.random.key(0), 2048)
    assert train.shape == test.shape == (2048, 4) and train.dtype == jnp.float32
    both = np.concatenate([train, test])
    np.testing.assert_allclose(both.mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_allclose(np.cov(both.T), np.eye(4), atol=0.05)
    np.testing.assert_array_equal(both, jax.random.normal(jax.random.key(0), (4096, 4)))


def task_loss(a, k, x0, controller="linear"):
    """The task's loss of the linear gain ``k`` on ``x0`` through the training rollout."""
    task = lqr.PROBLEM.make_task(a, {"controller": controller})
    xs, us = flows.rollout("R", task.controller, task.step, {"K": k}, x0, task.n_steps)
    assert us.shape == (x0.shape[0], task.n_steps)
    return task.loss(xs, us)[0]


@pytest.mark.parametrize(("a", "spec_value"), [(1.0, 3.5), (1.3, 4e10)])
def test_zero_gain_loss(a, spec_value, test_states):
    """With K = 0, |x_t|² = a^{2t}|x0|²: the loss is mean|x0|² · mean_t a^{2t} (≈ 4·…)."""
    value = float(task_loss(jnp.float32(a), jnp.zeros((1, 4)), jnp.asarray(test_states, jnp.float32)))
    exact = np.mean(np.sum(test_states**2, axis=1)) * np.mean(a ** (2 * np.arange(1, 51)))
    assert value == pytest.approx(exact, rel=1e-5)
    # docs/model.md §12 quotes ≈ 3.5 and ≈ 4e10 (their expectation is 4.0 and 4.9e10).
    assert spec_value / 1.3 < value < spec_value * 1.3


@pytest.mark.parametrize("a", [1.0, 1.3])
def test_optimal_loss_matches_independent_optimizer(a, test_states):
    k_star, l_star = lqr.optimal_gain(lqr.Params(a=a), test_states)
    assert k_star.shape == (1, 4) and isinstance(l_star, float)
    assert lqr.optimal_loss(lqr.Params(a=a), test_states) == l_star
    # scipy's BFGS on the plainly simulated loss, from fixed starts of its own.
    best = min(
        minimize(simulated_loss, np.array(start, float), args=(a, test_states), method="BFGS").fun
        for start in ([0, 0, 0, 0], [0, -1, 0, -1], [0.5, -0.5, 0.5, -0.5])
    )
    assert l_star == pytest.approx(best, rel=1e-6)
    assert l_star <= best * (1 + 1e-12)  # Newton on exact derivatives is at least as good
    assert simulated_loss(k_star, a, test_states) == pytest.approx(l_star, rel=1e-10)


@pytest.mark.parametrize("a", [1.0, 1.3])
def test_gradient_vanishes_at_optimum(a, test_states, x64):
    k_star, l_star = lqr.optimal_gain(lqr.Params(a=a), test_states)
    x0 = jnp.asarray(test_states)
    loss_of = jax.jit(lambda k: task_loss(a, k, x0))
    value, grad = jax.value_and_grad(loss_of)(jnp.asarray(k_star))
    assert float(value) == pytest.approx(l_star, rel=1e-10)
    assert float(jnp.max(jnp.abs(grad))) < 1e-7 * l_star  # float64 rounding over 50 steps: ~1e-9
    # A minimum, not a saddle: every nearby gain is worse, and so is K = 0.
    rng = np.random.default_rng(0)
    for delta in 1e-3 * rng.normal(size=(8, 1, 4)):
        assert float(loss_of(jnp.asarray(k_star + delta))) > l_star
    assert l_star < float(loss_of(jnp.zeros((1, 4))))


def test_optimum_descriptor(test_states):
    options = dict(lqr.PROBLEM.default_options)
    value = lqr.PROBLEM.optimum(1.2, options, test_states.astype(np.float32))
    assert isinstance(value, float)
    assert value == pytest.approx(lqr.optimal_loss(lqr.Params(a=1.2), test_states), rel=1e-9)
    # The MLP controller records the linear optimum as its reference.
    assert lqr.PROBLEM.optimum(1.2, {"controller": "mlp"}, test_states) == pytest.approx(value, rel=1e-12)
    # L* grows with a: a less stable system costs more to steer.
    l_stars = [lqr.optimal_loss(lqr.Params(a=a), test_states) for a in LEVELS]
    assert all(lo < hi for lo, hi in itertools.pairwise(l_stars))


def test_one_program_serves_every_level(test_states):
    traces = []

    @jax.jit
    def zero_gain_loss(a, x0):
        traces.append(a)
        return task_loss(a, jnp.zeros((1, 4)), x0)

    x0 = jnp.asarray(test_states[:32], jnp.float32)
    for a in LEVELS:
        value = zero_gain_loss(jnp.float32(a), x0)
        exact = np.mean(np.sum(test_states[:32] ** 2, axis=1)) * np.mean(a ** (2 * np.arange(1, 51)))
        assert float(value) == pytest.approx(exact, rel=1e-5)
    assert len(traces) == 1


def test_controllers():
    x = jnp.asarray([0.5, -1.0, 2.0, 0.25])
    linear = lqr.PROBLEM.make_task(jnp.float32(1.0), {"controller": "linear"})
    theta = linear.init_controller(jax.random.key(0))
    assert theta["K"].shape == (1, 4) and not np.any(theta["K"])
    k = jnp.asarray([[1.0, 2.0, -3.0, 0.5]])
    assert float(linear.controller({"K": k}, x)) == pytest.approx(0.5 - 2.0 - 6.0 + 0.125)
    mlp = lqr.PROBLEM.make_task(jnp.float32(1.0), {"controller": "mlp"})
    theta = mlp.init_controller(jax.random.key(0))
    assert [layer["w"].shape for layer in theta] == [(4, 100), (100, 100), (100, 1)]
    assert not np.any(theta[-1]["w"]) and np.any(theta[0]["w"])
    assert mlp.controller(theta, x).shape == () and float(mlp.controller(theta, x)) == 0.0
    with pytest.raises(ValueError, match="unknown controller"):
        lqr.PROBLEM.make_task(1.0, {"controller": "quadratic"})


def test_init_scale_draws_each_seeds_gain():
    """init_scale > 0: K ~ N(0, scale²) from the run's seed; 0 (the default): K = 0 (docs/model.md §12)."""
    assert lqr.PROBLEM.default_options["init_scale"] == 0.0
    task = lqr.PROBLEM.make_task(1.0, {"controller": "linear", "init_scale": 0.1})
    gains = np.stack([np.asarray(task.init_controller(jax.random.key(s))["K"]) for s in range(2000)])
    assert gains.shape == (2000, 1, 4) and gains.dtype == np.float32
    np.testing.assert_array_equal(gains[7], task.init_controller(jax.random.key(7))["K"])
    np.testing.assert_array_equal(gains[7], 0.1 * jax.random.normal(jax.random.key(7), (1, 4)))
    assert abs(gains.mean()) < 0.01 and gains.std() == pytest.approx(0.1, rel=0.05)
    assert not np.array_equal(gains[0], gains[1])
    zero = lqr.PROBLEM.make_task(1.0, {"controller": "linear", "init_scale": 0.0})
    assert not np.any(zero.init_controller(jax.random.key(3))["K"])


@pytest.mark.parametrize("controller", ["linear", "mlp"])
def test_contract(controller):
    problems.check(lqr.PROBLEM, 1.2, {**lqr.PROBLEM.default_options, "controller": controller})
    assert problems.get("lqr") is lqr.PROBLEM
    assert lqr.PROBLEM.valid_level(1.0) and lqr.PROBLEM.valid_level(0.5)
    assert not lqr.PROBLEM.valid_level(0.0) and not lqr.PROBLEM.valid_level(-1.0)


def test_loss_formula():
    rng = np.random.default_rng(1)
    xs, us = rng.normal(size=(3, 51, 4)), rng.normal(size=(3, 50))
    expected = np.mean(np.sum(xs[:, 1:] ** 2, axis=(1, 2)) / 50 + 0.1 * np.sum(us**2, axis=1) / 50)
    value = lqr.loss(jnp.asarray(xs, jnp.float32), jnp.asarray(us, jnp.float32))
    assert float(value) == pytest.approx(expected, rel=1e-6)
