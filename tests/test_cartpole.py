"""Cart-pole physics (docs/model.md §5) against an independent NumPy transcription, plus invariants."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from bptt_cli.core import flows
from bptt_cli.problems import cartpole


def reference_step(x, force, g=9.8, m=0.1, big_m=1.1, l=0.5, dt=0.01):
    """docs/model.md §5 written out pole by pole in float64."""
    x = np.array(x, dtype=np.float64)
    out = x.copy()
    acc_sum = 0.0
    for k in range(1, x.shape[0]):
        th, thd = x[k]
        s, c = math.sin(th), math.cos(th)
        q = s * thd * thd
        a = (force + m * l * q) / big_m
        thdd = (g * s - c * a) / (l * (4.0 / 3.0 - m * c * c / big_m))
        acc_sum += q - thdd * c
        new_thd = thd + dt * thdd
        out[k] = (th + dt * new_thd, new_thd)
    xdd = (force + m * l * acc_sum) / big_m
    new_xd = x[0, 1] + dt * xdd
    out[0] = (x[0, 0] + dt * new_xd, new_xd)
    return out


@pytest.mark.parametrize("n_poles", [1, 2, 4])
def test_one_step_matches_reference(n_poles, x64):
    x = cartpole.sample_initial_states(jax.random.key(n_poles), 5, n_poles).astype(jnp.float64)
    forces = np.linspace(-3.0, 4.0, 5)
    for xi, f in zip(np.asarray(x), forces, strict=True):
        np.testing.assert_allclose(
            cartpole.step(jnp.asarray(xi), f), reference_step(xi, f), rtol=1e-12, atol=1e-12
        )


def test_hundred_steps_match_reference(x64):
    x = np.asarray(cartpole.sample_initial_states(jax.random.key(7), 1, 3)[0], dtype=np.float64)
    forces = 2.0 * np.sin(np.arange(100) * 0.3)
    ours, ref = jnp.asarray(x), x
    for f in forces:
        ours, ref = cartpole.step(ours, f), reference_step(ref, f)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)


def test_float32_step_close_to_reference():
    x = np.asarray(cartpole.sample_initial_states(jax.random.key(1), 1, 2)[0])
    np.testing.assert_allclose(
        cartpole.step(jnp.asarray(x), 1.5), reference_step(x, 1.5), rtol=1e-5, atol=1e-5
    )


def test_mirror_symmetry():
    """Mirroring every coordinate (x -> -x, theta -> -theta) and the force mirrors the motion."""
    x = cartpole.sample_initial_states(jax.random.key(3), 1, 3)[0]
    x = x.at[1:, 0].add(-math.pi)  # angles around 0 so that -theta is a plain mirror
    np.testing.assert_allclose(cartpole.step(-x, -0.7), -cartpole.step(x, 0.7), rtol=1e-6, atol=1e-7)


def test_upright_at_rest_is_a_fixed_point():
    x = jnp.zeros((1 + 4, 2))
    y = x
    for _ in range(100):
        y = cartpole.step(y, 0.0)
    np.testing.assert_array_equal(y, x)


def test_hanging_pole_swings_with_small_angle_frequency(x64):
    """Near theta = pi the pole is a pendulum: a tiny displacement stays tiny and reverses sign."""
    x = jnp.array([[0.0, 0.0], [math.pi + 1e-3, 0.0]])
    angles = []
    for _ in range(100):
        x = cartpole.step(x, 0.0)
        angles.append(float(x[1, 0]) - math.pi)
    assert max(abs(a) for a in angles) < 2e-3
    assert min(angles) < 0 < max(angles)


def test_step_gradients(x64):
    x = cartpole.sample_initial_states(jax.random.key(4), 1, 2)[0].astype(jnp.float64)
    check_grads(cartpole.step, (x, jnp.float64(0.8)), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_r_flow_loss_gradients(x64):
    theta = cartpole.init_controller(jax.random.key(0), 2)
    # A nonzero last layer so that the network's input path matters.
    theta[-1]["w"] = 0.1 * jax.random.normal(jax.random.key(9), theta[-1]["w"].shape)
    theta = jax.tree.map(lambda a: a.astype(jnp.float64), theta)
    x0 = cartpole.sample_initial_states(jax.random.key(5), 3, 2).astype(jnp.float64)

    def loss(th):
        xs, us = flows.rollout("R", cartpole.controller, cartpole.step, th, x0, 20)
        return cartpole.loss(xs, us)

    check_grads(loss, (theta,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_initial_states():
    x = cartpole.sample_initial_states(jax.random.key(0), 4096, 3)
    assert x.shape == (4096, 4, 2) and x.dtype == jnp.float32
    assert jnp.all(jnp.abs(x[:, 0, :]) <= 1) and jnp.all(jnp.abs(x[:, 1:, 1]) <= 1)
    angles = x[:, 1:, 0]
    assert jnp.all(jnp.abs(angles - math.pi) <= math.pi / 6 + 1e-6)
    assert abs(float(jnp.mean(angles)) - math.pi) < 0.02
    train, test = cartpole.sample_data(jax.random.key(0), 2048, 3)
    np.testing.assert_array_equal(jnp.concatenate([train, test]), x)


def test_untrained_controller_outputs_zero_and_loss_range():
    theta = cartpole.init_controller(jax.random.key(0), 2)
    x0 = cartpole.sample_initial_states(jax.random.key(1), 16, 2)
    assert float(jnp.max(jnp.abs(jax.vmap(cartpole.controller, (None, 0))(theta, x0)))) == 0.0
    xs, us = flows.rollout("R", cartpole.controller, cartpole.step, theta, x0, 100)
    value = float(cartpole.loss(xs, us))
    assert 0.0 <= value <= 2.0 and value > 1.5  # hanging poles: cos(theta) near -1
    expected = 1.0 - np.mean(np.cos(np.asarray(xs)[:, -1, 1:, 0]))
    assert value == pytest.approx(expected, rel=1e-6)
