"""The training protocol of SPEC §4 as pure functions of one run.

One run is one controller initialisation trained on one data set. Everything here acts on a
single run; the runner ``vmap``s it over seeds (and over configurations that differ only in
numbers) and ``jit``s it once per static setup.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Setup:
    """What must be static under ``jit``: one compiled program per distinct Setup."""

    flow: str
    optimizer: str
    batch_size: int


class Hypers(NamedTuple):
    """Per-run numbers; traced, so runs that differ only in these share a program."""

    key: Array  # controller initialisation key (from ``seed``)
    learning_rate: Array
    clip_value: Array  # inf: off
    clip_norm: Array  # inf: off
    level: Array  # numeric complexity level handed to the loss


class TrainState(NamedTuple):
    theta: PyTree
    opt_state: PyTree
    diverged: Array  # bool: a non-finite loss or update was seen; the run stopped updating


def _optimizer(setup: Setup, hypers: Hypers) -> optax.GradientTransformation:
    return make_optimizer(setup.optimizer, hypers.learning_rate, hypers.clip_value, hypers.clip_norm)


def init_state(task: Task, setup: Setup, hypers: Hypers) -> TrainState:
    theta = task.init_controller(hypers.key)
    return TrainState(theta, _optimizer(setup, hypers).init(theta), jnp.asarray(False))


def _all_finite(tree: PyTree) -> Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def evaluate(task: Task, theta: PyTree, x0: Array, level: Array) -> tuple[Array, dict[str, Array]]:
    """Forward-only loss of ``theta`` on a whole data set ``x0 (N, ...)``."""
    xs, us = flows.rollout("R", task.controller, task.step, theta, x0, task.n_steps)
    return task.loss(xs, us, level)


def evaluate_splits(
    task: Task, theta: PyTree, x_train: Array, x_test: Array, level: Array
) -> tuple[Array, dict[str, Array]]:
    """Train and test losses from ONE rollout of both sets (one program, one scan): the loss
    is vmapped over the leading split axis. Returns ``(2,)`` arrays, train first."""
    x0 = jnp.concatenate([x_train, x_test], axis=0)
    xs, us = flows.rollout("R", task.controller, task.step, theta, x0, task.n_steps)
    split = lambda a: a.reshape((2, x_train.shape[0], *a.shape[1:]))  # noqa: E731
    return jax.vmap(task.loss, in_axes=(0, 0, None))(split(xs), split(us), level)


def train_epoch(
    task: Task, setup: Setup, state: TrainState, hypers: Hypers, x_train: Array, x_test: Array
) -> tuple[TrainState, dict[str, Array]]:
    """One epoch: consecutive minibatches in a fixed order (no shuffling, as released), then
    the full-set train and test losses. Returns the new state and the epoch's metrics."""
    optimizer = _optimizer(setup, hypers)
    n_batches = x_train.shape[0] // setup.batch_size
    batches = x_train.reshape((n_batches, setup.batch_size, *x_train.shape[1:]))

    def loss_fn(xs, us):
        return task.loss(xs, us, hypers.level)

    def update(state: TrainState, x0: Array):
        (loss, aux), grad, cos_mr = flows.flow_gradients(
            setup.flow, task.controller, task.step, loss_fn, state.theta, x0, task.n_steps
        )
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
        metrics = {"batch_loss": loss, "update_sq_norm": flows.tree_dot(grad, grad), "cos_mr": cos_mr}
        metrics.update({f"batch_{name}": value for name, value in aux.items()})
        return new, metrics

    state, per_batch = lax.scan(update, state, batches)
    metrics = {name: jnp.mean(values) for name, values in per_batch.items()}
    losses, aux = evaluate_splits(task, state.theta, x_train, x_test, hypers.level)
    for i, split in enumerate(("train", "test")):
        metrics[f"{split}_loss"] = losses[i]
        metrics.update({f"{split}_{name}": value[i] for name, value in aux.items()})
    return state, metrics


def train_chunk(
    task: Task,
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
