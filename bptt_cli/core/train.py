"""The training protocol of docs/model.md §4 as pure functions of one run.

One run is one controller initialisation trained on one data set. Everything here acts on a
single run; the runner ``vmap``s it over rows (seeds, and configurations that differ only in
data: clip mode, learning rate, a numeric level, on a GPU also the flow) and ``jit``s it once
per static setup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from bptt_cli.core import flows
from bptt_cli.core.optim import make_optimizer
from bptt_cli.core.task import Task

PyTree = Any
Array = jax.Array
TaskOf = Callable[[Array], Task]  # a row's level -> its task (built at trace time)


@dataclass(frozen=True)
class Setup:
    """What must be static under ``jit``: one compiled program per distinct Setup.

    Attributes:
      flow: a flow name shared by every row, or ``None`` when the flow is per-row data
        (``Hypers.gates``).
      optimizer, batch_size: as in the run's configuration.
      pair: with per-row flows, whether some row is a combined flow (every row then computes two
        gradients).
      unroll: unroll factor of the horizon scan (a speed setting; results are unchanged).
      precision: ``"float64"`` widens the initial parameters (drawn in float32, like the
        data, so that both precisions start alike); the program is traced under jax's x64.
    """

    flow: str | None
    optimizer: str
    batch_size: int
    pair: bool = False
    unroll: int = 1
    precision: str = "float32"


class Hypers(NamedTuple):
    """Per-row numbers; traced, so rows that differ only in these share a program."""

    key: Array  # controller initialisation key (from ``seed``)
    learning_rate: Array
    clip_value: Array  # inf: off
    clip_norm: Array  # inf: off
    level: Array  # the complexity level, handed to ``task_of``
    gates: flows.Gates  # the row's flow as data (read when ``Setup.flow`` is None)


class TrainState(NamedTuple):
    theta: PyTree
    opt_state: PyTree
    diverged: Array  # bool: a non-finite loss or update was seen; the run stopped updating


def _optimizer(setup: Setup, hypers: Hypers) -> optax.GradientTransformation:
    return make_optimizer(setup.optimizer, hypers.learning_rate, hypers.clip_value, hypers.clip_norm)


def widen(tree: PyTree, precision: str) -> PyTree:
    """``tree``'s real floating leaves in ``precision`` (complex leaves to the matching complex)."""
    if precision == "float32":
        return tree
    real, complex_ = jnp.dtype(precision), jnp.result_type(precision, jnp.complex64)

    def cast(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            return leaf.astype(complex_)
        return leaf.astype(real) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree.map(cast, tree)


def init_state(task_of: TaskOf, setup: Setup, hypers: Hypers) -> TrainState:
    theta = widen(task_of(hypers.level).init_controller(hypers.key), setup.precision)
    return TrainState(theta, _optimizer(setup, hypers).init(theta), jnp.asarray(False))


def _all_finite(tree: PyTree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def clip_changes(update: PyTree, clip_value: Array, clip_norm: Array) -> Array:
    """Whether the clip stage (by value, then by global norm; docs/model.md §3) changes ``update``."""
    clipped = jax.tree.map(lambda u: jnp.clip(u, -clip_value, clip_value), update)
    changed = jax.tree.map(lambda c, u: jnp.any(c != u), clipped, update)
    by_value = jnp.any(jnp.stack(jax.tree.leaves(changed)))
    return by_value | (jnp.sqrt(flows.tree_dot(clipped, clipped)) > clip_norm)


def evaluate(task: Task, theta: PyTree, x0: Array) -> tuple[Array, dict[str, Array]]:
    """Forward-only loss of ``theta`` on a whole data set ``x0 (N, ...)``."""
    xs, us = flows.rollout("R", task.controller, task.step, theta, x0, task.n_steps)
    return task.loss(xs, us)


def evaluate_splits(
    task: Task, theta: PyTree, x_train: Array, x_test: Array, unroll: int = 1
) -> tuple[Array, dict[str, Array]]:
    """Train and test losses from ONE rollout of both sets (one program, one scan): the loss
    is vmapped over the leading split axis. Returns ``(2,)`` arrays, train first."""
    x0 = jnp.concatenate([x_train, x_test], axis=0)
    xs, us = flows.rollout("R", task.controller, task.step, theta, x0, task.n_steps, unroll=unroll)
    split = lambda a: a.reshape((2, x_train.shape[0], *a.shape[1:]))  # noqa: E731
    return jax.vmap(task.loss)(split(xs), split(us))


def train_epoch(
    task: Task, setup: Setup, state: TrainState, hypers: Hypers, x_train: Array, x_test: Array
) -> tuple[TrainState, dict[str, Array]]:
    """One epoch: consecutive minibatches in a fixed order (no shuffling, as released), then
    the full-set train and test losses. Returns the new state and the epoch's metrics."""
    optimizer = _optimizer(setup, hypers)
    n_batches = x_train.shape[0] // setup.batch_size
    batches = x_train.reshape((n_batches, setup.batch_size, *x_train.shape[1:]))
    flow = hypers.gates if setup.flow is None else setup.flow

    def update(state: TrainState, x0: Array):
        result = flows.flow_gradients(
            flow,
            task.controller,
            task.step,
            task.loss,
            state.theta,
            x0,
            task.n_steps,
            pair=setup.pair,
            unroll=setup.unroll,
            n_params=task.n_params,
        )
        (loss, aux), grad = result.value, result.update
        updates, opt_state = optimizer.update(grad, state.opt_state, state.theta)
        theta = optax.apply_updates(state.theta, updates)
        finite = jnp.isfinite(loss) & _all_finite(grad) & _all_finite(theta)
        # A diverged run keeps its last finite parameters and stops updating; the others in
        # the same vmapped batch are untouched because every quantity here is per run.
        keep = finite & ~state.diverged
        new = TrainState(
            jax.tree.map(lambda a, b: jnp.where(keep, a, b), theta, state.theta),
            jax.tree.map(lambda a, b: jnp.where(keep, a, b), opt_state, state.opt_state),
            state.diverged | ~finite,
        )
        metrics = {
            "batch_loss": loss,
            "update_sq_norm": flows.tree_dot(grad, grad),
            "cos_mr": result.cos_mr,
            "c_kept_fraction": result.kept,
            "clip_active_fraction": clip_changes(grad, hypers.clip_value, hypers.clip_norm).astype(
                loss.dtype
            ),
        }
        metrics.update({f"batch_{name}": value for name, value in aux.items()})
        return new, metrics

    state, per_batch = lax.scan(update, state, batches)
    metrics = {name: jnp.mean(values) for name, values in per_batch.items()}
    losses, aux = evaluate_splits(task, state.theta, x_train, x_test, setup.unroll)
    for i, split in enumerate(("train", "test")):
        metrics[f"{split}_loss"] = losses[i]
        metrics.update({f"{split}_{name}": value[i] for name, value in aux.items()})
    return state, metrics


def train_chunk(
    task_of: TaskOf,
    setup: Setup,
    max_epochs: int,
    state: TrainState,
    hypers: Hypers,
    x_train: Array,
    x_test: Array,
    n_epochs: Array,
) -> tuple[TrainState, dict[str, Array], Array]:
    """Run ``n_epochs <= max_epochs`` epochs (``n_epochs`` may be traced: one program serves
    every chunk length). Metrics come back as ``(max_epochs,)`` arrays, NaN past ``n_epochs``,
    with the per-epoch ``diverged`` flag."""
    task = task_of(hypers.level)

    def body(i, carry):
        state, buffers, diverged = carry
        state, metrics = train_epoch(task, setup, state, hypers, x_train, x_test)
        buffers = {name: buffers[name].at[i].set(value) for name, value in metrics.items()}
        return state, buffers, diverged.at[i].set(state.diverged)

    # The metric names depend on the problem's aux losses: read them off the epoch's shapes.
    shapes = jax.eval_shape(lambda: train_epoch(task, setup, state, hypers, x_train, x_test)[1])
    buffers = {name: jnp.full((max_epochs,), jnp.nan, shape.dtype) for name, shape in shapes.items()}
    diverged = jnp.zeros((max_epochs,), bool)
    return lax.fori_loop(0, n_epochs, body, (state, buffers, diverged))
