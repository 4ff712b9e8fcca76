"""Where a problem reference becomes a ``ProblemDef``: the one place that imports problems.

A definition file names its problem by a built-in name (``"cartpole"``), a module path
(``"my_lab.sims.heat"``) or a Python file (``"./heat.py"``, relative to the definition file).
The module must define ``PROBLEM = bptt_cli.ProblemDef(...)``. :func:`check` evaluates the
descriptor's functions abstractly (``jax.eval_shape``) so that a broken contract is reported in
one line before anything is trained or written.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bptt_cli.core.task import ProblemDef, Task

NAMES = ("cartpole", "guidance", "quantum", "lqr", "pendulum")


class ProblemError(ValueError):
    """A problem reference that cannot be loaded, or a descriptor that breaks the contract."""


def canonical_ref(ref: str, base: Path | None = None) -> str:
    """The reference as the runner will load it anywhere: built-in names and module paths as
    given, files as absolute paths (``base`` is the folder relative paths start from)."""
    if ref in NAMES or not is_file_ref(ref):
        return ref
    path = Path(ref).expanduser()
    return str((path if path.is_absolute() else (base or Path.cwd()) / path).resolve())


def get(ref: str, base: Path | None = None) -> ProblemDef:
    """The ``PROBLEM`` descriptor behind a built-in name, a module path or a ``.py`` file."""
    return _load(canonical_ref(ref, base))


@functools.cache
def _load(ref: str) -> ProblemDef:
    module = importlib.import_module(f"bptt_cli.problems.{ref}") if ref in NAMES else import_ref(ref)
    problem = getattr(module, "PROBLEM", None)
    if not isinstance(problem, ProblemDef):
        found = "nothing" if problem is None else type(problem).__name__
        raise ProblemError(
            f"problem {ref!r} defines no PROBLEM descriptor (found {found}); "
            "expected PROBLEM = bptt_cli.ProblemDef(...)"
        )
    return problem


def is_file_ref(ref: str) -> bool:
    """Whether a reference names a file (``.py`` or a path), not a module path."""
    return ref.endswith(".py") or "/" in ref or "\\" in ref


def import_ref(ref: str):
    """The module a module path or a ``.py`` file names, imported once per process (a problem
    and its drawing in one file share it). Raises ``ProblemError`` with a one-line message."""
    return _import_file(Path(ref)) if is_file_ref(ref) else _import_module(ref)


def _import_file(path: Path):
    if not path.is_file():
        raise ProblemError(f"problem file {str(path)!r} not found")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    name = f"bptt_user_problem_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ProblemError(f"problem file {str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the module look themselves up here
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ProblemError(f"problem file {str(path)!r} failed to import: {_one_line(err)}") from None
    return module


def _import_module(ref: str):
    try:
        return importlib.import_module(ref)
    except ModuleNotFoundError as err:
        if err.name is None or not ref.startswith(err.name.split(".")[0]):
            raise ProblemError(f"problem module {ref!r} failed to import: {_one_line(err)}") from None
        # Console scripts do not put the working folder on sys.path; a user's package next to
        # their definition usually lives there.
        if str(Path.cwd()) not in sys.path:
            sys.path.append(str(Path.cwd()))
            return _import_module(ref)
        raise ProblemError(
            f"unknown problem {ref!r}; allowed: {', '.join(NAMES)}, an importable module path or a .py file"
        ) from None
    except Exception as err:
        raise ProblemError(f"problem module {ref!r} failed to import: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# --- the contract, checked abstractly ------------------------------------------------------


def check(problem: ProblemDef, level: Any, options: Mapping[str, Any]) -> None:
    """Evaluate ``problem``'s task at ``level`` abstractly and raise ``ProblemError`` naming the
    problem, the function and what was expected at the first mismatch. No FLOP is spent."""
    import jax
    import jax.numpy as jnp

    where = f"problem {problem.name!r}"
    try:
        task = problem.make_task(level if problem.level_is_static else jnp.float32(level), dict(options))
    except Exception as err:
        raise ProblemError(f"{where}: make_task failed: {_one_line(err)}") from None
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
                f"{where}: make_task failed with a traced level ({_one_line(err)}); with "
                "level_is_static=False the level is a traced number: compute with it, do not branch on "
                "it or shape arrays by it"
            ) from None

    def call(name, *args):
        def fn(level, *inner):
            at = task if problem.level_is_static else problem.make_task(level, dict(options))
            return getattr(at, name)(*inner)

        try:
            return jax.eval_shape(fn, traced, *args)
        except Exception as err:
            raise ProblemError(f"{where}: {name} failed on abstract inputs: {_one_line(err)}") from None

    try:
        data = jax.eval_shape(lambda key: task.sample_data(key, 2), jax.random.key(0))
    except Exception as err:
        raise ProblemError(f"{where}: sample_data failed on abstract inputs: {_one_line(err)}") from None
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
