"""A chain of n links on a cart, swing-up (docs/model.md §13).

State of one sample: ``(1 + n, 2)``; row 0 is the cart ``(x, x_dot)``, row k the link
``(phi_k, phi_dot_k)`` with ``phi_k`` the absolute angle of link k from upright (0 up, π down).
Links are massless, of length ℓ, with a point mass m at every tip; link 1 hangs on the cart and
link k on the tip of link k−1. The control is one horizontal force on the cart per sample.
Generalized coordinates ``q = (x, phi_1, …, phi_n)``; every step solves ``M(q)·q̈ = r`` and
advances by semi-implicit Euler. Data, controller and loss are those of the cart-pole (§5).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bptt_cli.core.task import ProblemDef, Task
from bptt_cli.problems import cart
from bptt_cli.problems.params import PendulumParams

# --- params -----------------------------------------------------------------------------

# Declared in params.py with the other drawn problems' constants: the drawings read them there.
Params = PendulumParams


# --- physics ----------------------------------------------------------------------------


def _weights(n_links, real: jax.Array | None, dtype) -> tuple[jax.Array, jax.Array]:
    """``w_j = n − j + 1`` (tip masses at or beyond link j) and ``c_ij = n − max(i, j) + 1``.

    ``real`` (bool ``(N,)``) marks the links that exist, the first ``n_links`` of ``N``; the
    padded ones get weight 0. Without it all ``n_links`` links are real.
    """
    n_rows = n_links if real is None else real.shape[0]
    j = np.arange(1, n_rows + 1)
    n = jnp.asarray(n_links, dtype)
    w = n - jnp.asarray(j, dtype) + 1.0
    c = n - jnp.asarray(np.maximum.outer(j, j), dtype) + 1.0
    if real is not None:
        w = jnp.where(real, w, 0.0)
        c = jnp.where(real[:, None] & real[None, :], c, 0.0)
    return w, c


def mass_matrix_and_forces(
    x: jax.Array, force: jax.Array, params: Params = Params(), n_links=None, real: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """``M(q) (1+n, 1+n)`` and the right-hand side ``r (1+n,)`` of ``M(q)·q̈ = r`` (docs/model.md §13)
    for ONE state ``x (1+n, 2)`` and a scalar force.

    With ``real`` (bool ``(n,)``, its first ``n_links`` entries True, ``n_links`` possibly
    traced), the other links are padding: their rows and columns of ``M`` are those of the
    identity and their ``r`` is 0, so their acceleration is exactly 0 and they do not touch the
    real ones.
    """
    m, length, g = params.tip_mass, params.link_length, params.gravity
    dtype = x.dtype
    n_links = x.shape[0] - 1 if real is None else n_links
    w, c = _weights(n_links, real, dtype)
    phi, phi_dot = x[1:, 0], x[1:, 1]
    sin, cos = jnp.sin(phi), jnp.cos(phi)
    diff = phi[:, None] - phi[None, :]

    m_xx = params.cart_mass + m * jnp.asarray(n_links, dtype)
    m_xj = m * length * w * cos
    m_ij = m * length**2 * c * jnp.cos(diff)
    if real is not None:
        m_ij = m_ij + jnp.diag(jnp.where(real, 0.0, 1.0).astype(dtype))
    mass = jnp.concatenate(
        [
            jnp.concatenate([jnp.reshape(m_xx, (1, 1)), m_xj[None]], axis=1),
            jnp.concatenate([m_xj[:, None], m_ij], axis=1),
        ],
        axis=0,
    )
    r_x = jnp.reshape(force, ()).astype(dtype) + jnp.sum(m * length * w * sin * phi_dot**2)
    r_links = m * g * length * w * sin - jnp.sum(
        m * length**2 * c * jnp.sin(diff) * (phi_dot**2)[None, :], axis=1
    )
    return mass, jnp.concatenate([r_x[None], r_links])


def step(x: jax.Array, u: jax.Array, params: Params = Params()) -> jax.Array:
    """One semi-implicit Euler step for ONE sample: ``x (1+n, 2)``, scalar force ``u``.

    ``q̈ = M(q)⁻¹·r``, then ``q̇ ← q̇ + dt·q̈`` and ``q ← q + dt·q̇`` with the new ``q̇`` (§5).
    """
    return _step(x, u, params, None, None)


def _step(x: jax.Array, u: jax.Array, params: Params, n_links, real: jax.Array | None) -> jax.Array:
    """``step``; with ``real`` (bool ``(n,)``) links where it is False are padding and stay 0."""
    mass, rhs = mass_matrix_and_forces(x, u, params, n_links, real)
    q_acc = jnp.linalg.solve(mass, rhs)
    q_dot = x[:, 1] + params.dt * q_acc
    q = x[:, 0] + params.dt * q_dot
    out = jnp.stack([q, q_dot], axis=-1)
    if real is not None:
        out = jnp.where(jnp.concatenate([jnp.ones((1,), bool), real])[:, None], out, 0.0)
    return out


def energy(x: jax.Array, params: Params = Params()) -> jax.Array:
    """Total energy ``T + V`` of ONE state ``(1+n, 2)``: ``T = ½ q̇ᵀ M(q) q̇`` and
    ``V = m·g·Σ_k y_k = m·g·ℓ·Σ_j w_j cos phi_j`` from the tip heights above the track."""
    mass, _ = mass_matrix_and_forces(x, jnp.zeros((), x.dtype), params)
    w, _ = _weights(x.shape[0] - 1, None, x.dtype)
    potential = params.tip_mass * params.gravity * params.link_length * jnp.sum(w * jnp.cos(x[1:, 0]))
    q_dot = x[:, 1]
    return 0.5 * q_dot @ mass @ q_dot + potential


# --- data, controller, loss: those of the cart-pole (§5) ----------------------------------

sample_data, loss = cart.sample_data, cart.loss
init_controller, controller = cart.init_controller, cart.controller

# --- problem descriptor -----------------------------------------------------------------


def _make_task(n_links: int, options) -> Task:
    params = Params()
    return cart.make_task(partial(step, params=params), params.n_steps, n_links, options)


def _make_padded_task(n_links, max_links: int, options) -> Task:
    """The task at ``n_links`` (traced) shaped for ``max_links`` links (``cart.make_padded_task``):
    padded links rest at angle 0 with identity rows in ``M`` and a zero right-hand side."""
    params = Params()
    return cart.make_padded_task(
        lambda real: lambda x, u: _step(x, u, params, n_links, real),
        params.n_steps,
        n_links,
        max_links,
        options,
    )


PROBLEM = ProblemDef(
    name="pendulum",
    level_key="n_links",
    level_type=int,
    level_is_static=True,
    make_task=_make_task,
    default_options={"loss": "FINAL"},
    option_choices={"loss": cart.LOSS_MODES},
    valid_level=lambda n: 1 <= n <= 3,
    valid_level_text="1, 2 or 3 links",
    make_padded_task=_make_padded_task,
    drawing="bptt_cli.plotting.drawings:pendulum",
)
