"""Cart with several poles, swing-up (docs/model.md §5).

State of one sample: ``(1 + P, 2)``; row 0 is the cart ``(x, x_dot)``, row k the pole
``(theta_k, theta_dot_k)`` with ``theta = 0`` upright and ``pi`` hanging down. The control is
one scalar force per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from bptt_cli import nn
from bptt_cli.core.task import ProblemDef, Task

# --- params -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """Physical constants (docs/model.md §5). ``total_mass`` is the same for every P, as released."""

    gravity: float = 9.8
    pole_mass: float = 0.1
    total_mass: float = 1.1
    pole_length: float = 0.5
    dt: float = 0.01
    n_steps: int = 100


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
    cart = jnp.stack([cart_pos, cart_vel])[None]
    poles = jnp.stack([theta, theta_dot], axis=-1)
    if real is not None:
        poles = jnp.where(real[:, None], poles, 0.0)
    return jnp.concatenate([cart, poles], axis=0)


# --- data -------------------------------------------------------------------------------


def sample_initial_states(key: jax.Array, n: int, n_poles: int) -> jax.Array:
    """``(n, 1+P, 2)`` states: entries U(-1, 1), pole angles ``pi + u * pi / 6`` from the same u."""
    draw = jax.random.uniform(key, (n, 1 + n_poles, 2), jnp.float32, -1.0, 1.0)
    return draw.at[:, 1:, 0].set(math.pi + draw[:, 1:, 0] * (math.pi / 6))


def sample_data(key: jax.Array, n_data: int, n_poles: int) -> tuple[jax.Array, jax.Array]:
    """Draw ``2 * n_data`` states: the first half trains, the second half tests."""
    states = sample_initial_states(key, 2 * n_data, n_poles)
    return states[:n_data], states[n_data:]


# --- controller -------------------------------------------------------------------------


def init_controller(key: jax.Array, n_poles: int, width: int = 100) -> list[dict[str, jax.Array]]:
    """Dense 100 tanh -> Dense 100 tanh -> Dense 1; the last kernel starts at zero (as released)."""
    return nn.init_mlp(key, [2 * (1 + n_poles), width, width, 1], zero_last=True)


def controller(theta: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Force (scalar) for ONE state ``(1+P, 2)``."""
    return nn.mlp(theta, x.reshape(-1))[0]


# --- loss -------------------------------------------------------------------------------


def loss(xs: jax.Array, us: jax.Array, mode: str = "FINAL") -> jax.Array:
    """``1 - mean cos(theta)`` over batch and poles; range [0, 2].

    ``xs`` is ``(B, n_steps + 1, 1+P, 2)``. FINAL (used in the paper) takes the last state;
    CONTINUOUS averages over the states ``x_1 ... x_Nt`` as well.
    """
    del us
    angles = xs[:, -1, 1:, 0] if mode == "FINAL" else xs[:, 1:, 1:, 0]
    return 1.0 - jnp.mean(jnp.cos(angles))


def _padded_loss(xs: jax.Array, mode: str, n_poles: jax.Array) -> jax.Array:
    """``loss`` when poles beyond ``n_poles`` are padding (their angle is 0: ``1 - cos = 0``)."""
    angles = xs[:, -1, 1:, 0] if mode == "FINAL" else xs[:, 1:, 1:, 0]
    return jnp.sum(1.0 - jnp.cos(angles)) / (angles.size // angles.shape[-1] * n_poles)


# --- problem descriptor -----------------------------------------------------------------


def _make_task(n_poles: int, options) -> Task:
    params = Params()
    mode = options["loss"]
    return Task(
        step=partial(step, params=params),
        controller=controller,
        init_controller=partial(init_controller, n_poles=n_poles),
        loss=lambda xs, us: (loss(xs, us, mode), {}),
        sample_data=partial(sample_data, n_poles=n_poles),
        n_steps=params.n_steps,
    )


def _n_params(n_poles: int, width: int = 100) -> int:
    return 2 * (1 + n_poles) * width + width + width * width + width + width + 1


def _make_padded_task(n_poles, max_poles: int, options) -> Task:
    """The task at ``n_poles`` (traced) with every array shaped for ``max_poles`` poles.

    Padded poles sit at rest at angle 0, add nothing to the cart and stay zero; the network's
    input weights for them start at zero and, seeing zero inputs, receive zero gradients, so
    they stay zero under every optimizer. Results equal ``_make_task(n_poles)``'s up to
    float32 rounding.
    """
    params = Params()
    mode = options["loss"]
    real = jnp.arange(max_poles) < n_poles

    def init(key):
        candidates = []
        for p in range(1, max_poles + 1):
            theta = init_controller(key, p)
            first = jnp.zeros((2 * (1 + max_poles), theta[0]["w"].shape[1]), theta[0]["w"].dtype)
            theta[0] = {"w": first.at[: 2 * (1 + p)].set(theta[0]["w"]), "b": theta[0]["b"]}
            candidates.append(theta)
        index = jnp.clip(jnp.asarray(n_poles, jnp.int32) - 1, 0, max_poles - 1)
        return jax.tree.map(lambda *leaves: jnp.stack(leaves)[index], *candidates)

    def data(key, n_data):
        parts = sample_data(key, n_data, int(n_poles))
        pad = ((0, 0), (0, max_poles - int(n_poles)), (0, 0))
        return tuple(jnp.pad(part, pad) for part in parts)

    counts = jnp.asarray([_n_params(p) for p in range(1, max_poles + 1)])
    return Task(
        step=lambda x, u: _step(x, u, params, real),
        controller=controller,
        init_controller=init,
        loss=lambda xs, us: (_padded_loss(xs, mode, n_poles), {}),
        sample_data=data,
        n_steps=params.n_steps,
        n_params=counts[jnp.clip(jnp.asarray(n_poles, jnp.int32) - 1, 0, max_poles - 1)],
    )


PROBLEM = ProblemDef(
    name="cartpole",
    level_key="n_poles",
    level_type=int,
    level_is_static=True,
    make_task=_make_task,
    default_options={"loss": "FINAL"},
    option_choices={"loss": ("FINAL", "CONTINUOUS")},
    valid_level=lambda n: n >= 1,
    valid_level_text="a number of poles >= 1",
    make_padded_task=_make_padded_task,
    drawing="bptt_cli.plotting.drawings:cartpole",
)
