"""Boundary control of the 1-D heat equation: a worked example of bringing your own simulator.

A rod on [0, 1] holds a temperature ``x`` at ``n_points`` interior grid points. Its right end is
held at 0; the controller sets the temperature ``u`` of its left end at every step, seeing the
whole rod. The goal is the steady profile ``1 - s`` (what holding ``u = 1`` forever gives)
reached as fast as possible from a random smooth start, so the controller should overheat the
end first and then back off, by how much depending on the state.

The complexity level is the rod's diffusion time ``tau = L² / kappa`` in units of the horizon:
at ``tau = 1`` the rod settles within the horizon; at ``tau = 30`` a control reaches the far end
only long after it was set: credit for late states lies many steps back (long-horizon BPTT).
It is only a number, so every level shares one compiled program.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from bptt_cli import ProblemDef, Task, nn

# --- params -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """Constants. ``diffusion_time`` may be a traced scalar (the level, under ``jit``).

    32 points resolve the four smooth modes of the initial rods. Backward Euler is stable for
    any step, so ``dt = t_end / n_steps`` is chosen for the horizon, not for the grid:
    ``r = dt / (tau h²) = 17 / tau``, where explicit Euler would need ``r <= 1/2`` (35 times the
    steps at ``tau = 1``). The small control cost keeps the early overheating finite.
    """

    diffusion_time: Any = 10.0  # tau = L² / kappa with L = 1 and a horizon of t_end = 1
    n_points: int = 32  # interior points; h = 1 / (n_points + 1)
    n_steps: int = 64
    t_end: float = 1.0
    control_cost: float = 1e-2  # weight of mean u² in the loss


def grid(params: Params) -> jax.Array:
    """Positions ``s (n_points,)`` of the interior points."""
    return jnp.arange(1, params.n_points + 1, dtype=jnp.float32) / (params.n_points + 1)


# --- physics ----------------------------------------------------------------------------


def step(x: jax.Array, u: jax.Array, params: Params = Params()) -> jax.Array:
    """One backward Euler step for ONE rod: ``x (n_points,)``, scalar ``u`` -> ``(n_points,)``.

    Solves ``(I - r·Lap) x' = x + r·u·e_0`` with ``Lap`` the Dirichlet Laplacian stencil
    (1, -2, 1) and the boundary values ``u`` (left, at the new time) and 0 (right).
    """
    n, dtype = params.n_points, x.dtype
    h = 1.0 / (n + 1)
    r = jnp.asarray(params.t_end / params.n_steps / h**2, dtype) / params.diffusion_time
    off = jnp.full((n,), -r, dtype)
    lower, upper = off.at[0].set(0.0), off.at[-1].set(0.0)
    diag = jnp.full((n,), 1.0 + 2.0 * r, dtype)
    rhs = jnp.asarray(x).at[0].add(r * jnp.reshape(u, ()).astype(dtype))
    return jax.lax.linalg.tridiagonal_solve(lower, diag, upper, rhs[:, None])[:, 0]


# --- data -------------------------------------------------------------------------------


def sample_data(key: jax.Array, n_data: int, params: Params = Params()) -> tuple[jax.Array, jax.Array]:
    """``2 * n_data`` smooth random rods ``Σ_{k=1..4} a_k sin(kπs) / k``, ``a_k ~ N(0, 1)``:
    the first half trains, the second tests. Independent of the level, as the contract asks."""
    modes = jnp.arange(1, 5, dtype=jnp.float32)
    shapes = jnp.sin(jnp.pi * modes[:, None] * grid(params)[None, :]) / modes[:, None]
    rods = jax.random.normal(key, (2 * n_data, 4), jnp.float32) @ shapes
    return rods[:n_data], rods[n_data:]


# --- controller -------------------------------------------------------------------------


def init_controller(key: jax.Array, params: Params = Params()) -> list[dict[str, jax.Array]]:
    """MLP n_points -> 64 tanh -> 64 tanh -> 1; the last kernel is zero, so ``u`` starts at 0."""
    return nn.init_mlp(key, [params.n_points, 64, 64, 1], zero_last=True)


def controller(theta: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """The left boundary temperature (a scalar) for ONE rod ``(n_points,)``."""
    return nn.mlp(theta, x)[0]


# --- loss -------------------------------------------------------------------------------

LOSSES = ("CONTINUOUS", "FINAL")


def loss(xs: jax.Array, us: jax.Array, mode: str, params: Params = Params()) -> tuple[jax.Array, jax.Array]:
    """``(total, tracking)`` for ``xs (B, n_steps + 1, n_points)`` (``x0`` first), ``us (B, n_steps)``.

    tracking = mean squared distance to ``1 - s`` over the batch, the points and the states
    ``x_1 … x_Nt`` (CONTINUOUS) or the last state only (FINAL); total = tracking +
    control_cost · mean ``u²``.
    """
    target = 1.0 - grid(params)
    states = xs[:, 1:] if mode == "CONTINUOUS" else xs[:, -1:]
    tracking = jnp.mean((states - target[None, None, :]) ** 2)
    return tracking + params.control_cost * jnp.mean(us**2), tracking


# --- problem descriptor -----------------------------------------------------------------


def _make_task(diffusion_time, options) -> Task:
    """``diffusion_time`` arrives as a traced float32 scalar under ``jit``: compute with it only."""
    params = Params(diffusion_time=diffusion_time)

    def task_loss(xs, us):
        total, tracking = loss(xs, us, options["loss"], params)
        return total, {"tracking_loss": tracking}

    return Task(
        step=partial(step, params=params),
        controller=controller,
        init_controller=partial(init_controller, params=params),
        loss=task_loss,
        sample_data=partial(sample_data, params=params),
        n_steps=params.n_steps,
        control_shape=(),
    )


PROBLEM = ProblemDef(
    name="heat",
    level_key="diffusion_time",
    level_type=float,
    level_is_static=False,
    make_task=_make_task,
    default_options={"loss": "CONTINUOUS"},
    option_choices={"loss": LOSSES},
    aux_metrics=("tracking_loss",),
    valid_level=lambda tau: tau > 0,
    valid_level_text="a diffusion time > 0 (in horizons)",
)
