"""Quantum control problem (docs/model.md §7): Crank–Nicolson physics, data, CNN controller, loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from bptt_cli.problems import quantum

NX, DT, N_STEPS = 32, 0.0625, 128


# --- independent NumPy transcription of docs/model.md §7 -----------------------------------------


def np_cn_matrices(u: float) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``I ± i·dt/2·H`` with ``H = −D2 + u·x`` (complex128)."""
    dx = 2.0 / (NX + 1)
    x = dx * np.arange(1, NX + 1)
    d2 = (np.eye(NX, k=-1) - 2.0 * np.eye(NX) + np.eye(NX, k=1)) / dx**2
    h = -d2 + np.diag(u * x)
    return np.eye(NX) + 0.5j * DT * h, np.eye(NX) - 0.5j * DT * h


def np_step(psi: np.ndarray, u: float) -> np.ndarray:
    """One CN step on a complex ``(NX,)`` vector, by a dense solve."""
    lhs, rhs = np_cn_matrices(u)
    return np.linalg.solve(lhs, rhs @ psi)


def np_eigenstate(n: int) -> np.ndarray:
    phi = np.sin(n * np.pi * np.arange(1, NX + 1) / (NX + 1))
    return phi / np.linalg.norm(phi)


def to_complex(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x[..., 0] + 1j * x[..., 1]


def to_real(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1)


def random_states(seed: int, n: int) -> np.ndarray:
    """``(n, NX)`` normalised complex states with every mode present (not just φ1, φ2)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, NX)) + 1j * rng.normal(size=(n, NX))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


CONTROLS = 4.0 * np.sin(0.1 * np.arange(N_STEPS)) + 1.5  # a fixed, nonzero control sequence


def jax_rollout(psi0, us):
    """Physics only, a fixed control sequence ``us (T,)``: returns ``(T, NX, 2)`` states."""

    def body(psi, u):
        psi = quantum.step(psi, u)
        return psi, psi

    return jax.lax.scan(body, psi0, us)[1]


# --- physics ----------------------------------------------------------------------------


def test_params_match_spec():
    p = quantum.Params()
    assert (p.nx, p.length, p.dt, p.n_steps) == (32, 2.0, 0.0625, 128)
    assert p.dx == pytest.approx(2.0 / 33)


def test_one_step_agrees_with_a_dense_solve_of_the_same_system():
    psi = random_states(0, 1)[0]
    for u in (0.0, 1.7, -25.0):
        got = quantum.step(jnp.asarray(to_real(psi), jnp.float32), jnp.float32(u))
        assert got.shape == (NX, 2) and got.dtype == jnp.float32
        np.testing.assert_allclose(to_complex(got), np_step(psi, u), atol=1e-6)


def test_horizon_agrees_with_a_dense_solve_of_the_same_system():
    psi0 = random_states(1, 1)[0]
    want = [psi0]
    for u in CONTROLS:
        want.append(np_step(want[-1], u))
    want = np.stack(want[1:])
    got = jax.jit(jax_rollout)(jnp.asarray(to_real(psi0), jnp.float32), jnp.asarray(CONTROLS, jnp.float32))
    np.testing.assert_allclose(to_complex(got), want, atol=2e-5)


def test_horizon_agrees_with_a_dense_solve_in_float64(x64):
    psi0 = random_states(2, 1)[0]
    want = psi0
    for u in CONTROLS:
        want = np_step(want, u)
    got = jax.jit(jax_rollout)(jnp.asarray(to_real(psi0)), jnp.asarray(CONTROLS))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(to_complex(got[-1]), want, atol=1e-11)


def test_step_is_the_same_under_vmap():
    psis = jnp.asarray(to_real(random_states(3, 5)), jnp.float32)
    us = jnp.asarray([0.0, 1.0, -3.0, 10.0, 0.5], jnp.float32)
    batched = jax.vmap(quantum.step)(psis, us)
    for i in range(5):
        np.testing.assert_allclose(batched[i], quantum.step(psis[i], us[i]), atol=1e-7)


def test_step_gradients_in_float64(x64):
    psi = jnp.asarray(to_real(random_states(4, 1)[0]))
    u = jnp.asarray(2.3)
    check_grads(quantum.step, (psi, u), order=1, modes=("fwd", "rev"))


def test_norm_and_inner_products_are_conserved_with_control():
    states = random_states(5, 6)
    psi0 = jnp.asarray(to_real(states), jnp.float32)
    rollout = jax.jit(jax.vmap(jax_rollout, in_axes=(0, None)))
    zs = to_complex(rollout(psi0, jnp.asarray(CONTROLS, jnp.float32)))  # (6, T, NX)
    gram0 = states.conj() @ states.T
    gram_t = np.einsum("atj,btj->tab", zs.conj(), zs)  # ⟨ψ_a, ψ_b⟩ at every t
    np.testing.assert_allclose(np.einsum("taa->ta", gram_t).real, 1.0, atol=1e-4)
    np.testing.assert_allclose(gram_t, np.broadcast_to(gram0[None], gram_t.shape), atol=5e-5)
    # the control really moved the states: they are far from the uncontrolled evolution
    free = to_complex(rollout(psi0, jnp.zeros(N_STEPS, jnp.float32)))
    assert np.max(np.abs(free[:, -1] - zs[:, -1])) > 0.1


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12])
def test_eigenstates_stay_eigenstates_and_turn_by_the_cn_phase(n):
    phi = np_eigenstate(n)
    psi0 = jnp.asarray(to_real(phi.astype(complex)), jnp.float32)
    zs = to_complex(jax.jit(jax_rollout)(psi0, jnp.zeros(N_STEPS, jnp.float32)))
    overlap = zs @ phi  # ⟨φ_n, ψ_t⟩, φ_n real
    np.testing.assert_allclose(np.abs(overlap) ** 2, 1.0, atol=1e-4)
    # discrete eigenvalue of −D2 and the CN amplification factor per step
    lam = 4.0 * np.sin(n * np.pi / (2 * (NX + 1))) ** 2 / (2.0 / (NX + 1)) ** 2
    factor = (1 - 0.5j * DT * lam) / (1 + 0.5j * DT * lam)
    np.testing.assert_allclose(overlap, factor ** np.arange(1, N_STEPS + 1), atol=1e-4)


# --- eigenstates and data ---------------------------------------------------------------


def test_eigenstates_are_orthonormal_and_match_the_formula():
    basis = np.stack([np.asarray(quantum.eigenstate(n)) for n in range(1, NX + 1)])
    assert basis.shape == (NX, NX)
    np.testing.assert_allclose(basis @ basis.T, np.eye(NX), atol=1e-5)
    np.testing.assert_allclose(basis[2], np_eigenstate(3), atol=1e-6)
    assert basis[0].min() > 0  # the ground state has no node


def test_eigenstate_with_a_traced_level_equals_the_int_version():
    traced = jax.jit(quantum.eigenstate)
    for n in (1, 3, 4, 5):
        np.testing.assert_allclose(traced(jnp.float32(n)), quantum.eigenstate(n), atol=1e-6)
    assert quantum.eigenstate(2, nx=8).shape == (8,)


@pytest.mark.parametrize("weighting", sorted(quantum.WEIGHTINGS))
def test_initial_states_are_normalised_superpositions_of_the_two_lowest(weighting):
    psi0 = quantum.sample_initial_states(jax.random.key(0), 64, weighting)
    assert psi0.shape == (64, NX, 2) and psi0.dtype == jnp.float32
    z = to_complex(psi0)
    np.testing.assert_allclose(np.sum(np.abs(z) ** 2, axis=1), 1.0, atol=1e-5)
    basis = np.stack([np_eigenstate(n) for n in range(1, NX + 1)])
    coeff = z @ basis.T  # (64, NX): ⟨φ_n, ψ0⟩
    assert np.max(np.abs(coeff[:, 2:])) < 1e-5
    np.testing.assert_allclose(np.sum(np.abs(coeff[:, :2]) ** 2, axis=1), 1.0, atol=1e-5)


def test_weighting_favours_the_ground_state_and_phases_are_uniform():
    def ground_share(weighting):
        z = to_complex(quantum.sample_initial_states(jax.random.key(7), 4000, weighting))
        coeff = z @ np.stack([np_eigenstate(1), np_eigenstate(2)]).T
        return coeff, np.mean(np.abs(coeff[:, 0]) ** 2)

    coeff, share = ground_share("1-1")
    assert share == pytest.approx(0.5, abs=0.03)
    relative = coeff[:, 0] * coeff[:, 1].conj()
    assert abs(np.mean(relative / np.abs(relative))) < 0.06  # relative phase α1 − α2 uniform
    assert abs(np.mean(coeff[:, 0] / np.abs(coeff[:, 0]))) < 0.06  # α1 uniform
    shares = [ground_share(w)[1] for w in ("3-1", "7-1", "15-1")]
    assert 0.6 < shares[0] < shares[1] < shares[2] < 1.0


def test_data_is_deterministic_and_split_into_halves():
    key = jax.random.key(42)
    a = quantum.sample_initial_states(key, 16, "3-1")
    np.testing.assert_array_equal(a, quantum.sample_initial_states(key, 16, "3-1"))
    assert not np.allclose(a, quantum.sample_initial_states(jax.random.key(43), 16, "3-1"))
    train, test = quantum.sample_data(key, 8, "3-1")
    assert train.shape == test.shape == (8, NX, 2)
    np.testing.assert_array_equal(train, a[:8])
    np.testing.assert_array_equal(test, a[8:])


# --- controller -------------------------------------------------------------------------


def random_theta(key, width=60):
    """Random values in every entry (biases too), in the layouts of ``init_controller``."""
    shapes = jax.tree.map(jnp.shape, quantum.init_controller(jax.random.key(0), width))
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [0.3 * jax.random.normal(k, s) for k, s in zip(keys, leaves, strict=True)]
    )


def test_controller_layout_and_initialisation():
    theta = quantum.init_controller(jax.random.key(0))
    assert sum(leaf.size for leaf in jax.tree.leaves(theta)) == 11701
    assert [tuple(layer["w"].shape) for layer in theta] == [(3, 2, 1, 60), (3, 60, 60), (420, 1)]
    assert [tuple(layer["b"].shape) for layer in theta] == [(60,), (60,), (1,)]
    assert all(not np.any(layer["b"]) for layer in theta)
    for layer, (fan_in, fan_out) in zip(theta, [(6, 360), (180, 180), (420, 1)], strict=True):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        w = np.abs(np.asarray(layer["w"]))
        assert w.max() <= limit and w.max() > 0.9 * limit  # last kernel not zeroed
    psi0 = quantum.sample_initial_states(jax.random.key(1), 4)
    assert np.all(jax.vmap(quantum.controller, in_axes=(None, 0))(theta, psi0) != 0)


def test_fast_controller_equals_the_lax_conv_reference():
    psis = jax.random.normal(jax.random.key(2), (16, NX, 2))
    for seed, width in [(0, 60), (1, 60), (2, 7)]:
        theta = random_theta(jax.random.key(10 + seed), width)
        fast = jax.vmap(quantum.controller, in_axes=(None, 0))(theta, psis)
        ref = jax.vmap(quantum.controller_conv, in_axes=(None, 0))(theta, psis)
        assert fast.shape == (16,)
        np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5)
        assert np.std(np.asarray(ref)) > 0.1  # random enough to tell a wrong layout apart


def test_fast_controller_gradients_equal_the_reference():
    theta = random_theta(jax.random.key(3))
    psi = jax.random.normal(jax.random.key(4), (NX, 2))
    fast = jax.grad(quantum.controller, argnums=(0, 1))(theta, psi)
    ref = jax.grad(quantum.controller_conv, argnums=(0, 1))(theta, psi)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --- loss and rollouts ------------------------------------------------------------------


def np_loss(xs: np.ndarray, n: int, mode: str) -> float:
    overlap = to_complex(xs) @ np_eigenstate(n)  # (B, T+1)
    terms = 1.0 - np.abs(overlap) ** 2
    return float(np.mean(terms[:, 1:].sum(axis=1) if mode == "CONTINUOUS" else terms[:, -1]))


def test_loss_matches_numpy_and_its_range():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(3, N_STEPS + 1, NX)) + 1j * rng.normal(size=(3, N_STEPS + 1, NX))
    xs = to_real(z / np.linalg.norm(z, axis=-1, keepdims=True))
    us = jnp.zeros((3, N_STEPS))
    for mode in ("CONTINUOUS", "FINAL"):
        got = quantum.loss(jnp.asarray(xs, jnp.float32), us, 4.0, mode)
        assert float(got) == pytest.approx(np_loss(xs, 4, mode), rel=1e-5)
    # exactly the target: 0; orthogonal to it: the maximum, and x0 never counts
    target = np.broadcast_to(to_real(np_eigenstate(3).astype(complex)), (2, N_STEPS + 1, NX, 2)).copy()
    other = np.broadcast_to(to_real(1j * np_eigenstate(1)), (2, N_STEPS + 1, NX, 2))
    assert float(quantum.loss(jnp.asarray(target, jnp.float32), us, 3)) == pytest.approx(0.0, abs=1e-4)
    assert float(quantum.loss(jnp.asarray(other, jnp.float32), us, 3)) == pytest.approx(128.0, abs=1e-3)
    target[:, 0] = other[:, 0]
    assert float(quantum.loss(jnp.asarray(target, jnp.float32), us, 3, "FINAL")) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError):
        quantum.loss(jnp.asarray(target), us, 3, "MEAN")


def test_task_rollouts_with_the_untrained_controller_are_finite():
    task = quantum.PROBLEM.make_task(3, quantum.PROBLEM.default_options)
    assert task.n_steps == 128
    theta = task.init_controller(jax.random.key(0))
    x0s, _ = task.sample_data(jax.random.key(1), 8)

    def rollout(theta, x0):
        def body(x, _):
            u = task.controller(theta, x)
            x_next = task.step(x, u)
            return x_next, (x_next, u)

        _, (xs, us) = jax.lax.scan(body, x0, None, length=task.n_steps)
        return jnp.concatenate([x0[None], xs]), us

    xs, us = jax.jit(jax.vmap(rollout, in_axes=(None, 0)))(theta, x0s)
    assert xs.shape == (8, 129, NX, 2) and us.shape == (8, 128)
    assert np.all(np.isfinite(xs)) and np.all(np.isfinite(us)) and np.any(us != 0)
    np.testing.assert_allclose(np.sum(np.asarray(xs) ** 2, axis=(-2, -1)), 1.0, atol=1e-4)

    traces = []

    @jax.jit
    def task_loss(xs, us, level):
        traces.append(level)
        return quantum.PROBLEM.make_task(level, quantum.PROBLEM.default_options).loss(xs, us)

    for n in (3, 4, 5):
        value, aux = task_loss(xs, us, jnp.float32(n))
        assert aux == {}
        assert 0.0 <= float(value) <= 128.0
        assert float(value) == pytest.approx(np_loss(np.asarray(xs), n, "CONTINUOUS"), rel=1e-5)
    assert len(traces) == 1  # one compiled program serves every target state

    final = quantum.PROBLEM.make_task(jnp.float32(5), {"loss": "FINAL", "weighting": "15-1"})
    value, _ = final.loss(xs, us)
    assert 0.0 <= float(value) <= 1.0


def test_problem_descriptor():
    p = quantum.PROBLEM
    assert (p.name, p.level_key, p.level_type, p.level_is_static) == ("quantum", "target_state", int, False)
    assert dict(p.default_options) == {"loss": "CONTINUOUS", "weighting": "1-1"}
    assert p.option_choices["weighting"] == tuple(quantum.WEIGHTINGS)
    assert quantum.WEIGHTINGS == {"1-1": (1, 1), "3-1": (3, 1), "7-1": (7, 1), "15-1": (15, 1)}
