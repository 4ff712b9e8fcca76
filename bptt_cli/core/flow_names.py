"""The gradient flows by name (docs/model.md §2): parsing and the order they are shown and planned in.

Kept free of jax, so that definitions are checked and figures ordered without loading it;
:mod:`bptt_cli.core.flows`, which decides where gradients stop, re-exports everything here.
"""

from __future__ import annotations

import enum
import re

__all__ = ["FLOW_ORDER", "Flow", "canonical_flow", "flow_rank", "truncation"]


class Flow(enum.StrEnum):
    """The paper's four gradient flows. Truncated BPTT is written ``"T<k>"``."""

    R = "R"  # regular: full backpropagation through time
    M = "M"  # modified: feedback only along the physics path
    S = "S"  # stopped: no feedback through time
    C = "C"  # combined: M's update where its sign agrees with R's


# The order of the paper's figures: flows are listed, planned and drawn in it; T<k> come last.
FLOW_ORDER = ("R", "M", "C", "S")

_TRUNCATED = re.compile(r"T([1-9][0-9]*)")


def canonical_flow(flow: str | Flow) -> str:
    """Upper-case flow name, validated. Raises ValueError for anything else."""
    name = (flow.value if isinstance(flow, Flow) else str(flow)).strip().upper()
    if name in Flow.__members__ or _TRUNCATED.fullmatch(name):
        return name
    raise ValueError(f"unknown flow {flow!r}; allowed: R, M, S, C, or T<k> with k >= 1 (truncated BPTT)")


def truncation(flow: str) -> int | None:
    """``k`` for a truncated flow ``"T<k>"``, else None."""
    match = _TRUNCATED.fullmatch(flow)
    return int(match.group(1)) if match else None


def flow_rank(flow: str) -> tuple[int, int, str]:
    """Sort key: R, M, C, S, then T<k> by k, then anything else by name."""
    if flow in FLOW_ORDER:
        return (FLOW_ORDER.index(flow), 0, "")
    k = truncation(flow)
    return (len(FLOW_ORDER), k, "") if k is not None else (len(FLOW_ORDER) + 1, 0, str(flow))
