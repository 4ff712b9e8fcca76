"""Gradient flows through an unrolled simulation (SPEC §2).

This is the only module that decides where gradients stop. A flow is a static string
(``"R"``, ``"M"``, ``"S"``, ``"C"`` or ``"T<k>"``) closed over by ``jit``: each flow traces its
own program, never a runtime switch that computes every variant.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from bptt_cli.config import Flow, canonical_flow, truncation

PyTree = Any
Array = jax.Array
canonical = canonical_flow  # re-exported: flows.canonical("m") == "M"
__all__ = ["Flow", "canonical", "combine", "cosine", "flow_gradients", "rollout", "value_and_grad"]


def rollout(
    flow: str,
    controller: Callable[[PyTree, Array], Array],
    step: Callable[[Array, Array], Array],
    theta: PyTree,
    x0: Array,
    n_steps: int,
) -> tuple[Array, Array]:
    """Unroll ``x_{i+1} = S(x_i, N(x_i; theta))`` for a batch ``x0 (B, ...)``.

    Forward values are the same for every flow; only the placement of ``stop_gradient``
    differs. ``controller`` and ``step`` act on ONE sample and are vmapped here.

    Returns:
      ``xs (B, n_steps + 1, ...)`` with ``x0`` first, and ``us (B, n_steps, ...)``.
    """
    flow = canonical_flow(flow)
    if flow == "C":
        raise ValueError("flow C combines two gradients; it has no single rollout (use value_and_grad)")
    every = truncation(flow)
    net = jax.vmap(controller, in_axes=(None, 0))
    sim = jax.vmap(step)

    def body(x, i):
        if every is not None:
            # Truncated BPTT: cut the state's whole gradient (network and physics path)
            # before steps k, 2k, ... so that feedback reaches back at most k steps.
            x = jnp.where((i > 0) & (i % every == 0), lax.stop_gradient(x), x)
        # M and S: the network sees the state as data; its input Jacobian dN/dx is cut so
        # that feedback travels only along the physics path (SPEC §2).
        x_net = lax.stop_gradient(x) if flow in ("M", "S") else x
        # S: the simulator's state input is cut too, so no feedback flows through time.
        x_sim = lax.stop_gradient(x) if flow == "S" else x
        u = net(theta, x_net)
        x_next = sim(x_sim, u)
        return x_next, (x_next, u)

    _, (xs, us) = lax.scan(body, x0, jnp.arange(n_steps))
    xs = jnp.concatenate([x0[None], xs], axis=0)
    return jnp.swapaxes(xs, 0, 1), jnp.swapaxes(us, 0, 1)


def combine(g_m: PyTree, g_r: PyTree) -> PyTree:
    """The C rule: ``g_M[j]`` where ``sign(g_M[j]) == sign(g_R[j])``, else 0 (``sign(0) = 0``)."""
    return jax.tree.map(lambda m, r: jnp.where(jnp.sign(m) == jnp.sign(r), m, jnp.zeros_like(m)), g_m, g_r)


def tree_dot(a: PyTree, b: PyTree) -> Array:
    """Sum over all entries of ``a * b``."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def cosine(a: PyTree, b: PyTree) -> Array:
    """Cosine similarity of two pytrees seen as flat vectors (0 when either is zero)."""
    norms = jnp.sqrt(tree_dot(a, a) * tree_dot(b, b))
    return jnp.where(norms > 0, tree_dot(a, b) / jnp.where(norms > 0, norms, 1.0), 0.0)


def flow_gradients(
    flow: str,
    controller: Callable[[PyTree, Array], Array],
    step: Callable[[Array, Array], Array],
    loss: Callable[[Array, Array], tuple[Array, dict[str, Array]]],
    theta: PyTree,
    x0: Array,
    n_steps: int,
) -> tuple[tuple[Array, dict[str, Array]], PyTree, Array]:
    """Loss, the update a flow hands to the optimizer, and cos(g_M, g_R).

    ``loss(xs, us) -> (scalar, aux)``. For flow C the update is ``combine(g_M, g_R)`` and the
    cosine is between the two gradients; for every other flow the cosine is NaN.
    """
    flow = canonical_flow(flow)

    def objective(flow_name, params):
        xs, us = rollout(flow_name, controller, step, params, x0, n_steps)
        return loss(xs, us)

    if flow != "C":
        value, grad = jax.value_and_grad(partial(objective, flow), has_aux=True)(theta)
        return value, grad, jnp.asarray(jnp.nan, jnp.result_type(float))
    value, g_r = jax.value_and_grad(partial(objective, "R"), has_aux=True)(theta)
    _, g_m = jax.value_and_grad(partial(objective, "M"), has_aux=True)(theta)
    return value, combine(g_m, g_r), cosine(g_m, g_r)


def value_and_grad(
    flow: str | Flow,
    controller: Callable[[PyTree, Array], Array],
    step: Callable[[Array, Array], Array],
    loss: Callable[[Array, Array], Array],
    params: PyTree,
    x0: Array,
    n_steps: int,
) -> tuple[Array, PyTree]:
    """The method as a library: loss and the flow's update for your own simulator.

    Args:
      flow: ``"R"``, ``"M"``, ``"S"``, ``"C"``, ``"T<k>"`` or a ``Flow``.
      controller: ``controller(params, x) -> u`` for ONE sample.
      step: ``step(x, u) -> x_next`` for ONE sample.
      loss: ``loss(xs, us) -> scalar`` with ``xs (B, n_steps + 1, ...)`` (x0 included) and
        ``us (B, n_steps, ...)``.
      params: the controller's parameters (any pytree).
      x0: a batch of initial states ``(B, ...)``.
      n_steps: number of simulator steps.

    Returns:
      ``(loss_value, grads)``; for C, ``grads`` is the combined update (SPEC §2).
    """

    def with_aux(xs, us):
        return loss(xs, us), {}

    (value, _), grads, _ = flow_gradients(
        canonical_flow(flow), controller, step, with_aux, params, x0, n_steps
    )
    return value, grads
