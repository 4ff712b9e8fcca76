"""Linear-quadratic control with a known optimum (docs/model.md §12).

State of one sample: ``(4,)``; the control is one scalar ``u``. The system is
``x' = A·x + B·u`` with ``A = a · blockdiag(Rot(0.3), Rot(0.7))`` and ``B = (0, 1, 0, 1)ᵀ``, so the
eigenvalues of ``A`` have modulus ``a``: the complexity level. It changes no shape, so every
level shares one program (``a`` reaches the task as a traced scalar).

For the linear controller ``u = K·x`` the best reachable loss ``L*`` is computed on the host in
float64 (:func:`optimal_gain`); runs record ``test_loss / L* - 1`` as their optimality gap.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bptt_cli import nn
from bptt_cli.core.task import ProblemDef, Task

# --- params -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """Constants of docs/model.md §12. ``a`` may be a Python number or a traced jax scalar."""

    a: Any = 1.0
    omega_1: float = 0.3
    omega_2: float = 0.7
    b: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)
    rho: float = 0.1
    n_steps: int = 50


def rotations(params: Params) -> np.ndarray:
    """``blockdiag(Rot(omega_1), Rot(omega_2))`` as a float64 ``(4, 4)`` array (``A / a``)."""
    out = np.zeros((4, 4))
    for i, w in enumerate((params.omega_1, params.omega_2)):
        c, s = math.cos(w), math.sin(w)
        out[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = [[c, -s], [s, c]]
    return out


# --- physics ----------------------------------------------------------------------------


def step(x: jax.Array, u: jax.Array, params: Params = Params()) -> jax.Array:
    """``A·x + B·u`` for ONE sample: ``x (4,)``, scalar ``u``; the state's dtype is kept."""
    dtype = x.dtype
    a_matrix = jnp.asarray(params.a, dtype) * jnp.asarray(rotations(params), dtype)
    b = jnp.asarray(params.b, dtype)
    return a_matrix @ x + b * jnp.reshape(u, ()).astype(dtype)


# --- data -------------------------------------------------------------------------------


def sample_data(key: jax.Array, n_data: int) -> tuple[jax.Array, jax.Array]:
    """Draw ``2 * n_data`` states ``x0 ~ N(0, I4)`` (float32): first half trains, second tests."""
    states = jax.random.normal(key, (2 * n_data, 4), jnp.float32)
    return states[:n_data], states[n_data:]


# --- controller -------------------------------------------------------------------------

CONTROLLERS = ("linear", "mlp")


def init_linear(key: jax.Array, scale: float = 0.0) -> dict[str, jax.Array]:
    """The linear gain ``K (1, 4)``: zero (docs/model.md §12), or with ``scale > 0`` each entry drawn
    from ``N(0, scale²)`` with ``key`` (the run's seed), so that seeds start apart."""
    if scale == 0:
        return {"K": jnp.zeros((1, 4), jnp.float32)}
    return {"K": scale * jax.random.normal(key, (1, 4), jnp.float32)}


def linear(theta: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """``u = K·x`` (scalar) for ONE state ``(4,)``; no bias."""
    return (theta["K"].astype(x.dtype) @ x)[0]


def init_mlp(key: jax.Array, width: int = 100) -> list[dict[str, jax.Array]]:
    """The §5 network on the state: Dense 100 tanh -> Dense 100 tanh -> Dense 1, last kernel zero."""
    return nn.init_mlp(key, [4, width, width, 1], zero_last=True)


def mlp(theta: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Control (scalar) for ONE state ``(4,)``."""
    return nn.mlp(theta, x)[0]


# --- loss -------------------------------------------------------------------------------


def loss(xs: jax.Array, us: jax.Array, params: Params = Params()) -> jax.Array:
    """CONTINUOUS quadratic loss (docs/model.md §12).

    ``xs (B, n_steps + 1, 4)`` with ``x0`` first, ``us (B, n_steps)``. Mean over the batch of
    ``(1/Nt)·Σ_{t=1..Nt} |x_t|² + rho·(1/Nt)·Σ_{t=0..Nt-1} u_t²``.
    """
    state_cost = jnp.mean(jnp.sum(xs[:, 1:] ** 2, axis=-1))
    control_cost = jnp.mean(us**2)
    return state_cost + jnp.asarray(params.rho, state_cost.dtype) * control_cost


# --- the optimum of the linear controller -------------------------------------------------


def _closed_loop_loss(k: jax.Array, sigma0: jax.Array, a_matrix: jax.Array, b: jax.Array, rho, n_steps):
    """``loss`` of ``u = K·x`` from the second moment ``sigma0 = mean x0 x0ᵀ``: with
    ``Σ_t = Acl^t Σ0 Acl^tᵀ``, ``Acl = A + B·K``, the loss is
    ``(1/Nt)·Σ_{t=1..Nt} tr Σ_t + rho·(1/Nt)·Σ_{t=0..Nt-1} K Σ_t Kᵀ``."""
    closed = a_matrix + jnp.outer(b, k)

    def body(sigma, _):
        nxt = closed @ sigma @ closed.T
        return nxt, (jnp.trace(nxt), k @ sigma @ k)

    _, (states, controls) = jax.lax.scan(body, sigma0, None, length=n_steps)
    return jnp.mean(states) + rho * jnp.mean(controls)


def _riccati_gains(a_matrix: np.ndarray, b: np.ndarray, rho: float, n_steps: int) -> list[np.ndarray]:
    """Two gains that make good starts: the first gain of the finite-horizon LQR of this loss,
    and the (nearly) stationary gain of a long horizon.

    The loss is the standard LQR cost with ``Q = I``, ``R = rho`` and terminal weight ``I``, up
    to the constant ``|x0|²``, so the backward Riccati recursion gives its time-varying optimum.
    """
    p = np.eye(4)
    gains = []
    for i in range(max(n_steps, 2000)):
        s = rho + b @ p @ b
        gain = -(b @ p @ a_matrix) / s
        p = np.eye(4) + a_matrix.T @ p @ a_matrix - np.outer(a_matrix.T @ p @ b, b @ p @ a_matrix) / s
        p = 0.5 * (p + p.T)
        if i == n_steps - 1:
            gains.append(gain)
    gains.append(gain)
    return gains


def _newton(fun, grad, hess, k0: np.ndarray, max_iter: int = 500) -> tuple[np.ndarray, float]:
    """Damped Newton with an Armijo backtracking line search; deterministic.

    Where the Hessian is not positive definite it is shifted by a multiple of the identity
    until it is (Levenberg), so every direction descends.
    """
    k, value = k0, fun(k0)
    for _ in range(max_iter):
        g, h = grad(k), hess(k)
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(h))):
            break
        shift = 0.0
        scale = np.max(np.abs(np.diag(h))) + 1e-300
        while True:
            try:
                chol = np.linalg.cholesky(h + shift * np.eye(h.shape[0]))
                break
            except np.linalg.LinAlgError:
                shift = max(2.0 * shift, 1e-10 * scale)
        direction = -np.linalg.solve(chol.T, np.linalg.solve(chol, g))
        slope = g @ direction
        if slope >= 0 or -slope <= 1e-30 * max(abs(value), 1e-300):
            break
        t = 1.0
        while t > 1e-20:
            candidate = k + t * direction
            new_value = fun(candidate)
            if np.isfinite(new_value) and new_value <= value + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break
        done = value - new_value <= 1e-15 * abs(value)
        k, value = candidate, new_value
        if done:
            break
    return k, value


@functools.cache
def _derivatives(n_steps: int):
    """The loss of a linear gain, its gradient and Hessian in ``K``, jitted once per process
    (``jit`` keeps separate programs for float32 and float64)."""
    fun = partial(_closed_loop_loss, n_steps=n_steps)
    return jax.jit(fun), jax.jit(jax.grad(fun)), jax.jit(jax.hessian(fun))


def optimal_gain(params: Params, x0) -> tuple[np.ndarray, float]:
    """The best linear gain ``K (1, 4)`` and its loss ``L*`` on the initial states ``x0 (N, 4)``.

    Everything is float64 on the host. The loss depends on ``x0`` only through
    ``Σ0 = mean x0 x0ᵀ``; it is minimised over the 4 entries of ``K`` by damped Newton (exact
    derivatives from jax, under a local float64 switch) from ``K = 0`` and from two Riccati
    gains (:func:`_riccati_gains`), keeping the best.
    """
    x0 = np.asarray(x0, np.float64).reshape(-1, 4)
    sigma0 = x0.T @ x0 / x0.shape[0]
    a_matrix = float(params.a) * rotations(params)
    b = np.asarray(params.b, np.float64)
    rho = float(params.rho)
    starts = [np.zeros(4), *_riccati_gains(a_matrix, b, rho, params.n_steps)]
    with jax.enable_x64(True):
        constants = tuple(jnp.asarray(c, jnp.float64) for c in (sigma0, a_matrix, b, rho))

        def on_host(f):
            return lambda k: np.asarray(f(jnp.asarray(k, jnp.float64), *constants), np.float64)

        fun, grad, hess = map(on_host, _derivatives(params.n_steps))
        best_k, best = starts[0], np.inf
        for start in starts:
            k, value = _newton(lambda k: float(fun(k)), grad, hess, start)
            if value < best:
                best_k, best = k, value
    return best_k.reshape(1, 4), float(best)


def optimal_loss(params: Params, x0) -> float:
    """``L*``: the minimum over linear gains ``K`` of the loss on ``x0 (N, 4)`` (float64)."""
    return optimal_gain(params, x0)[1]


# --- problem descriptor -----------------------------------------------------------------


def _make_task(a, options) -> Task:
    """``a`` may be traced (one program for every level): it only enters ``step``."""
    kind = options.get("controller", "linear")
    if kind not in CONTROLLERS:
        raise ValueError(f"unknown controller {kind!r}; allowed: {', '.join(CONTROLLERS)}")
    params = Params(a=a)
    scale = options.get("init_scale", 0.0)  # the linear gain's start; the MLP draws its own
    return Task(
        step=partial(step, params=params),
        controller=linear if kind == "linear" else mlp,
        init_controller=partial(init_linear, scale=scale) if kind == "linear" else init_mlp,
        loss=lambda xs, us: (loss(xs, us, params), {}),
        sample_data=sample_data,
        n_steps=params.n_steps,
        control_shape=(),
    )


def _optimum(a, options, x_test) -> float:
    """The linear controller's ``L*`` on the test states, whichever controller is trained (for
    the MLP it is a reference, not a bound)."""
    del options
    return optimal_loss(Params(a=float(a)), x_test)


PROBLEM = ProblemDef(
    name="lqr",
    level_key="a",
    level_type=float,
    level_is_static=False,
    make_task=_make_task,
    default_options={"controller": "linear", "init_scale": 0.0},
    option_choices={"controller": CONTROLLERS},
    option_checks={"init_scale": (lambda s: s >= 0, "a number >= 0 (the spread of K's start; 0: K = 0)")},
    valid_level=lambda a: 0 < a < math.inf,
    valid_level_text="a positive number",
    optimum=_optimum,
)
