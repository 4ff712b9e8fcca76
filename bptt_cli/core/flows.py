"""Gradient flows through an unrolled simulation (docs/model.md §2).

This is the only module that decides where gradients stop. A flow is given either as a static
name (``"R"``, ``"M"``, ``"S"``, ``"C"`` or ``"T<k>"``), closed over by ``jit`` so that each
flow traces its own, leanest program, or as :class:`Gates`: the same cuts written as per-row
data, so that runs of different flows can share one vmapped program (a GPU runs the extra rows
almost for free). Both give the same forward values, and the same gradients up to float32
rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bptt_cli.core.flow_names import FLOW_ORDER, Flow, canonical_flow, flow_rank, truncation

PyTree = Any
Array = jax.Array
canonical = canonical_flow  # re-exported: flows.canonical("m") == "M"
__all__ = [
    "FLOW_ORDER",
    "Flow",
    "Gates",
    "canonical",
    "combine",
    "cosine",
    "flow_gradients",
    "flow_rank",
    "gates",
    "rollout",
    "value_and_grad",
]


class Gates(NamedTuple):
    """A flow as data: which gradient paths are open (traced per row under ``vmap``).

    Attributes:
      net: the network's input Jacobian ∂N/∂x is kept (R, T<k>) or cut (M, S).
      sim: the simulator's state input keeps its gradient (all but S).
      every: truncation period k of T<k>; 0 means never.
      combined: the row is C: it needs g_R and g_M and hands on their combination.
    """

    net: Any
    sim: Any
    every: Any
    combined: Any


def gates(flow: str) -> Gates:
    """The gates of a flow name, as NumPy scalars (C's first pass is R)."""
    flow = canonical_flow(flow)
    return Gates(
        net=np.bool_(flow not in ("M", "S")),
        sim=np.bool_(flow != "S"),
        every=np.int32(truncation(flow) or 0),
        combined=np.bool_(flow == "C"),
    )


_M_GATES = gates("M")


def _keep(x: Array, keep) -> Array:
    """``x`` whose gradient passes where ``keep`` and stops elsewhere.

    ``keep`` may be a Python bool (a static cut) or a traced bool. The traced form selects
    between ``x`` and ``stop_gradient(x)``: forward values are identical, and the backward pass
    selects the cotangent instead of multiplying it by 0, so that a cut path whose gradient
    overflowed cannot turn into ``0 · inf = NaN``.
    """
    if isinstance(keep, bool):
        return x if keep else lax.stop_gradient(x)
    return jnp.where(keep, x, lax.stop_gradient(x))


def rollout(
    flow: str | Gates,
    controller: Callable[[PyTree, Array], Array],
    step: Callable[[Array, Array], Array],
    theta: PyTree,
    x0: Array,
    n_steps: int,
    perturbation: Array | None = None,
    unroll: int = 1,
) -> tuple[Array, Array]:
    """Unroll ``x_{i+1} = S(x_i, N(x_i; theta))`` for a batch ``x0 (B, ...)``.

    Forward values are the same for every flow; only the placement of ``stop_gradient``
    differs. ``controller`` and ``step`` act on ONE sample and are vmapped here.

    Args:
      flow: a flow name other than C, or :class:`Gates` (``combined`` is ignored here).
      perturbation: optional ``(n_steps + 1, B, ...)`` added to the states ``x_0 ... x_Nt``;
        zero in value, it makes ``∂L/∂x_t`` the gradient with respect to it (docs/model.md §14).
      unroll: the horizon scan's unroll factor (a speed setting; results are unchanged).

    Returns:
      ``xs (B, n_steps + 1, ...)`` with ``x0`` first, and ``us (B, n_steps, ...)``.
    """
    if isinstance(flow, Gates):
        net_on, sim_on, every = flow.net, flow.sim, flow.every
    else:
        flow = canonical_flow(flow)
        if flow == "C":
            raise ValueError("flow C combines two gradients; it has no single rollout (use value_and_grad)")
        static = gates(flow)  # as Python bools: the cuts are traced into this flow's own program
        net_on, sim_on, every = bool(static.net), bool(static.sim), truncation(flow)
    net = jax.vmap(controller, in_axes=(None, 0))
    sim = jax.vmap(step)

    def body(x, inputs):
        i, delta = inputs
        if delta is not None:
            x = x + delta
        seen = x  # the state at time i as the loss sees it
        if every is not None:
            # Truncated BPTT: cut the state's whole gradient (network and physics path)
            # before steps k, 2k, ... so that feedback reaches back at most k steps.
            cut = (i > 0) & (i % jnp.maximum(every, 1) == 0) & (every > 0)
            x = jnp.where(cut, lax.stop_gradient(x), x)
        # M and S: the network sees the state as data; its input Jacobian dN/dx is cut so
        # that feedback travels only along the physics path (docs/model.md §2).
        u = net(theta, _keep(x, net_on))
        # S: the simulator's state input is cut too, so no feedback flows through time.
        x_next = sim(_keep(x, sim_on), u)
        return x_next, (seen, u)

    deltas = None if perturbation is None else perturbation[:-1]
    x_last, (xs, us) = lax.scan(body, x0, (jnp.arange(n_steps), deltas), unroll=unroll)
    if perturbation is not None:
        x_last = x_last + perturbation[-1]
    xs = jnp.concatenate([xs, x_last[None]], axis=0)
    return jnp.swapaxes(xs, 0, 1), jnp.swapaxes(us, 0, 1)


def combine(g_m: PyTree, g_r: PyTree) -> PyTree:
    """The C rule: ``g_M[j]`` where ``sign(g_M[j]) == sign(g_R[j])``, else 0 (``sign(0) = 0``)."""
    return jax.tree.map(lambda m, r: jnp.where(jnp.sign(m) == jnp.sign(r), m, jnp.zeros_like(m)), g_m, g_r)


def kept_fraction(g_m: PyTree, g_r: PyTree, n_params=None) -> Array:
    """Fraction of parameter entries where ``sign(g_M) == sign(g_R)`` (what C keeps, docs/model.md §14).

    ``n_params`` counts the real entries when the parameters carry padding (padded entries are
    exactly zero in both gradients, so they always agree and are subtracted here).
    """
    leaves = list(zip(jax.tree.leaves(g_m), jax.tree.leaves(g_r), strict=True))
    agree = sum(jnp.sum(jnp.sign(m) == jnp.sign(r)) for m, r in leaves)
    total = sum(m.size for m, _ in leaves)
    if n_params is None:
        return agree / total
    return (agree - (total - n_params)) / n_params


def tree_dot(a: PyTree, b: PyTree) -> Array:
    """Sum over all entries of ``a * b``."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def cosine(a: PyTree, b: PyTree) -> Array:
    """Cosine similarity of two pytrees seen as flat vectors (0 when either is zero)."""
    norms = jnp.sqrt(tree_dot(a, a) * tree_dot(b, b))
    return jnp.where(norms > 0, tree_dot(a, b) / jnp.where(norms > 0, norms, 1.0), 0.0)


class FlowUpdate(NamedTuple):
    """What one minibatch's flow computation hands back."""

    value: tuple[Array, dict[str, Array]]  # the loss and its aux parts
    update: PyTree  # what the optimizer receives (C: the combination)
    cos_mr: Array  # cos(g_M, g_R) for C rows, NaN otherwise
    kept: Array  # C's kept fraction for C rows, NaN otherwise


def flow_gradients(
    flow: str | Gates,
    controller: Callable[[PyTree, Array], Array],
    step: Callable[[Array, Array], Array],
    loss: Callable[[Array, Array], tuple[Array, dict[str, Array]]],
    theta: PyTree,
    x0: Array,
    n_steps: int,
    *,
    pair: bool = False,
    unroll: int = 1,
    n_params=None,
) -> FlowUpdate:
    """The loss and the update a flow hands to the optimizer.

    ``loss(xs, us) -> (scalar, aux)``. With a static flow name, C runs its two passes (R, then
    M) one after the other, and other flows one pass. With :class:`Gates`, ``pair`` (static)
    says whether any row of the program is C: then every row computes two gradients as one
    vmapped pass of twice the width (its own flow, or R for C rows; and M), which costs one
    pass's sequential steps on a GPU; without ``pair`` every row computes one.
    """

    def objective(how, params):
        xs, us = rollout(how, controller, step, params, x0, n_steps, unroll=unroll)
        return loss(xs, us)

    grad = jax.value_and_grad(objective, argnums=1, has_aux=True)
    nan = jnp.asarray(jnp.nan, jnp.result_type(float))
    if isinstance(flow, Gates):
        if not pair:
            value, g = grad(flow, theta)
            return FlowUpdate(value, g, nan, nan)
        # A C row's own gates are R's, so its first gradient is g_R.
        both = jax.tree.map(lambda a, b: jnp.stack([jnp.asarray(a), jnp.asarray(b)]), flow, _M_GATES)
        values, g2 = jax.vmap(grad, in_axes=(0, None))(both, theta)
        value = jax.tree.map(lambda v: v[0], values)
        g_r, g_m = jax.tree.map(lambda g: g[0], g2), jax.tree.map(lambda g: g[1], g2)
        update = jax.tree.map(lambda c, own: jnp.where(flow.combined, c, own), combine(g_m, g_r), g_r)
        return FlowUpdate(
            value,
            update,
            jnp.where(flow.combined, cosine(g_m, g_r), nan),
            jnp.where(flow.combined, kept_fraction(g_m, g_r, n_params), nan),
        )
    flow = canonical_flow(flow)
    if flow != "C":
        value, g = grad(flow, theta)
        return FlowUpdate(value, g, nan, nan)
    value, g_r = grad("R", theta)
    _, g_m = grad("M", theta)
    return FlowUpdate(value, combine(g_m, g_r), cosine(g_m, g_r), kept_fraction(g_m, g_r, n_params))


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
      loss: ``loss(xs, us) -> scalar`` (or a ``Task.loss``'s ``(total, aux)``) with
        ``xs (B, n_steps + 1, ...)`` (x0 included) and ``us (B, n_steps, ...)``.
      params: the controller's parameters (any pytree).
      x0: a batch of initial states ``(B, ...)``.
      n_steps: number of simulator steps.

    Returns:
      ``(loss_value, grads)``; for C, ``grads`` is the combined update (docs/model.md §2).
    """

    def with_aux(xs, us):
        out = loss(xs, us)  # a scalar, or a Task's (total, aux)
        return out if isinstance(out, tuple) else (out, {})

    result = flow_gradients(canonical_flow(flow), controller, step, with_aux, params, x0, n_steps)
    return result.value[0], result.update


__all__ += ["FlowUpdate", "kept_fraction", "tree_dot"]
