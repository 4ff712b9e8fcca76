"""The contract between a problem and the runner, checked before anything is trained or written.

- :func:`check` evaluates a task's functions abstractly (``jax.eval_shape``): shapes, dtypes,
  what ``loss`` returns.
- :func:`check_transforms` traces, abstractly, every transformation a run applies to them:
  ``vmap`` and reverse-mode derivatives of ``step``, ``controller`` and ``loss``, each flow's
  gradient through the rollout, the diagnostics' Jacobians, the padded task where there is one.
- :func:`dead_gradients` evaluates ``step``'s Jacobians at a few data states and says which are
  identically zero (a hidden ``stop_gradient``): a warning, not an error.

A failure raises :class:`ProblemError` with one line naming the problem, the function, the
transformation and what to do. None of them spends a FLOP on training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bptt_cli.core.task import ProblemDef, Task

MAX_REASON = 300  # characters of jax's own message kept in a one-line error


class ProblemError(ValueError):
    """A problem reference that cannot be loaded, or a descriptor that breaks the contract."""


def _task(problem: ProblemDef, level: Any, options: Mapping[str, Any]) -> Task:
    """The task at ``level`` called as the host calls it: with the level as a number (a float32
    scalar when the level is not static)."""
    import jax.numpy as jnp

    return problem.make_task(level if problem.level_is_static else jnp.float32(level), dict(options))


def _as_trained(problem: ProblemDef, task: Task, options: Mapping[str, Any]):
    """``level -> Task`` as training sees it: ``task`` where the level is static, else the task
    made anew at the traced level."""
    return lambda level: task if problem.level_is_static else problem.make_task(level, dict(options))


def one_line(err: BaseException) -> str:
    """``Type: message`` on one line (jax's messages can run over many)."""
    text = " ".join(str(err).split())
    if len(text) > MAX_REASON:
        text = text[: MAX_REASON - 1] + "…"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def check(problem: ProblemDef, level: Any, options: Mapping[str, Any]) -> None:
    """Evaluate ``problem``'s task at ``level`` abstractly and raise ``ProblemError`` naming the
    problem, the function and what was expected at the first mismatch. No FLOP is spent."""
    import jax
    import jax.numpy as jnp

    where = f"problem {problem.name!r}"
    try:
        task = _task(problem, level, options)
    except Exception as err:
        raise ProblemError(f"{where}: make_task failed: {one_line(err)}") from None
    if not isinstance(task, Task):
        raise ProblemError(f"{where}: make_task returned {type(task).__name__}; expected a bptt_cli.Task")
    for name in ("step", "controller", "init_controller", "loss", "sample_data"):
        if not callable(getattr(task, name)):
            raise ProblemError(f"{where}: Task.{name} is missing or not callable")
    if not isinstance(task.n_steps, int) or task.n_steps < 1:
        raise ProblemError(f"{where}: Task.n_steps is {task.n_steps!r}; expected a positive integer")

    # A level that is not static reaches the task traced, as in training.
    traced = jax.ShapeDtypeStruct((), jnp.float32)
    if not problem.level_is_static:
        try:
            jax.eval_shape(lambda level: problem.make_task(level, dict(options)).n_steps and 0, traced)
        except Exception as err:
            raise ProblemError(
                f"{where}: make_task failed with a traced level ({one_line(err)}); with "
                "level_is_static=False the level is a traced number: compute with it, do not branch on "
                "it or shape arrays by it"
            ) from None

    at = _as_trained(problem, task, options)

    def call(name, *args):
        def fn(level, *inner):
            return getattr(at(level), name)(*inner)

        try:
            return jax.eval_shape(fn, traced, *args)
        except Exception as err:
            raise ProblemError(f"{where}: {name} failed on abstract inputs: {one_line(err)}") from None

    try:
        data = jax.eval_shape(lambda key: task.sample_data(key, 2), jax.random.key(0))
    except Exception as err:
        raise ProblemError(f"{where}: sample_data failed on abstract inputs: {one_line(err)}") from None
    if not (isinstance(data, tuple) and len(data) == 2 and all(hasattr(d, "shape") for d in data)):
        raise ProblemError(f"{where}: sample_data returned {data!r}; expected (x_train, x_test)")
    if data[0].shape[:1] != (2,) or data[0].shape != data[1].shape:
        raise ProblemError(
            f"{where}: sample_data(key, 2) returned shapes {data[0].shape} and {data[1].shape}; "
            "expected two arrays (2, *state) of the same shape"
        )
    x = jax.ShapeDtypeStruct(data[0].shape[1:], data[0].dtype)
    theta = call("init_controller", jax.random.key(0))
    u = call("controller", theta, x)
    if getattr(u, "shape", None) != tuple(task.control_shape):
        raise ProblemError(
            f"{where}: controller returned shape {getattr(u, 'shape', type(u).__name__)} for one state "
            f"{x.shape}; expected control_shape {tuple(task.control_shape)}"
        )
    x_next = call("step", x, u)
    if getattr(x_next, "shape", None) != x.shape or x_next.dtype != x.dtype:
        got = f"{getattr(x_next, 'shape', type(x_next).__name__)} {getattr(x_next, 'dtype', '')}".strip()
        raise ProblemError(
            f"{where}: step returned {got} for a state {x.shape} {x.dtype}; expected the state's shape and dtype"
        )
    batch = 3
    xs = jax.ShapeDtypeStruct((batch, task.n_steps + 1, *x.shape), x.dtype)
    us = jax.ShapeDtypeStruct((batch, task.n_steps, *u.shape), u.dtype)
    out = call("loss", xs, us)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise ProblemError(
            f"{where}: loss must return (total, aux) with aux a dict; got {type(out).__name__}"
        )
    total, aux = out
    if getattr(total, "shape", None) != ():
        raise ProblemError(
            f"{where}: loss returned a total of shape {getattr(total, 'shape', None)}; expected a scalar"
        )
    if set(aux) != set(problem.aux_metrics) or any(getattr(v, "shape", None) != () for v in aux.values()):
        raise ProblemError(
            f"{where}: loss returned aux {sorted(aux)}; expected scalars named {sorted(problem.aux_metrics)}"
        )


# What to do when a transformation fails, per function.
REVERSE_ADVICE = (
    "training backpropagates through every call: compute with jax operations, loop with "
    "jax.lax.scan or a fori_loop of fixed length instead of a while_loop, or give an iterative "
    "solver its own adjoint with jax.custom_vjp"
)
VMAP_ADVICE = "it must take ONE sample and compute with jax operations (the runner batches with jax.vmap)"


def check_transforms(
    problem: ProblemDef,
    level: Any,
    options: Mapping[str, Any],
    flows: Iterable[str] = ("R",),
    diagnostics: bool = True,
) -> None:
    """Trace, abstractly, what training ``flows`` at ``level`` will do to the problem's functions
    (and the diagnostics' Jacobians when ``diagnostics``); raise ``ProblemError`` at the first
    failure, naming the function, the transformation and what to do. Assumes :func:`check`
    passed."""
    import jax
    import jax.numpy as jnp

    from bptt_cli.core import diagnostics as diagnose
    from bptt_cli.core import flows as flow_lib

    where = f"problem {problem.name!r}"
    options = dict(options)
    static = problem.level_is_static
    task = _task(problem, level, options)
    at = _as_trained(problem, task, options)
    traced = jax.ShapeDtypeStruct((), jnp.float32)

    def attempt(what: str, advice: str, fn, *args) -> Any:
        try:
            return jax.eval_shape(fn, traced, *args)
        except Exception as err:
            raise ProblemError(f"{where}: {what}: {one_line(err)}; {advice}") from None

    batch = 2
    x_batch = jax.eval_shape(lambda key: task.sample_data(key, batch)[0], jax.random.key(0))
    x = jax.ShapeDtypeStruct(x_batch.shape[1:], x_batch.dtype)
    theta = jax.eval_shape(lambda lvl, key: at(lvl).init_controller(key), traced, jax.random.key(0))
    u = jax.eval_shape(lambda lvl, th, x: at(lvl).controller(th, x), traced, theta, x)
    u_batch = jax.ShapeDtypeStruct((batch, *u.shape), u.dtype)

    def pullback(fn, *primals):  # reverse mode: a vjp, applied
        out, vjp = jax.vjp(fn, *primals)
        return vjp(jax.tree.map(jnp.zeros_like, out))

    attempt(
        "step cannot be batched (jax.vmap)",
        VMAP_ADVICE,
        lambda lvl, x, u: jax.vmap(at(lvl).step)(x, u),
        x_batch,
        u_batch,
    )
    attempt(
        "step cannot be differentiated in reverse mode (jax.vjp)",
        REVERSE_ADVICE,
        lambda lvl, x, u: pullback(at(lvl).step, x, u),
        x,
        u,
    )
    attempt(
        "controller cannot be batched (jax.vmap)",
        VMAP_ADVICE,
        lambda lvl, th, x: jax.vmap(at(lvl).controller, (None, 0))(th, x),
        theta,
        x_batch,
    )
    attempt(
        "controller cannot be differentiated in reverse mode (jax.vjp)",
        REVERSE_ADVICE,
        lambda lvl, th, x: pullback(at(lvl).controller, th, x),
        theta,
        x,
    )
    xs = jax.ShapeDtypeStruct((batch, task.n_steps + 1, *x.shape), x.dtype)
    us = jax.ShapeDtypeStruct((batch, task.n_steps, *u.shape), u.dtype)
    attempt(
        "loss cannot be differentiated in reverse mode (jax.grad)",
        REVERSE_ADVICE,
        lambda lvl, xs, us: jax.grad(lambda a, b: at(lvl).loss(a, b)[0], argnums=(0, 1))(xs, us),
        xs,
        us,
    )

    def trains(flow: str, task_at):
        def fn(lvl, th, x0):
            t = task_at(lvl)
            return flow_lib.flow_gradients(flow, t.controller, t.step, t.loss, th, x0, t.n_steps).update

        return fn

    for flow in dict.fromkeys(flow_lib.canonical(f) for f in flows):
        attempt(
            f"training with flow {flow} failed (jax.grad through the rollout)",
            "check that step, controller and loss work together under jax.lax.scan",
            trains(flow, at),
            theta,
            x_batch,
        )
    if diagnostics:
        attempt(
            "the gradient diagnostics failed (reverse-mode Jacobians of step and controller)",
            "rerun with --no-diagnostics, or set [diagnostics] enabled = false in the definition",
            lambda lvl, th, x0: diagnose.diagnose(at(lvl), th, x0),
            theta,
            x_batch,
        )
    if static and problem.make_padded_task is not None:

        def padded(lvl):
            return problem.make_padded_task(lvl, level, options)

        padded_theta = jax.eval_shape(
            lambda lvl, key: padded(lvl).init_controller(key), traced, jax.random.key(0)
        )
        for flow in dict.fromkeys(flow_lib.canonical(f) for f in flows):
            attempt(
                f"training the padded task (make_padded_task) with flow {flow} failed",
                "make_padded_task must accept a traced level and shape every array for max_level",
                trains(flow, padded),
                padded_theta,
                x_batch,
            )


def dead_gradients(
    problem: ProblemDef, level: Any, options: Mapping[str, Any], n_states: int = 4
) -> list[str]:
    """Warnings (one line each) for Jacobians of ``step`` that are zero at every one of
    ``n_states`` data states under the initial controller: ``∂step/∂x`` (no feedback through
    time: R, M and C then train like S) and ``∂step/∂u`` (the control never reaches the state)."""
    import jax
    import numpy as np

    task = _task(problem, level, options)
    x0 = task.sample_data(jax.random.key(0), n_states)[0]
    theta = task.init_controller(jax.random.key(0))

    @jax.jit
    def jacobians(x):
        u = jax.vmap(task.controller, (None, 0))(theta, x)
        return jax.vmap(jax.jacrev(task.step, argnums=(0, 1)))(x, u)

    j_x, j_u = jacobians(x0)
    where = f"problem {problem.name!r} at {problem.level_key} = {level}"
    found = []
    if not np.any(np.asarray(j_x)):
        found.append(
            f"{where}: ∂step/∂x is zero at all {n_states} checked states (a stop_gradient inside step?); "
            "no gradient flows back through time, so R, M and C train like S"
        )
    if not np.any(np.asarray(j_u)):
        found.append(
            f"{where}: ∂step/∂u is zero at all {n_states} checked states (a stop_gradient inside step?); "
            "the control reaches the loss only directly, never through the simulation"
        )
    return found
