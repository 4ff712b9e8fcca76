"""bptt-cli: reproduce "Stabilizing Backpropagation Through Time to Learn Complex Physics".

The public API, for your own simulators:

- ``ProblemDef`` and ``Task``: the contract a problem module fulfils (``PROBLEM = ProblemDef(...)``);
  a definition file names such a module by module path or file, and ``bptt-run`` trains it.
- ``value_and_grad(flow, controller, step, loss, params, x0, n_steps)``: the loss and a gradient
  flow's update (R, M, S, C or T<k>) for any single-sample ``step`` and ``controller``.
- ``combine(g_m, g_r)``: the C rule on any pytrees.

Importing ``bptt_cli`` does not import jax; the two functions load it on first use.
"""

from bptt_cli.core.task import ProblemDef, Task

__version__ = "0.2.0"
__all__ = ["ProblemDef", "Task", "combine", "value_and_grad"]


def __getattr__(name: str):
    if name in ("value_and_grad", "combine"):
        from bptt_cli.core import flows

        return getattr(flows, name)
    raise AttributeError(f"module 'bptt_cli' has no attribute {name!r}")
