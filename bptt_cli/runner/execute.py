"""Executing a built program: a generator of chunks fetched to the host.

The next chunk is dispatched before the previous one is fetched, so whatever the caller does
with a chunk (commit it, draw progress) overlaps the device's work on the next. Nothing here
touches a file, a lock or a progress bar.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bptt_cli.core import diagnostics
from bptt_cli.core.plan import MAX_CHUNK, Chunk, chunk_stops, next_chunk
from bptt_cli.runner.build import Built

TARGET_CHUNK_SECONDS = 2.0  # chunk length is adapted so that results land about this often


@dataclass
class _InFlight:
    """A dispatched chunk: device arrays until fetched."""

    start: int
    n: int
    state: Any
    metrics: Any
    diverged: Any
    diagnostics: list[tuple[int, Any]]
    trajectories: Any

    @property
    def end(self) -> int:
        return self.start + self.n


def execute(built: Built, stop: Callable[[], bool] = lambda: False, cap: int = MAX_CHUNK) -> Iterator[Chunk]:
    """Train ``built`` from its start epoch to its last, yielding each chunk as it lands.

    ``stop()`` is asked before each dispatch: once it says yes, the chunks in flight are still
    yielded and the generator ends early. ``cap`` bounds the epochs per chunk.
    """
    program = built.program
    stops = chunk_stops(program)
    diagnosed = {e for spec in program.runs for e in spec.diagnostics} if built.diagnose else set()
    first = []
    if program.start_epoch == 0 and 0 in diagnosed:
        first.append((0, built.diagnose(built.state.theta, *built.inputs)))
    head = _dispatch(built, built.state, program.start_epoch, 1, diagnosed, first)
    inflight, wanted = deque([head]), 1  # one epoch at a time until a chunk's speed is known
    last_landed = time.perf_counter()
    while inflight:
        head = inflight[-1]
        if head.end < program.epochs and not stop():  # the device works on it meanwhile
            n = next_chunk(head.end, wanted, stops, cap)
            inflight.append(_dispatch(built, head.state, head.end, n, diagnosed, []))
        chunk = inflight.popleft()
        metrics, diverged, leaves, taken, trajectories = jax.device_get(
            (
                chunk.metrics,
                chunk.diverged,
                jax.tree.leaves(chunk.state),
                chunk.diagnostics,
                chunk.trajectories,
            )
        )
        landed = time.perf_counter()
        seconds = (landed - last_landed) / chunk.n
        last_landed = landed
        wanted = int(np.clip(round(TARGET_CHUNK_SECONDS / max(seconds, 1e-6)), 1, cap))
        yield Chunk(
            start=chunk.start,
            n=chunk.n,
            metrics=metrics,
            diverged=diverged,
            leaves=leaves,
            diagnostics=[(epoch, _with_growth(arrays)) for epoch, arrays in taken],
            trajectories=trajectories,
            seconds=seconds,
        )


def _dispatch(built: Built, state, start: int, n: int, diagnosed: set[int], taken: list) -> _InFlight:
    """Launch epochs ``start + 1 ... start + n`` (and the diagnostics or trajectories due at
    their end) without waiting for them."""
    state, metrics, diverged = built.chunk(state, *built.inputs, jnp.int32(n))
    end = start + n
    if end in diagnosed:
        taken.append((end, built.diagnose(state.theta, *built.inputs)))
    trajectories = built.trajectories(state.theta, *built.inputs) if end == built.program.epochs else None
    return _InFlight(start, n, state, metrics, diverged, taken, trajectories)


def _with_growth(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The diagnostics in column order, with the running products of the per-step factors."""
    growth = {
        name.replace("jac_", "log10_growth_"): diagnostics.log10_growth(arrays[name])
        for name in ("jac_physics", "jac_closed_loop")
    }
    return {name: np.asarray({**arrays, **growth}[name]) for name in diagnostics.COLUMNS}
