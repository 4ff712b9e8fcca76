"""The scalar toy problems of the paper's Figs 1 and 2 (docs/model.md §10, a reconstruction).

Fig. 1 (:func:`fig1_fields`): a two-parameter "network" ``N(x; θ) = θ1·x² + θ2·x`` drives the
simulator ``S(x, c) = x + c`` for 4 steps from ``x0 = −0.3`` towards the target 2 with
``L = ½(x4 − 2)²``. On a grid over ``θ ∈ [−4, 4]²`` we record the loss and the descent directions
of the regular (R) and modified (M) gradient flows, both computed by
:func:`bptt_cli.core.flows.value_and_grad` — the same code path the experiments train with.

Fig. 2 (:func:`fig2_fields`, :func:`fig2_paths`): the loss ``L = θ1² + θ2²`` with three update
fields handed to Adam in place of the gradient: the gradient itself ("divergence"), the gradient
plus a rotation ("rotation"), and the C rule of docs/model.md §2 applied to those two ("combination").

:func:`run` writes three tidy CSVs; :mod:`bptt_cli.plotting.toy` draws them. In the CSVs the
columns ``descent_theta1``/``descent_theta2`` always hold the *negated* field, i.e. the direction
a plain gradient-descent step would move θ.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from bptt_cli import results
from bptt_cli.core import flows

# --- Fig. 1 constants (docs/model.md §10) ---
FIG1_X0 = -0.3
FIG1_TARGET = 2.0
FIG1_N_STEPS = 4
FIG1_RANGE = (-4.0, 4.0)
FIG1_FLOWS = ("R", "M")

# --- Fig. 2 constants (docs/model.md §10) ---
FIG2_START = (2.0, 4.0)
FIG2_RANGE = (-5.0, 5.0)
FIG2_LEARNING_RATE = 0.1
FIG2_B1 = 0.9
FIG2_B2 = 0.999
FIG2_N_STEPS = 200
FIG2_ROTATION = 2.0  # the rotation added to the gradient is FIG2_ROTATION · (2θ2, −2θ1)
FIG2_FIELDS = ("divergence", "rotation", "combination")

FILES = ("fig1_fields.csv", "fig2_fields.csv", "fig2_paths.csv")


def _grid(lo: float, hi: float, n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened regular ``n_grid × n_grid`` grid: ``theta1``, ``theta2`` each ``(n_grid²,)``,
    ``theta1`` varying fastest (row-major over ``(theta2, theta1)``, the layout of ``meshgrid``)."""
    axis = np.linspace(lo, hi, n_grid)
    t1, t2 = np.meshgrid(axis, axis)
    return t1.ravel(), t2.ravel()


# ---------------------------------------------------------------------------------------------
# Fig. 1: loss landscape and the R / M fields
# ---------------------------------------------------------------------------------------------


def fig1_controller(theta: jax.Array, x: jax.Array) -> jax.Array:
    """``N(x; θ) = θ1·x² + θ2·x`` for ONE sample; ``theta (2,)``, ``x (1,)`` -> ``c (1,)``."""
    return theta[0] * x**2 + theta[1] * x


def fig1_step(x: jax.Array, c: jax.Array) -> jax.Array:
    """``S(x, c) = x + c`` for ONE sample; ``x (1,)``, ``c (1,)`` -> ``(1,)``."""
    return x + c


def fig1_loss(xs: jax.Array, us: jax.Array) -> jax.Array:
    """``½(x4 − 2)²`` averaged over the batch; ``xs (B, n_steps + 1, 1)``, ``us`` unused."""
    del us
    return 0.5 * jnp.mean((xs[:, -1, 0] - FIG1_TARGET) ** 2)


def fig1_point(flow: str, theta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss ``()`` and the flow's gradient ``(2,)`` at one ``theta (2,)``."""
    x0 = jnp.full((1, 1), FIG1_X0, dtype=theta.dtype)  # a batch of one sample with state (1,)
    return flows.value_and_grad(flow, fig1_controller, fig1_step, fig1_loss, theta, x0, FIG1_N_STEPS)


# Compiled once per flow (static) and grid size: ``thetas (n, 2)`` -> ``loss (n,)``, ``grads (n, 2)``.
_fig1_batch = jax.jit(jax.vmap(fig1_point, in_axes=(None, 0)), static_argnums=0)


def _field_frame(
    name: str, t1: np.ndarray, t2: np.ndarray, loss: np.ndarray, field: np.ndarray
) -> pd.DataFrame:
    """Tidy rows of one field on the grid; the stored direction is the descent one, ``-field``."""
    return pd.DataFrame(
        {
            "field": name,
            "theta1": t1,
            "theta2": t2,
            "loss": loss,
            "descent_theta1": -field[:, 0],
            "descent_theta2": -field[:, 1],
        }
    )


def fig1_fields(n_grid: int = 81) -> pd.DataFrame:
    """Loss and the descent directions −R and −M on an ``n_grid × n_grid`` grid over [−4, 4]².

    Returns a long frame with one row per (field, grid point) and the columns ``field``
    (``"R"`` or ``"M"``), ``theta1``, ``theta2``, ``loss``, ``descent_theta1``,
    ``descent_theta2`` (the negated gradient of that flow).
    """
    t1, t2 = _grid(*FIG1_RANGE, n_grid)
    thetas = jnp.stack([jnp.asarray(t1), jnp.asarray(t2)], axis=1).astype(jnp.result_type(float))
    frames = []
    for flow in FIG1_FLOWS:
        loss, grad = _fig1_batch(flow, thetas)
        loss, grad = np.asarray(loss, dtype=float), np.asarray(grad, dtype=float)
        frames.append(_field_frame(flow, t1, t2, loss, grad))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Fig. 2: Adam driven by a divergent, a rotated and a combined field
# ---------------------------------------------------------------------------------------------


def fig2_loss(theta: jax.Array) -> jax.Array:
    """``L = θ1² + θ2²`` for ``theta (2,)``."""
    return jnp.sum(theta**2)


def fig2_field(name: str, theta: jax.Array) -> jax.Array:
    """The update handed to Adam at ``theta (2,)``: ``"divergence"`` is the gradient ``2θ``;
    ``"rotation"`` adds ``2·(2θ2, −2θ1)``; ``"combination"`` is the C rule (docs/model.md §2) with the
    rotated field in M's role and the gradient in R's."""
    grad = jax.grad(fig2_loss)(theta)
    if name == "divergence":
        return grad
    rotated = grad + FIG2_ROTATION * jnp.stack([2.0 * theta[1], -2.0 * theta[0]])
    if name == "rotation":
        return rotated
    if name == "combination":
        return flows.combine(rotated, grad)
    raise ValueError(f"unknown field {name!r}; allowed: {', '.join(FIG2_FIELDS)}")


_fig2_batch = jax.jit(jax.vmap(fig2_field, in_axes=(None, 0)), static_argnums=0)


def fig2_fields(n_grid: int = 41) -> pd.DataFrame:
    """The three fields on an ``n_grid × n_grid`` grid over [−5, 5]².

    Returns a long frame with the columns ``field``, ``theta1``, ``theta2``, ``loss``,
    ``descent_theta1``, ``descent_theta2`` (the negated field).
    """
    t1, t2 = _grid(*FIG2_RANGE, n_grid)
    thetas = jnp.stack([jnp.asarray(t1), jnp.asarray(t2)], axis=1).astype(jnp.result_type(float))
    loss = np.asarray(jax.vmap(fig2_loss)(thetas), dtype=float)
    frames = []
    for name in FIG2_FIELDS:
        field = np.asarray(_fig2_batch(name, thetas), dtype=float)
        frames.append(_field_frame(name, t1, t2, loss, field))
    return pd.concat(frames, ignore_index=True)


def fig2_path(name: str, n_steps: int = FIG2_N_STEPS) -> tuple[jax.Array, jax.Array]:
    """Adam (lr 0.1, β 0.9/0.999) from (2, 4), fed ``fig2_field(name, θ)`` instead of the gradient.

    Returns ``thetas (n_steps + 1, 2)`` (the start first) and ``losses (n_steps + 1,)``.
    """
    optimizer = optax.adam(learning_rate=FIG2_LEARNING_RATE, b1=FIG2_B1, b2=FIG2_B2)
    theta0 = jnp.asarray(FIG2_START, dtype=jnp.result_type(float))

    def body(carry, _):
        theta, opt_state = carry
        updates, opt_state = optimizer.update(fig2_field(name, theta), opt_state, theta)
        theta = optax.apply_updates(theta, updates)
        return (theta, opt_state), theta

    _, thetas = jax.lax.scan(body, (theta0, optimizer.init(theta0)), length=n_steps)
    thetas = jnp.concatenate([theta0[None], thetas], axis=0)
    return thetas, jax.vmap(fig2_loss)(thetas)


_fig2_path_jit = jax.jit(fig2_path, static_argnums=(0, 1))


def fig2_paths(n_steps: int = FIG2_N_STEPS) -> pd.DataFrame:
    """One row per (field, step) with the columns ``field``, ``step`` (0 = start, before any
    update), ``theta1``, ``theta2``, ``loss``."""
    frames = []
    for name in FIG2_FIELDS:
        thetas, losses = _fig2_path_jit(name, n_steps)
        thetas = np.asarray(thetas, dtype=float)
        frames.append(
            pd.DataFrame(
                {
                    "field": name,
                    "step": np.arange(n_steps + 1),
                    "theta1": thetas[:, 0],
                    "theta2": thetas[:, 1],
                    "loss": np.asarray(losses, dtype=float),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def run(folder: Path, force: bool = False) -> list[Path]:
    """Compute both toy figures' data and write ``fig1_fields.csv``, ``fig2_fields.csv`` and
    ``fig2_paths.csv`` atomically into ``folder``.

    Returns the paths written; when all three exist and ``force`` is false, writes nothing and
    returns ``[]``.
    """
    folder = Path(folder)
    paths = [folder / name for name in FILES]
    if not force and all(path.exists() for path in paths):
        return []
    frames = (fig1_fields(), fig2_fields(), fig2_paths())
    for path, frame in zip(paths, frames, strict=True):
        results.write_csv(path, frame)
    return paths
