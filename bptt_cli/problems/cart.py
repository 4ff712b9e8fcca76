"""What the cart-pole (docs/model.md §5) and the chained pendulum (§13) share: a cart carrying
P bodies (poles or links), one sample's state ``(1 + P, 2)`` with row 0 the cart ``(x, x_dot)``
and row k body k ``(angle, angular velocity)``, angle 0 upright; one scalar force per sample.

Here are their data, controller, loss, parameter count and the tasks built from them, plain and
padded; each problem brings its own physics (a ``step``) and constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from bptt_cli import nn
from bptt_cli.core.task import Task

LOSS_MODES = ("FINAL", "CONTINUOUS")
WIDTH = 100  # hidden units per layer

# --- data -------------------------------------------------------------------------------


def sample_initial_states(key: jax.Array, n: int, n_bodies: int) -> jax.Array:
    """``(n, 1+P, 2)`` states: entries U(-1, 1), body angles ``pi + u * pi / 6`` from the same u."""
    draw = jax.random.uniform(key, (n, 1 + n_bodies, 2), jnp.float32, -1.0, 1.0)
    return draw.at[:, 1:, 0].set(math.pi + draw[:, 1:, 0] * (math.pi / 6))


def sample_data(key: jax.Array, n_data: int, n_bodies: int) -> tuple[jax.Array, jax.Array]:
    """Draw ``2 * n_data`` states: the first half trains, the second half tests."""
    states = sample_initial_states(key, 2 * n_data, n_bodies)
    return states[:n_data], states[n_data:]


# --- controller -------------------------------------------------------------------------


def init_controller(key: jax.Array, n_bodies: int, width: int = WIDTH) -> list[dict[str, jax.Array]]:
    """Dense 100 tanh -> Dense 100 tanh -> Dense 1 on the flattened state; the last kernel
    starts at zero (as released)."""
    return nn.init_mlp(key, [2 * (1 + n_bodies), width, width, 1], zero_last=True)


def controller(theta: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Force (scalar) for ONE state ``(1+P, 2)``."""
    return nn.mlp(theta, x.reshape(-1))[0]


def n_params(n_bodies: int, width: int = WIDTH) -> int:
    """The controller's parameter count (``init_controller``'s entries)."""
    return 2 * (1 + n_bodies) * width + width + width * width + width + width + 1


# --- loss -------------------------------------------------------------------------------


def loss(xs: jax.Array, us: jax.Array, mode: str = "FINAL") -> jax.Array:
    """``1 - mean cos(angle)`` over batch and bodies; range [0, 2].

    ``xs`` is ``(B, n_steps + 1, 1+P, 2)``. FINAL (used in the paper) takes the last state;
    CONTINUOUS averages over the states ``x_1 ... x_Nt`` as well.
    """
    del us
    angles = xs[:, -1, 1:, 0] if mode == "FINAL" else xs[:, 1:, 1:, 0]
    return 1.0 - jnp.mean(jnp.cos(angles))


def _padded_loss(xs: jax.Array, mode: str, n_bodies) -> jax.Array:
    """``loss`` when bodies beyond ``n_bodies`` are padding (their angle is 0: ``1 - cos = 0``)."""
    angles = xs[:, -1, 1:, 0] if mode == "FINAL" else xs[:, 1:, 1:, 0]
    return jnp.sum(1.0 - jnp.cos(angles)) / (angles.size // angles.shape[-1] * n_bodies)


def loss_mode(options) -> str:
    """The ``loss`` option (FINAL by default); ValueError for another."""
    mode = options.get("loss", "FINAL")
    if mode not in LOSS_MODES:
        raise ValueError(f"unknown loss mode {mode!r}; allowed: {', '.join(LOSS_MODES)}")
    return mode


# --- tasks ------------------------------------------------------------------------------


def make_task(step: Callable, n_steps: int, n_bodies: int, options) -> Task:
    """The task of ``n_bodies`` bodies moved by ``step(x, u)`` (one sample)."""
    mode = loss_mode(options)
    n_bodies = int(n_bodies)
    return Task(
        step=step,
        controller=controller,
        init_controller=partial(init_controller, n_bodies=n_bodies),
        loss=lambda xs, us: (loss(xs, us, mode), {}),
        sample_data=partial(sample_data, n_bodies=n_bodies),
        n_steps=n_steps,
    )


def make_padded_task(step_of: Callable, n_steps: int, n_bodies, max_bodies: int, options) -> Task:
    """The task at ``n_bodies`` (traced) with every array shaped for ``max_bodies`` bodies.

    ``step_of(real)`` is the problem's step where the bodies with ``real`` (bool ``(max_bodies,)``)
    False are padding: they rest at angle 0, add nothing to the cart and stay exactly zero. The
    network's input weights for them start at zero and, seeing zero inputs, receive zero
    gradients, so they stay zero under every optimizer. Results equal ``make_task``'s up to
    float32 rounding.
    """
    mode = loss_mode(options)
    real = jnp.arange(max_bodies) < n_bodies
    index = lambda: jnp.clip(jnp.asarray(n_bodies, jnp.int32) - 1, 0, max_bodies - 1)  # noqa: E731

    def init(key):
        candidates = []
        for p in range(1, max_bodies + 1):
            theta = init_controller(key, p)
            first = jnp.zeros((2 * (1 + max_bodies), theta[0]["w"].shape[1]), theta[0]["w"].dtype)
            theta[0] = {"w": first.at[: 2 * (1 + p)].set(theta[0]["w"]), "b": theta[0]["b"]}
            candidates.append(theta)
        return jax.tree.map(lambda *leaves: jnp.stack(leaves)[index()], *candidates)

    def data(key, n_data):
        parts = sample_data(key, n_data, int(n_bodies))
        pad = ((0, 0), (0, max_bodies - int(n_bodies)), (0, 0))
        return tuple(jnp.pad(part, pad) for part in parts)

    counts = jnp.asarray([n_params(p) for p in range(1, max_bodies + 1)])
    return Task(
        step=step_of(real),
        controller=controller,
        init_controller=init,
        loss=lambda xs, us: (_padded_loss(xs, mode, n_bodies), {}),
        sample_data=data,
        n_steps=n_steps,
        n_params=counts[index()],
    )
