"""Device-dependent speed settings, in one place, each with where its value comes from.

None of these settings changes a result beyond float32 rounding: they decide how runs are
grouped into compiled programs and how those programs are compiled.

Why a GPU wants different settings from a CPU: each run is a scan over 50-200 simulator steps
inside a scan over 32 minibatches, for 1000 epochs. On a GPU every loop iteration costs at
least a kernel launch, whatever the number of rows batched into it, so a grid's wall time is
about (programs run one after another) × (sequential iterations per program) × (launch cost),
and rows added to a program are nearly free. On a CPU the arithmetic itself is the cost, so a
row that computes more than it needs (an M run paying for R's backward pass) is slower.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

GROUPINGS = ("auto", "narrow", "wide")


@dataclass(frozen=True)
class Profile:
    """How programs are formed and compiled on one kind of device.

    Attributes:
      merge_flows: runs of different flows share a program (the flow is per-row data, and C
        rows make every row compute g_R and g_M as one vmapped pass of twice the width).
      pad_levels: levels that change shapes (cart-pole's poles) are padded to the largest level
        of the grid and share a program.
      unroll: unroll factor of the horizon scans.
      compiler_options: extra XLA options handed to ``jax.jit(...).lower(...).compile``.
      matmul_precision: float32 matrix products at full precision (no TF32 on a GPU), so that
        a GPU run agrees with a CPU run to float32 rounding.
      basis: where these values come from.
    """

    platform: str
    merge_flows: bool
    pad_levels: bool
    unroll: int = 1
    compiler_options: dict[str, str] = field(default_factory=dict)
    matmul_precision: str = "highest"
    basis: str = ""


PROFILES = {
    "cpu": Profile(
        platform="cpu",
        merge_flows=False,
        pad_levels=False,
        unroll=1,
        basis=(
            "measured on 2 CPU cores (make bench): one program per flow keeps M and S off R's "
            "backward pass and C at its two leanest passes; unrolling the horizon did not help"
        ),
    ),
    "gpu": Profile(
        platform="gpu",
        merge_flows=True,
        pad_levels=True,
        unroll=4,
        basis=(
            "UNMEASURED on a GPU (none was available when this was written): chosen from public "
            "evidence that small loop bodies are launch-bound on GPUs (jax-ml/jax#2491, #30245), "
            "so fewer, wider programs and some unrolling should win; XLA's while-loop command "
            "buffers are left at XLA's defaults because recent reports show crashes "
            "(openxla/xla#35760). Run `make bench` on a GPU to measure and revise."
        ),
    ),
}


def profile(platform: str, grouping: str = "auto") -> Profile:
    """The profile for a jax platform (``"cpu"``, ``"gpu"``/``"cuda"``/``"rocm"``, ...).

    ``grouping`` overrides the program layout: ``"narrow"`` is one program per flow and shape
    (the CPU layout), ``"wide"`` merges flows and pads levels (the GPU layout). The
    environment variables ``BPTT_UNROLL`` (an integer) and ``BPTT_COMPILER_OPTIONS`` (a JSON
    object of XLA options) override the compile settings, for measuring alternatives.
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; allowed: {', '.join(GROUPINGS)}")
    base = PROFILES["cpu" if platform == "cpu" else "gpu"]
    base = replace(base, platform=platform)
    if grouping != "auto":
        wide = grouping == "wide"
        base = replace(base, merge_flows=wide, pad_levels=wide)
    if "BPTT_UNROLL" in os.environ:
        base = replace(base, unroll=max(1, int(os.environ["BPTT_UNROLL"])))
    if "BPTT_COMPILER_OPTIONS" in os.environ:
        base = replace(base, compiler_options=dict(json.loads(os.environ["BPTT_COMPILER_OPTIONS"])))
    return base


def current(grouping: str = "auto") -> Profile:
    """The profile of jax's default backend."""
    import jax

    return profile(jax.default_backend(), grouping)
