"""bptt-cli: reproduce "Stabilizing Backpropagation Through Time to Learn Complex Physics".

The public API, in one place, for your own simulators and for using the flows as a library:

- ``ProblemDef`` and ``Task``: the contract a problem module fulfils (``PROBLEM = ProblemDef(...)``);
  a definition file names such a module by module path or file, and ``bptt-run`` trains it.
- ``check(problem, level, options)``: the contract checked abstractly (no FLOP spent), as
  ``bptt-run`` checks it before training; raises ``ProblemError`` with a one-line message.
- ``value_and_grad(flow, controller, step, loss, params, x0, n_steps)``: the loss and a gradient
  flow's update (R, M, S, C or T<k>) for any single-sample ``step`` and ``controller``.
- ``combine(g_m, g_r)``: the C rule on any pytrees.
- ``nn``: the small MLP layers the paper's controllers use (Keras-style initialisation).
- ``run(definition, scale, **options)``: train a grid as ``bptt-run`` does and get its results;
  ``load(folder)``: any results folder (or published data) as tidy DataFrames, ``metrics`` and
  ``diagnostics`` (``bptt_cli.api``; docs/python-api.md).

Everything else is internal: ``core`` (flows, optimizers, training, the planner), ``runner``,
``results``, ``config``, ``plotting`` and ``cli`` may change between releases; ``api`` holds
the steps ``run`` takes, which the command line calls.

Importing ``bptt_cli`` loads neither jax nor the problem registry; the names above load what
they need on first use.
"""

from bptt_cli.core.task import ProblemDef, Task

__version__ = "0.4.0"
__all__ = [
    "ProblemDef",
    "ProblemError",
    "Task",
    "UserError",
    "check",
    "combine",
    "load",
    "nn",
    "run",
    "value_and_grad",
]


def __getattr__(name: str):
    if name in ("value_and_grad", "combine"):
        from bptt_cli.core import flows

        return getattr(flows, name)
    if name in ("check", "ProblemError"):
        from bptt_cli import problems

        return getattr(problems, name)
    if name in ("run", "load", "UserError"):
        from bptt_cli import api

        return getattr(api, name)
    if name == "nn":
        import importlib

        return importlib.import_module("bptt_cli.nn")
    raise AttributeError(f"module 'bptt_cli' has no attribute {name!r}")
