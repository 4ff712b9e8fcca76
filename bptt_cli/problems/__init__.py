"""Where a problem reference becomes a ``ProblemDef``: the one place that imports problems.

A definition file names its problem by a built-in name (``"cartpole"``), a module path
(``"my_lab.sims.heat"``) or a Python file (``"./heat.py"``, relative to the definition file).
The module must define ``PROBLEM = bptt_cli.ProblemDef(...)``; :mod:`.contract` checks it
before anything is trained or written.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from bptt_cli.core.task import ProblemDef, Task
from bptt_cli.problems.contract import ProblemError, check, check_transforms, dead_gradients
from bptt_cli.problems.contract import one_line as _one_line

NAMES = ("cartpole", "guidance", "quantum", "lqr", "pendulum")


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


__all__ = [
    "NAMES",
    "ProblemDef",
    "ProblemError",
    "Task",
    "canonical_ref",
    "check",
    "check_transforms",
    "dead_gradients",
    "get",
    "import_ref",
    "is_file_ref",
]
