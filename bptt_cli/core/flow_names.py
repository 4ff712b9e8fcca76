"""The gradient flows (docs/model.md §2), each declared once: the registry everything else reads.

One entry, a :class:`FlowDef`, says all there is to know about a flow: its name; either its
cuts (a *single* flow: where gradients stop, truncation included, one backward pass) or the two
single flows it combines (a *combined* flow: two backward passes, and the update keeps the
first one's entries where their sign agrees with the second's, docs/model.md §2); and its colour
in the figures. The rollout, the training step, the planner, the estimate and the figures read
it; the order of :data:`FLOWS` is the order flows are listed, planned and drawn in. Truncated
BPTT is a family, ``T<k>``, made by :func:`truncated` and ranked after the registered flows.

Adding a flow is one entry: in :data:`BUILT_IN` for a built-in flow, or one :func:`register`
call from a user's code before it trains and plots (in each process that does so).

Kept free of jax, so that definitions are checked and figures drawn without loading it;
:mod:`bptt_cli.core.flows`, which turns cuts into ``stop_gradient``, re-exports the names here.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "FLOWS",
    "Cuts",
    "Flow",
    "FlowDef",
    "canonical_flow",
    "flow_colour",
    "flow_def",
    "flow_rank",
    "register",
    "truncated",
]


class Cuts(NamedTuple):
    """Where one backward pass stops gradients (docs/model.md §2).

    Python values in the registry (each flow then traces its own program); the same fields hold
    per-row arrays when flows are data of one shared program (:class:`bptt_cli.core.flows.Gates`).

    Attributes:
      net: the network's input Jacobian ∂N/∂x is kept (R, T<k>) or cut (M, S).
      sim: the simulator's state input keeps its gradient (all but S).
      every: truncation period k: the state's whole gradient is cut before steps k, 2k, ...;
        0 means never.
    """

    net: Any = True
    sim: Any = True
    every: Any = 0


@dataclass(frozen=True)
class FlowDef:
    """One gradient flow.

    Attributes:
      name: upper case, as written in definitions, run ids and result files.
      cuts: a single flow's cuts; None for a combined flow.
      combines: a combined flow's ``(A, B)``, two single flows: its update is ``g_A[j]`` where
        ``sign(g_A[j]) == sign(g_B[j])``, else 0 (C is ``("M", "R")``). None for a single flow.
      colour: its colour in the figures; None takes the next of :data:`PALETTE`.
    """

    name: str
    cuts: Cuts | None = None
    combines: tuple[str, str] | None = None
    colour: str | None = None

    def __post_init__(self):
        if (self.cuts is None) == (self.combines is None):
            raise ValueError(f"flow {self.name!r}: give either its cuts or the two flows it combines")

    @property
    def passes(self) -> int:
        """Backward passes per update: 1 for a single flow, 2 for a combined one."""
        return 1 if self.combines is None else 2


# The paper's flows, in the order of its figures (a new built-in flow is one more entry).
BUILT_IN = (
    FlowDef("R", cuts=Cuts(), colour="#ef476f"),  # regular: full backpropagation through time
    FlowDef("M", cuts=Cuts(net=False), colour="#ffd166"),  # modified: feedback only along the physics
    FlowDef("C", combines=("M", "R"), colour="#06d6a0"),  # combined: M where its sign agrees with R's
    FlowDef("S", cuts=Cuts(net=False, sim=False), colour="#073b4c"),  # stopped: none through time
)
FLOWS: dict[str, FlowDef] = {}  # every flow by name, in order: BUILT_IN, then register() calls
PALETTE = ("#118ab2", "#8d99ae", "#6a4c93", "#f78c6b")  # flows without a colour of their own (T<k>)
_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_TRUNCATED = re.compile(r"T([1-9][0-9]*)")


def truncated(k: int) -> FlowDef:
    """``T<k>``: full BPTT with the state's gradient cut every ``k`` steps (docs/model.md §2)."""
    return FlowDef(f"T{k}", cuts=Cuts(every=k))


def register(flow: FlowDef) -> FlowDef:
    """Add ``flow`` to :data:`FLOWS` (after the flows there: its place in figures and plans).

    Raises ValueError for a name that is taken, not upper case, or a ``T<k>``, and for a
    combined flow whose parts are not single flows (registered, or ``T<k>``).
    """
    if not _NAME.fullmatch(flow.name) or _TRUNCATED.fullmatch(flow.name) or flow.name in FLOWS:
        raise ValueError(f"cannot register flow {flow.name!r}: the name is taken or not an upper-case word")
    for part in flow.combines or ():
        if flow_def(part).combines is not None:
            raise ValueError(f"flow {flow.name!r} combines {part!r}, which is not a single flow")
    FLOWS[flow.name] = flow
    return flow


def canonical_flow(flow: str) -> str:
    """Upper-case flow name, validated. Raises ValueError for anything else."""
    name = str(flow).strip().upper()  # a Flow's str is its value
    if name in FLOWS or _TRUNCATED.fullmatch(name):
        return name
    raise ValueError(
        f"unknown flow {flow!r}; allowed: {', '.join(FLOWS)}, or T<k> with k >= 1 (truncated BPTT)"
    )


def flow_def(flow: str) -> FlowDef:
    """The registry's entry for a flow name (``T<k>`` made on demand). ValueError if unknown."""
    name = canonical_flow(flow)
    return FLOWS[name] if name in FLOWS else truncated(int(name[1:]))


def flow_rank(flow: str) -> tuple[int, int, str]:
    """Sort key: the registered flows in their order, then T<k> by k, then anything else by name."""
    if flow in FLOWS:
        return (list(FLOWS).index(flow), 0, "")
    match = _TRUNCATED.fullmatch(str(flow))
    return (len(FLOWS), int(match.group(1)), "") if match else (len(FLOWS) + 1, 0, str(flow))


def flow_colour(flow: str, shown: list[str]) -> str:
    """``flow``'s colour in a figure showing the flows ``shown``: its own, or else a colour of
    :data:`PALETTE` given by its place among the shown flows without one (by name)."""
    own = FLOWS[flow].colour if flow in FLOWS else None
    if own is not None:
        return own
    extras = sorted(f for f in shown if f not in FLOWS or FLOWS[f].colour is None)
    return PALETTE[extras.index(flow) % len(PALETTE)]


for _flow in BUILT_IN:
    register(_flow)

# The paper's four flows as an enum (public API: ``value_and_grad(Flow.C, ...)``).
Flow = enum.StrEnum("Flow", {name: name for name in FLOWS})
