"""Gradient flows through an unrolled simulation (docs/model.md §2).

This is the only module that decides where gradients stop, and it knows no flow by name: it
reads each flow's cuts and combination from the registry in :mod:`bptt_cli.core.flow_names`.
A flow is given either as a name (``"R"``, ``"M"``, ``"S"``, ``"C"``, ``"T<k>"`` or any
registered one), closed over by ``jit`` so that each flow traces its own, leanest program, or
as :class:`Gates`: the same cuts written as per-row data, so that runs of different flows can
share one vmapped program (a GPU runs the extra rows almost for free). Both give the same
forward values, and the same gradients up to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bptt_cli.core.flow_names import FLOWS, Cuts, Flow, FlowDef, canonical_flow, flow_def, flow_rank, register

PyTree = Any
Array = jax.Array
canonical = canonical_flow  # re-exported: flows.canonical("m") == "M"
__all__ = [
    "FLOWS",
    "Cuts",
    "Flow",
    "FlowDef",
    "Gates",
    "canonical",
    "combine",
    "cosine",
    "flow_def",
    "flow_gradients",
    "flow_rank",
    "gates",
    "register",
    "rollout",
    "value_and_grad",
]


class Gates(NamedTuple):
    """A flow as data: the cuts of its backward passes, traced per row under ``vmap``.

    Attributes:
      first: the cuts of the first pass: a single flow's own, a combined flow's B (its
        gradient is the one the sign must agree with).
      second: the cuts of the second pass, run by every row of a program that has a combined
        row: a combined flow's A (whose entries are kept); a single flow repeats its own, and
        the result is not used.
      combined: the row is a combined flow: its update is A's entries where their sign agrees
        with B's.
    """

    first: Cuts
    second: Cuts
    combined: Any


def _as_data(cuts: Cuts) -> Cuts:
    return Cuts(np.bool_(cuts.net), np.bool_(cuts.sim), np.int32(cuts.every))


def gates(flow: str) -> Gates:
    """The gates of a flow name, as NumPy scalars."""
    definition = flow_def(flow)
    if definition.combines is None:
        return Gates(_as_data(definition.cuts), _as_data(definition.cuts), np.bool_(False))
    keep, agree = (_as_data(flow_def(part).cuts) for part in definition.combines)
    return Gates(agree, keep, np.bool_(True))


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
    flow: str | Cuts,
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
      flow: a single flow's name, or :class:`Cuts` (Python values: cut statically; arrays:
        selected per row at run time).
      perturbation: optional ``(n_steps + 1, B, ...)`` added to the states ``x_0 ... x_Nt``;
        zero in value, it makes ``∂L/∂x_t`` the gradient with respect to it (docs/model.md §14).
      unroll: the horizon scan's unroll factor (a speed setting; results are unchanged).

    Returns:
      ``xs (B, n_steps + 1, ...)`` with ``x0`` first, and ``us (B, n_steps, ...)``.
    """
    if isinstance(flow, str):
        definition = flow_def(flow)
        if definition.cuts is None:
            raise ValueError(
                f"flow {definition.name} combines two gradients; it has no single rollout (use value_and_grad)"
            )
        flow = definition.cuts
    net_on, sim_on, every = flow
    if isinstance(every, int) and every == 0:
        every = None  # a static flow without truncation traces no truncation at all
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


def combine(g_a: PyTree, g_b: PyTree) -> PyTree:
    """The combination rule: ``g_A[j]`` where ``sign(g_A[j]) == sign(g_B[j])``, else 0
    (``sign(0) = 0``). C is ``combine(g_M, g_R)``."""
    return jax.tree.map(lambda a, b: jnp.where(jnp.sign(a) == jnp.sign(b), a, jnp.zeros_like(a)), g_a, g_b)


def kept_fraction(g_a: PyTree, g_b: PyTree, n_params=None) -> Array:
    """Fraction of parameter entries where ``sign(g_A) == sign(g_B)`` (what a combined flow
    keeps, docs/model.md §14).

    ``n_params`` counts the real entries when the parameters carry padding (padded entries are
    exactly zero in both gradients, so they always agree and are subtracted here).
    """
    leaves = list(zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b), strict=True))
    agree = sum(jnp.sum(jnp.sign(a) == jnp.sign(b)) for a, b in leaves)
    total = sum(a.size for a, _ in leaves)
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
    update: PyTree  # what the optimizer receives (a combined flow: the combination)
    cos_mr: Array  # a combined flow's cos(g_A, g_B) (C: cos(g_M, g_R)), NaN otherwise
    kept: Array  # a combined flow's kept fraction, NaN otherwise


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
    """The loss and the update a flow hands to the optimizer (docs/model.md §2).

    ``loss(xs, us) -> (scalar, aux)``. With a flow name, a combined flow ``(A, B)`` runs B's
    pass, then A's, one after the other, and a single flow one pass. With :class:`Gates`,
    ``pair`` (static) says whether any row of the program is combined: then every row computes
    two gradients as one vmapped pass of twice the width (``Gates.first`` and
    ``Gates.second``), which costs one pass's sequential steps on a GPU; without ``pair`` every
    row computes one. The value is the first pass's (forward values agree across flows).
    """

    def objective(cuts, params):
        xs, us = rollout(cuts, controller, step, params, x0, n_steps, unroll=unroll)
        return loss(xs, us)

    grad = jax.value_and_grad(objective, argnums=1, has_aux=True)
    nan = jnp.asarray(jnp.nan, jnp.result_type(float))

    def combined(value, g_a, g_b, rows=None):
        """A's entries where their sign agrees with B's, the two gradients' cosine and what
        the rule keeps; with per-row data, only on the ``rows`` that are combined (the others
        keep their first gradient, B's place, and get NaN)."""
        update, cos, kept = combine(g_a, g_b), cosine(g_a, g_b), kept_fraction(g_a, g_b, n_params)
        if rows is None:
            return FlowUpdate(value, update, cos, kept)
        update = jax.tree.map(lambda c, own: jnp.where(rows, c, own), update, g_b)
        return FlowUpdate(value, update, jnp.where(rows, cos, nan), jnp.where(rows, kept, nan))

    if isinstance(flow, Gates):
        if not pair:
            value, g = grad(flow.first, theta)
            return FlowUpdate(value, g, nan, nan)
        both = jax.tree.map(lambda a, b: jnp.stack([jnp.asarray(a), jnp.asarray(b)]), flow.first, flow.second)
        values, g2 = jax.vmap(grad, in_axes=(0, None))(both, theta)
        first, second = (jax.tree.map(lambda g, i=i: g[i], g2) for i in (0, 1))
        return combined(jax.tree.map(lambda v: v[0], values), second, first, flow.combined)
    definition = flow_def(flow)
    if definition.combines is None:
        value, g = grad(definition.cuts, theta)
        return FlowUpdate(value, g, nan, nan)
    keep, agree = (flow_def(part).cuts for part in definition.combines)
    value, g_b = grad(agree, theta)
    _, g_a = grad(keep, theta)
    return combined(value, g_a, g_b)


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
      flow: ``"R"``, ``"M"``, ``"S"``, ``"C"``, ``"T<k>"``, a ``Flow`` or any registered name.
      controller: ``controller(params, x) -> u`` for ONE sample.
      step: ``step(x, u) -> x_next`` for ONE sample.
      loss: ``loss(xs, us) -> scalar`` (or a ``Task.loss``'s ``(total, aux)``) with
        ``xs (B, n_steps + 1, ...)`` (x0 included) and ``us (B, n_steps, ...)``.
      params: the controller's parameters (any pytree).
      x0: a batch of initial states ``(B, ...)``.
      n_steps: number of simulator steps.

    Returns:
      ``(loss_value, grads)``; for a combined flow (C), ``grads`` is the combination
      (docs/model.md §2).
    """

    def with_aux(xs, us):
        out = loss(xs, us)  # a scalar, or a Task's (total, aux)
        return out if isinstance(out, tuple) else (out, {})

    result = flow_gradients(canonical_flow(flow), controller, step, with_aux, params, x0, n_steps)
    return result.value[0], result.update


__all__ += ["FlowUpdate", "kept_fraction", "tree_dot"]
