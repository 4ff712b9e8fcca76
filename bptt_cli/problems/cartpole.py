"""Cart with several poles, swing-up (docs/model.md §5).

State of one sample: ``(1 + P, 2)``; row 0 is the cart ``(x, x_dot)``, row k the pole
``(theta_k, theta_dot_k)`` with ``theta = 0`` upright and ``pi`` hanging down. The control is
one scalar force per sample.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from bptt_cli.core.task import ProblemDef, Task
from bptt_cli.problems import cart
from bptt_cli.problems.params import CartPoleParams

# --- params -----------------------------------------------------------------------------

# Declared in params.py with the other drawn problems' constants: the drawings read them there.
Params = CartPoleParams


# --- physics ----------------------------------------------------------------------------


def step(x: jax.Array, u: jax.Array, params: Params = Params()) -> jax.Array:
    """One semi-implicit Euler step for ONE sample: ``x (1+P, 2)``, scalar force ``u``."""
    return _step(x, u, params, None)


def _step(x: jax.Array, u: jax.Array, params: Params, real: jax.Array | None) -> jax.Array:
    """``step``; with ``real`` (bool ``(P,)``), poles where it is False are padding: they add
    nothing to the cart and stay exactly zero."""
    g, m, big_m, length, dt = (
        params.gravity,
        params.pole_mass,
        params.total_mass,
        params.pole_length,
        params.dt,
    )
    force = jnp.reshape(u, ())
    theta, theta_dot = x[1:, 0], x[1:, 1]
    s, c = jnp.sin(theta), jnp.cos(theta)
    q = s * theta_dot**2
    a = (force + m * length * q) / big_m
    theta_acc = (g * s - c * a) / (length * (4.0 / 3.0 - m * c**2 / big_m))
    if real is not None:
        theta_acc = jnp.where(real, theta_acc, 0.0)
        q = jnp.where(real, q, 0.0)
    cart_acc = (force + m * length * jnp.sum(q - theta_acc * c)) / big_m
    theta_dot = theta_dot + dt * theta_acc
    theta = theta + dt * theta_dot
    cart_vel = x[0, 1] + dt * cart_acc
    cart_pos = x[0, 0] + dt * cart_vel
    cart_state = jnp.stack([cart_pos, cart_vel])[None]
    poles = jnp.stack([theta, theta_dot], axis=-1)
    if real is not None:
        poles = jnp.where(real[:, None], poles, 0.0)
    return jnp.concatenate([cart_state, poles], axis=0)


# --- data, controller, loss: shared with the chained pendulum ------------------------------

sample_initial_states, sample_data = cart.sample_initial_states, cart.sample_data
init_controller, controller, loss = cart.init_controller, cart.controller, cart.loss

# --- problem descriptor -----------------------------------------------------------------


def _make_task(n_poles: int, options) -> Task:
    params = Params()
    return cart.make_task(partial(step, params=params), params.n_steps, n_poles, options)


def _make_padded_task(n_poles, max_poles: int, options) -> Task:
    """The task at ``n_poles`` (traced) shaped for ``max_poles`` poles (``cart.make_padded_task``)."""
    params = Params()
    return cart.make_padded_task(
        lambda real: lambda x, u: _step(x, u, params, real), params.n_steps, n_poles, max_poles, options
    )


PROBLEM = ProblemDef(
    name="cartpole",
    level_key="n_poles",
    level_type=int,
    level_is_static=True,
    make_task=_make_task,
    default_options={"loss": "FINAL"},
    option_choices={"loss": cart.LOSS_MODES},
    valid_level=lambda n: n >= 1,
    valid_level_text="a number of poles >= 1",
    make_padded_task=_make_padded_task,
    drawing="bptt_cli.plotting.drawings:cartpole",
)
