"""The control problems, one module each; ``PROBLEMS`` maps names to their descriptors."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bptt_cli.core.task import ProblemDef

NAMES = ("cartpole", "guidance", "quantum")


def get(name: str) -> ProblemDef:
    """The ``PROBLEM`` descriptor of ``bptt_cli.problems.<name>``."""
    return importlib.import_module(f"bptt_cli.problems.{name}").PROBLEM
