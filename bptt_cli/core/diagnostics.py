"""Where along the horizon the gradient explodes or vanishes (docs/model.md §14), as compiled code.

For one controller ``theta`` and a batch of initial states:

- ``grad_norm_R``, ``grad_norm_M`` ``(n_steps + 1,)``: the median over the batch of
  ``|λ_t|₂``, ``λ_t = ∂L/∂x_t`` the gradient that reaches the state at time t through the rest
  of the trajectory with flow R's or M's stop-gradients. A zero perturbation is added to every
  state inside the rollout and the loss is differentiated with respect to it.
- ``jac_physics``, ``jac_closed_loop`` ``(n_steps,)``: the median over the batch of the largest
  singular value of the simulator's state Jacobian ``∂S/∂x`` and of the closed loop's
  ``∂S/∂x + ∂S/∂u·∂N/∂x``, for the step from ``x_t`` (t = 0 … Nt − 1) along the trajectory.
- ``log10_sensitivity_physics``, ``log10_sensitivity_closed_loop`` ``(n_steps,)``: log10 of the
  median over the batch of ``‖J_t ⋯ J_1 J_0‖₂``, the true growth of a perturbation of ``x_0``
  by ``x_{t+1}``. The product is accumulated step by step, rescaled to its largest entry after
  every step (the scale kept in log10), so that it neither overflows nor underflows.

Every Jacobian is built in reverse mode (``jax.jacrev``), the only mode training needs: a step
written with a ``jax.custom_vjp`` (most ODE, implicit and linear-solver libraries) works.

The running products of the per-step norms (log10 growth, an upper bound on the sensitivity)
are taken on the host by :func:`log10_growth`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bptt_cli.core import flows
from bptt_cli.core.task import Task

PyTree = Any
Array = jax.Array
N_STATES = 32  # docs/model.md §14: the first 32 test states
COLUMNS = (
    "grad_norm_R",
    "grad_norm_M",
    "jac_physics",
    "jac_closed_loop",
    "log10_growth_physics",
    "log10_growth_closed_loop",
    "log10_sensitivity_physics",
    "log10_sensitivity_closed_loop",
)


def _largest_singular_value(jacobian: Array, size: int) -> Array:
    return jnp.linalg.svd(jacobian.reshape(size, size), compute_uv=False)[0]


def diagnose(task: Task, theta: PyTree, x0: Array, unroll: int = 1) -> dict[str, Array]:
    """The diagnostics of ``theta`` on the batch ``x0 (B, ...)`` (see the module docstring)."""
    n_steps, batch = task.n_steps, x0.shape[0]
    size = int(np.prod(x0.shape[1:]))

    def feedback(flow: str) -> Array:
        def loss_of(delta):
            xs, us = flows.rollout(flow, task.controller, task.step, theta, x0, n_steps, delta, unroll)
            return task.loss(xs, us)[0]

        lam = jax.grad(loss_of)(jnp.zeros((n_steps + 1, *x0.shape), x0.dtype))
        return jnp.median(jnp.sqrt(jnp.sum(lam.reshape(n_steps + 1, batch, size) ** 2, axis=-1)), axis=1)

    xs, us = flows.rollout("R", task.controller, task.step, theta, x0, n_steps, unroll=unroll)
    step_jacobians = jax.jacrev(task.step, argnums=(0, 1))
    network_jacobian = jax.jacrev(task.controller, argnums=1)

    def along(carry, inputs):
        # One time step at a time: the Jacobians of a whole horizon would not fit in memory
        # for the larger states (quantum: 64 × 64 per sample and step).
        products, log_scales = carry  # (2, B, size, size) and (2, B): physics, closed loop
        x, u = inputs
        j_x, j_u = jax.vmap(step_jacobians)(x, u)
        j_n = jax.vmap(network_jacobian, in_axes=(None, 0))(theta, x)
        j_x = j_x.reshape(batch, size, size)
        # The closed loop from the same pieces: where dN/dx is exactly 0 it equals the physics.
        j_closed = j_x + j_u.reshape(batch, size, -1) @ j_n.reshape(batch, -1, size)
        products = jnp.stack([j_x, j_closed]) @ products
        scale = jnp.max(jnp.abs(products), axis=(-2, -1))
        scale = jnp.where(scale > 0, scale, 1.0)
        products = products / scale[..., None, None]
        log_scales = log_scales + jnp.log10(scale)
        # ONE batched SVD for all four: jaxlib's CPU SVD splits its batch over XLA's thread pool
        # and blocks until done, so two SVD calls running at once on a 2-thread pool deadlock.
        stacked = jnp.concatenate([j_x, j_closed, products.reshape(2 * batch, size, size)])
        sv = jax.vmap(_largest_singular_value, in_axes=(0, None))(stacked, size).reshape(4, batch)
        with_scale = log_scales + jnp.log10(sv[2:])
        out = (
            jnp.median(sv[0]),
            jnp.median(sv[1]),
            _log10_median(with_scale[0]),
            _log10_median(with_scale[1]),
        )
        return (products, log_scales), out

    eye = jnp.broadcast_to(jnp.eye(size, dtype=x0.dtype), (2, batch, size, size))
    start = (eye, jnp.zeros((2, batch), x0.dtype))
    time_major = (jnp.swapaxes(xs[:, :-1], 0, 1), jnp.swapaxes(us, 0, 1))
    _, (jac_physics, jac_closed_loop, sens_physics, sens_closed_loop) = lax.scan(along, start, time_major)
    return {
        "grad_norm_R": feedback("R"),
        "grad_norm_M": feedback("M"),
        "jac_physics": jac_physics,
        "jac_closed_loop": jac_closed_loop,
        "log10_sensitivity_physics": sens_physics,
        "log10_sensitivity_closed_loop": sens_closed_loop,
    }


def _log10_median(log10_values: Array) -> Array:
    """log10 of the median of ``10 ** log10_values`` without leaving log space (an even count
    averages the two middle values, as ``jnp.median`` does)."""
    ordered = jnp.sort(log10_values)
    n = ordered.shape[0]
    low, high = ordered[(n - 1) // 2], ordered[n // 2]
    # log10((10^low + 10^high) / 2) = high + log10((1 + 10^(low - high)) / 2), low <= high
    return jnp.where(jnp.isfinite(high), high + jnp.log10((1 + 10.0 ** (low - high)) / 2), high)


def log10_growth(jac: np.ndarray) -> np.ndarray:
    """Running product of per-step factors in log10: ``out[t] = Σ_{s ≤ t} log10 jac[s]``."""
    with np.errstate(divide="ignore"):
        return np.cumsum(np.log10(np.asarray(jac, np.float64)), axis=-1)
