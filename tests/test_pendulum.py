"""Multi-link pendulum on a cart (docs/model.md §13): the step against an autodiff Lagrangian, energy,
gradients, and the padded task against the unpadded one."""

import dataclasses
import functools
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from bptt_cli import problems
from bptt_cli.core import flows
from bptt_cli.problems import pendulum

M_CART, LENGTH, M_TIP, G = 1.0, 0.5, 0.1, 9.8


def tips(q):
    """Tip positions ``(n, 2)`` of the chain for coordinates ``q = (x, phi_1 … phi_n)``."""
    return jnp.stack(
        [q[0] + LENGTH * jnp.cumsum(jnp.sin(q[1:])), LENGTH * jnp.cumsum(jnp.cos(q[1:]))], axis=-1
    )


def kinetic(q, q_dot):
    tip_velocities = jax.jvp(tips, (q,), (q_dot,))[1]
    return 0.5 * M_CART * q_dot[0] ** 2 + 0.5 * M_TIP * jnp.sum(tip_velocities**2)


def potential(q):
    return M_TIP * G * jnp.sum(tips(q)[:, 1])


def lagrangian(q, q_dot):
    return kinetic(q, q_dot) - potential(q)


def reference_acceleration(x, force):
    """Euler-Lagrange from the autodiff Lagrangian: ``∂²L/∂q̇² q̈ = ∂L/∂q − ∂²L/∂q̇∂q q̇ + (F, 0 …)``.
    Returns ``q̈`` and the mass matrix ``∂²L/∂q̇²``."""
    q, q_dot = x[:, 0], x[:, 1]
    mass = jax.hessian(lagrangian, argnums=1)(q, q_dot)
    mixed = jax.jacfwd(jax.grad(lagrangian, argnums=1), argnums=0)(q, q_dot)
    generalized = jnp.zeros_like(q).at[0].set(force)
    return jnp.linalg.solve(mass, jax.grad(lagrangian)(q, q_dot) - mixed @ q_dot + generalized), mass


def reference_step(x, force, dt=0.01):
    """The semi-implicit Euler step of §5 on the reference acceleration."""
    q_dot = x[:, 1] + dt * reference_acceleration(x, force)[0]
    return jnp.stack([x[:, 0] + dt * q_dot, q_dot], axis=-1)


# Compiled once per shape and dtype: op-by-op execution would compile every operation.
step = jax.jit(pendulum.step)
step_batch = jax.jit(jax.vmap(pendulum.step))


def random_states(seed, n, n_links):
    """States far from the data's: any angle, velocities N(0, 2²), in float64 (NumPy)."""
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.normal(size=(n, 1 + n_links, 2))
    x[:, 1:, 0] = rng.uniform(-math.pi, math.pi, size=(n, n_links))
    return x


def data_states(seed, n, n_links):
    """Data-like states (§5 draw) as NumPy float64."""
    return np.asarray(pendulum.sample_data(jax.random.key(seed), n, n_links)[0], np.float64)


@pytest.mark.parametrize("n_links", [1, 2, 3])
def test_step_matches_autodiff_lagrangian(n_links, x64):
    xs = jnp.asarray(random_states(n_links, 6, n_links))
    forces = jnp.linspace(-5.0, 5.0, 6)

    @jax.jit
    def both(x, f):
        mass, rhs = pendulum.mass_matrix_and_forces(x, f)
        q, q_dot = x[:, 0], x[:, 1]
        q_acc, ref_mass = reference_acceleration(x, f)
        ref_dot = q_dot + 0.01 * q_acc
        ref_step = jnp.stack([q + 0.01 * ref_dot, ref_dot], axis=-1)
        ours = (pendulum.step(x, f), mass, jnp.linalg.solve(mass, rhs), pendulum.energy(x))
        theirs = (ref_step, ref_mass, q_acc, kinetic(q, q_dot) + potential(q))
        return ours, theirs

    ours, theirs = jax.vmap(both)(xs, forces)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_many_steps_match_autodiff_lagrangian(x64):
    x = jnp.asarray(data_states(3, 1, 3)[0])
    forces = 2.0 * jnp.sin(0.3 * jnp.arange(100))

    def body(carry, f):
        ours, ref = carry
        return (pendulum.step(ours, f), reference_step(ref, f)), None

    (ours, ref), _ = jax.jit(lambda x: jax.lax.scan(body, (x, x), forces))(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)


def test_float32_step_close_to_float64():
    x = pendulum.sample_data(jax.random.key(1), 1, 2)[0][0]
    out = step(x, jnp.float32(1.5))
    assert out.dtype == jnp.float32 and out.shape == (3, 2)
    with jax.enable_x64(True):
        ref = step(jnp.asarray(x, jnp.float64), jnp.float64(1.5))
        assert ref.dtype == jnp.float64
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# --- energy over 200 steps without force ------------------------------------------------


def mutated_step(x, u, params, flips):
    """``pendulum.step`` with the sign of each term of §13 named in ``SIGN_ERRORS`` flipped
    where ``flips`` (traced floats, 0 or 1) says so: one program for every mutant."""
    n = x.shape[0] - 1
    mass, rhs = pendulum.mass_matrix_and_forces(x, u, params)
    phi, phi_dot = x[1:, 0], x[1:, 1]
    w, j = jnp.arange(n, 0, -1.0), np.arange(1, n + 1)
    c = jnp.asarray(n - np.maximum.outer(j, j) + 1.0)
    off_diagonal = 1.0 - jnp.eye(n)
    terms = {
        "M_xx tip masses": (jnp.zeros_like(mass).at[0, 0].set(M_TIP * n), 0.0),
        "M_xj": (jnp.zeros_like(mass).at[0, 1:].set(mass[0, 1:]).at[1:, 0].set(mass[1:, 0]), 0.0),
        "M_ij off-diagonal": (jnp.zeros_like(mass).at[1:, 1:].set(mass[1:, 1:] * off_diagonal), 0.0),
        "r_x centripetal": (
            0.0,
            jnp.zeros_like(rhs).at[0].set(jnp.sum(M_TIP * LENGTH * w * jnp.sin(phi) * phi_dot**2)),
        ),
        "r_i coupling": (
            0.0,
            jnp.zeros_like(rhs)
            .at[1:]
            .set(
                -jnp.sum(
                    M_TIP * LENGTH**2 * c * jnp.sin(phi[:, None] - phi[None]) * (phi_dot**2)[None], axis=1
                )
            ),
        ),
        "r_i gravity": (0.0, jnp.zeros_like(rhs).at[1:].set(M_TIP * G * LENGTH * w * jnp.sin(phi))),
    }
    for i, name in enumerate(SIGN_ERRORS):
        mass = mass - 2 * flips[i] * terms[name][0]
        rhs = rhs - 2 * flips[i] * terms[name][1]
    q_dot = x[:, 1] + params.dt * jnp.linalg.solve(mass, rhs)
    return jnp.stack([x[:, 0] + params.dt * q_dot, q_dot], axis=-1)


SIGN_ERRORS = (
    "M_xx tip masses",
    "M_xj",
    "M_ij off-diagonal",
    "r_x centripetal",
    "r_i coupling",
    "r_i gravity",
)


@functools.cache
def drift_program(n_links, mutated):
    """``(x0, flips) -> (errors at dt, errors at dt / 2)``: ``max_t |E(x_t) − E(x_0)|`` per state
    over T = 2 s without force at dt = 0.01 (200 steps) and at dt / 2 (400 steps). The energy is
    the independent Lagrangian's, so a wrong ``M`` in the step cannot hide in it. Both step
    sizes run in one scan."""
    params = pendulum.Params()
    half = dataclasses.replace(params, dt=params.dt / 2)

    def total(x):
        return jax.vmap(lambda xi: kinetic(xi[:, 0], xi[:, 1]) + potential(xi[:, 0]))(x)

    def run(x0, flips):
        e0, zero = total(x0), jnp.zeros(x0.shape[0])

        def advance(x, p):
            if mutated:
                return jax.vmap(lambda xi, ui: mutated_step(xi, ui, p, flips))(x, zero)
            return jax.vmap(partial(pendulum.step, params=p))(x, zero)

        def body(carry, _):
            coarse, fine = carry
            coarse = advance(coarse, params)
            fine_mid = advance(fine, half)
            fine = advance(fine_mid, half)
            fine_error = jnp.maximum(jnp.abs(total(fine_mid) - e0), jnp.abs(total(fine) - e0))
            return (coarse, fine), (jnp.abs(total(coarse) - e0), fine_error)

        return jax.lax.scan(body, (x0, x0), None, length=params.n_steps)[1]

    return jax.jit(run)


def energy_drifts(n_links, mutant=None):
    """The energy errors at dt and dt / 2 from 8 data-like states, relative to the swing-up
    energy ``2·m·g·ℓ·Σ_j w_j`` (upright minus hanging). ``mutant``: None for
    ``pendulum.step``, else ``mutated_step`` with that term flipped ("" flips none)."""
    x0 = jnp.asarray(data_states(10 + n_links, 8, n_links))
    flips = jnp.asarray([name == mutant for name in SIGN_ERRORS], jnp.float64)
    coarse, fine = drift_program(n_links, mutant is not None)(x0, flips)
    scale = 2 * M_TIP * G * LENGTH * n_links * (n_links + 1) / 2
    return float(jnp.max(coarse)) / scale, float(jnp.max(fine)) / scale


def conserves_energy(drift, drift_half, dt=0.01):
    """Semi-implicit Euler is first order: its energy error is O(dt), it oscillates instead of
    accumulating over the horizon, and it halves with dt. Over 768 data-like states (n = 1 … 3)
    we measured at most 2.3·dt of the swing-up energy and a halving ratio of 1.65 … 2.06, so we
    allow 3·dt and ask for a ratio above 1.5. A wrong term in M or r changes the energy by a
    physical amount that does not shrink with dt (ratio ≈ 1)."""
    return drift <= 3 * dt and drift / drift_half >= 1.5


@pytest.mark.parametrize("n_links", [1, 2, 3])
def test_energy_nearly_conserved(n_links, x64):
    drift, drift_half = energy_drifts(n_links)
    assert conserves_energy(drift, drift_half), (drift, drift_half)


@pytest.mark.parametrize("error", SIGN_ERRORS)
def test_energy_test_catches_a_sign_error(error, x64):
    """The criterion above is sharp enough: each single sign error in M or r fails it."""
    # The mutant step with nothing flipped passes, so the failure comes from the flip alone.
    assert conserves_energy(*energy_drifts(2, mutant=""))
    assert not conserves_energy(*energy_drifts(2, mutant=error))


# --- invariants and gradients -------------------------------------------------------------


def test_upright_at_rest_is_a_fixed_point():
    x = jnp.zeros((4, 2))
    y = x
    for _ in range(50):
        y = step(y, jnp.float32(0.0))
    np.testing.assert_array_equal(y, x)


def test_mirror_symmetry(x64):
    """Mirroring every coordinate (x -> -x, phi -> -phi) and the force mirrors the motion."""
    x = jnp.asarray(random_states(5, 1, 3)[0])
    np.testing.assert_allclose(
        step(-x, jnp.float64(-0.7)), -step(x, jnp.float64(0.7)), rtol=1e-12, atol=1e-12
    )


def test_force_pushes_the_cart():
    x = jnp.zeros((3, 2)).at[1:, 0].set(math.pi)
    pushed = step(x, jnp.float32(1.0))
    assert float(pushed[0, 1]) > 0 and float(pushed[0, 0]) > 0
    assert float(pushed[0, 1]) < 0.01 / M_CART  # the links add inertia


def test_step_gradients(x64):
    x = jnp.asarray(random_states(4, 1, 3)[0])
    check_grads(step, (x, jnp.float64(0.8)), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


# --- data, controller, loss -----------------------------------------------------------------


def test_data_controller_and_loss():
    train, test = pendulum.sample_data(jax.random.key(0), 512, 3)
    assert train.shape == test.shape == (512, 4, 2) and train.dtype == jnp.float32
    both = np.concatenate([train, test])
    assert np.all(np.abs(both[:, 0]) <= 1) and np.all(np.abs(both[:, 1:, 1]) <= 1)
    assert np.all(np.abs(both[:, 1:, 0] - math.pi) <= math.pi / 6 + 1e-6)
    task = pendulum.PROBLEM.make_task(3, dict(pendulum.PROBLEM.default_options))
    theta = jax.jit(task.init_controller)(jax.random.key(1))
    assert [layer["w"].shape for layer in theta] == [(8, 100), (100, 100), (100, 1)]
    assert not np.any(theta[-1]["w"]) and float(task.controller(theta, test[0])) == 0.0
    xs = jnp.asarray(np.random.default_rng(0).uniform(-4, 4, size=(5, 201, 4, 2)), jnp.float32)
    us = jnp.zeros((5, 200))
    final = float(task.loss(xs, us)[0])
    assert final == pytest.approx(1 - np.mean(np.cos(np.asarray(xs)[:, -1, 1:, 0])), rel=1e-6)
    continuous = pendulum.PROBLEM.make_task(3, {"loss": "CONTINUOUS"}).loss(xs, us)[0]
    assert float(continuous) == pytest.approx(1 - np.mean(np.cos(np.asarray(xs)[:, 1:, 1:, 0])), rel=1e-6)
    with pytest.raises(ValueError, match="unknown loss"):
        pendulum.PROBLEM.make_task(1, {"loss": "MEAN"})


@pytest.mark.parametrize("n_links", [1, 2, 3])
def test_contract(n_links):
    for mode in ("FINAL", "CONTINUOUS"):
        problems.check(pendulum.PROBLEM, n_links, {"loss": mode})
    assert pendulum.PROBLEM.valid_level(n_links)
    assert not pendulum.PROBLEM.valid_level(0) and not pendulum.PROBLEM.valid_level(4)
    assert problems.get("pendulum") is pendulum.PROBLEM


# --- padded task ----------------------------------------------------------------------------

OPTIONS = dict(pendulum.PROBLEM.default_options)


def padded_of(level):
    return pendulum.PROBLEM.make_padded_task(level, 3, OPTIONS)


def few_updates(task, theta, x0):
    """The 200-step rollout of ``theta`` and three Adam steps by flow R on the batch ``x0``."""
    xs, _ = flows.rollout("R", task.controller, task.step, theta, x0, task.n_steps)
    optimizer = optax.adam(1e-3)

    def update(carry, _):
        theta, state = carry
        out = flows.flow_gradients("R", task.controller, task.step, task.loss, theta, x0, task.n_steps)
        updates, state = optimizer.update(out.update, state, theta)
        return (optax.apply_updates(theta, updates), state), out.value[0]

    (theta, _), losses = jax.lax.scan(update, (theta, optimizer.init(theta)), None, length=3)
    return {"xs": xs, "losses": losses, "theta": theta}


@jax.jit
def padded_run(key, level, x0):
    """Initial parameters, real-parameter count, one step (force 2) and ``few_updates`` of
    the padded task: one program for every level, as on a GPU."""
    task = padded_of(level)
    theta = task.init_controller(key)
    # A controller that acts: give the last layer weights.
    theta[-1]["w"] = 0.05 * jax.random.normal(jax.random.key(4), theta[-1]["w"].shape)
    one_step = jax.vmap(task.step)(x0, jnp.full(x0.shape[:1], 2.0))
    return theta, task.n_params, one_step, few_updates(task, theta, x0)


@pytest.mark.parametrize("n_links", [1, 2])
def test_padded_equals_unpadded(n_links):
    plain = pendulum.PROBLEM.make_task(n_links, OPTIONS)
    cut = 2 * (1 + n_links)  # real inputs of the first layer

    x_train, _ = plain.sample_data(jax.random.key(0), 8)
    x_pad, _ = padded_of(n_links).sample_data(jax.random.key(0), 8)
    assert x_pad.shape == (8, 4, 2)
    np.testing.assert_array_equal(x_pad[:, : 1 + n_links], x_train)
    assert not np.any(x_pad[:, 1 + n_links :])

    theta_pad, n_params, one_step, theirs = padded_run(jax.random.key(3), jnp.float32(n_links), x_pad)
    theta = plain.init_controller(jax.random.key(3))
    np.testing.assert_array_equal(theta_pad[0]["w"][:cut], theta[0]["w"])
    assert not np.any(theta_pad[0]["w"][cut:])
    assert int(n_params) == sum(leaf.size for leaf in jax.tree.leaves(theta))
    theta[-1]["w"] = theta_pad[-1]["w"]

    # One step.
    np.testing.assert_allclose(
        one_step[:, : 1 + n_links],
        step_batch(x_train, jnp.full((8,), 2.0)),
        rtol=1e-6,
        atol=1e-6,
    )
    # The 200-step rollout, and the loss and parameters over three Adam updates.
    ours = jax.jit(lambda th: few_updates(plain, th, x_train))(theta)
    np.testing.assert_allclose(theirs["xs"][..., : 1 + n_links, :], ours["xs"], rtol=2e-4, atol=2e-4)
    assert not np.any(theirs["xs"][..., 1 + n_links :, :])
    np.testing.assert_allclose(theirs["losses"], ours["losses"], rtol=1e-4)
    first = theirs["theta"][0]["w"]
    assert not np.any(first[cut:])  # padded inputs' weights stay zero
    np.testing.assert_allclose(first[:cut], ours["theta"][0]["w"], rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(theirs["theta"][1:]), jax.tree.leaves(ours["theta"][1:]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
