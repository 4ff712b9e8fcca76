"""Guidance by repulsion: two drivers herd four evaders towards the origin (docs/model.md §6).

State of one sample: ``(D + E, 2, 2)`` = agents (drivers first) × (position, velocity) × (x, y),
with D = 2 drivers and E = 4 evaders. The control of one sample is ``(D, 2)``: per driver a
radial gain ``a`` and a tangential gain ``b``. The complexity level is the regularization
coefficient ``reg_coef`` of the loss; it changes no shape, so every level shares one program.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bptt_cli import nn
from bptt_cli.core.task import ProblemDef, Task
from bptt_cli.problems.params import GuidanceParams

# --- params -----------------------------------------------------------------------------

# Declared in params.py with the other drawn problems' constants: the drawings read them there.
Params = GuidanceParams


# --- physics ----------------------------------------------------------------------------


def _others(n: int) -> np.ndarray:
    """Static ``(n, n-1)`` index array: row i lists every agent except i, in order."""
    return np.array([[j for j in range(n) if j != i] for i in range(n)], dtype=np.int32).reshape(n, n - 1)


def _norm(r: jax.Array) -> jax.Array:
    """``|r|`` over the last axis, exact for r ≠ 0, with a zero (finite) gradient at r = 0.

    Two different agents may sit on the same point; plain ``sqrt`` has an infinite derivative
    there, which would turn the whole backward pass into NaN. The inner ``where`` keeps the
    ``sqrt`` away from 0, the outer one restores the exact value 0.
    """
    sq = jnp.sum(r * r, axis=-1)
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def step(x: jax.Array, u: jax.Array, params: Params = Params()) -> jax.Array:
    """One explicit Euler step for ONE sample: ``x (D+E, 2, 2)``, ``u (D, 2)`` -> ``(D+E, 2, 2)``.

    Position and velocity are both advanced from the old state (docs/model.md §6). Self-interactions are
    left out through static index arrays rather than computed and masked, so that no ``|0|``
    ever enters the graph for an agent paired with itself.
    """
    n_d, n_e = params.n_drivers, params.n_evaders
    p = params
    pos, vel = x[:, 0], x[:, 1]
    pos_d, pos_e = pos[:n_d], pos[n_d:]
    vel_d, vel_e = vel[:n_d], vel[n_d:]

    # Drivers: steered around the evaders' centre X (a sum, not a mean, as released).
    centre = jnp.sum(pos_e, axis=0)
    w = pos_d - centre[None]
    w_perp = jnp.stack([-w[:, 1], w[:, 0]], axis=-1)
    radial, tangential = u[:, 0:1], u[:, 1:2]
    r_dd = pos_d[:, None] - pos_d[_others(n_d)]
    dist_dd = p.softening + _norm(r_dd)
    driver_push = jnp.sum(r_dd / (dist_dd**2)[..., None], axis=1)
    acc_d = radial * w + tangential * w_perp - p.driver_damping * vel_d + p.driver_repulsion * driver_push

    # Evaders: repelled by every driver, damped, and coupled to the other evaders.
    r_ed = pos_e[:, None] - pos_d[None]
    dist_ed = p.softening + _norm(r_ed)
    flee = jnp.sum(r_ed / (dist_ed**2)[..., None], axis=1)
    r_ee = pos_e[:, None] - pos_e[_others(n_e)]
    dist_ee = p.softening + _norm(r_ee)
    flock_gain = -(p.flock_distance / dist_ee - 1.0) / dist_ee
    flock = jnp.sum(flock_gain[..., None] * r_ee, axis=1)
    acc_e = p.evader_repulsion * flee - p.evader_damping * vel_e + p.evader_cohesion * flock

    acc = jnp.concatenate([acc_d, acc_e], axis=0)
    return jnp.stack([pos + p.dt * vel, vel + p.dt * acc], axis=1)


# --- data -------------------------------------------------------------------------------


def _annulus(key: jax.Array, shape: tuple[int, ...], r_min: float, r_max: float) -> jax.Array:
    """Points ``shape + (2,)``: angle U(0, 2π) and radius U(r_min, r_max), drawn independently."""
    k_angle, k_radius = jax.random.split(key)
    angle = jax.random.uniform(k_angle, shape, jnp.float32, 0.0, 2.0 * math.pi)
    radius = jax.random.uniform(k_radius, shape, jnp.float32, r_min, r_max)
    return radius[..., None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)


def sample_initial_states(key: jax.Array, n: int, params: Params = Params()) -> jax.Array:
    """``(n, D+E, 2, 2)`` float32 states at rest (docs/model.md §6).

    Drivers lie in the annulus 3 ≤ r ≤ 4; a group centre in the annulus 1 ≤ r ≤ 2; each evader
    at that centre plus an offset U(−0.5, 0.5)² per coordinate.
    """
    k_drivers, k_centre, k_offset = jax.random.split(key, 3)
    drivers = _annulus(k_drivers, (n, params.n_drivers), 3.0, 4.0)
    centre = _annulus(k_centre, (n, 1), 1.0, 2.0)
    offsets = jax.random.uniform(k_offset, (n, params.n_evaders, 2), jnp.float32, -0.5, 0.5)
    positions = jnp.concatenate([drivers, centre + offsets], axis=1)
    return jnp.stack([positions, jnp.zeros_like(positions)], axis=2)


def sample_data(key: jax.Array, n_data: int, params: Params = Params()) -> tuple[jax.Array, jax.Array]:
    """Draw ``2 * n_data`` states: the first half trains, the second half tests."""
    states = sample_initial_states(key, 2 * n_data, params)
    return states[:n_data], states[n_data:]


# --- controller -------------------------------------------------------------------------


def init_controller(
    key: jax.Array, width: int = 100, params: Params = Params()
) -> list[dict[str, jax.Array]]:
    """Dense 100 tanh -> Dense 100 tanh -> Dense 2D; the last kernel starts at zero (as released)."""
    n_inputs = (params.n_drivers + params.n_evaders) * 4
    return nn.init_mlp(key, [n_inputs, width, width, 2 * params.n_drivers], zero_last=True)


def controller(theta: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Gains ``(D, 2)`` = per driver (radial, tangential) for ONE state ``(D+E, 2, 2)``."""
    return nn.mlp(theta, x.reshape(-1)).reshape(-1, 2)


# --- loss -------------------------------------------------------------------------------


def loss(
    xs: jax.Array, us: jax.Array, reg_coef: float | jax.Array, params: Params = Params()
) -> tuple[jax.Array, jax.Array]:
    """CONTINUOUS herding loss (docs/model.md §6); returns ``(total, physics)``.

    ``xs`` is ``(B, n_steps + 1, D+E, 2, 2)`` with ``x0`` included, ``us`` is ``(B, n_steps, D, 2)``.
    physics = mean over batch, t = 1 … Nt, evaders and coordinates of the squared evader
    positions; regularization = mean of ``us²``; total = physics + reg_coef · regularization.
    """
    evader_pos = xs[:, 1:, params.n_drivers :, 0, :]
    physics = jnp.mean(evader_pos**2)
    regularization = jnp.mean(us**2)
    total = physics + jnp.asarray(reg_coef, physics.dtype) * regularization
    return total, physics


# --- problem descriptor -----------------------------------------------------------------


def _make_task(reg_coef, options) -> Task:
    """``reg_coef`` only enters the loss (a traced scalar under ``jit``: one program for all)."""
    del options
    params = Params()

    def task_loss(xs, us):
        total, physics = loss(xs, us, reg_coef, params)
        return total, {"physics_loss": physics}

    return Task(
        step=partial(step, params=params),
        controller=controller,
        init_controller=partial(init_controller, params=params),
        loss=task_loss,
        sample_data=partial(sample_data, params=params),
        n_steps=params.n_steps,
        control_shape=(params.n_drivers, 2),
    )


PROBLEM = ProblemDef(
    name="guidance",
    level_key="reg_coef",
    level_type=float,
    level_is_static=False,
    make_task=_make_task,
    default_options={},
    aux_metrics=("physics_loss",),
    valid_level=lambda rc: rc >= 0,
    valid_level_text="a regularization coefficient >= 0",
    drawing="bptt_cli.plotting.drawings:guidance",
)
