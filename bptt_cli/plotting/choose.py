"""Which run a figure shows where it has a choice: one rule for every figure.

A figure may name the flows it prefers (the diagnostics: C, then R; the trajectories: R and C).
Candidate runs are then ranked by

1. flow: the preferred flows in the figure's order, then the others in the order of the paper's
   figures (:func:`bptt_cli.core.flow_names.flow_rank`);
2. clip: NORM, then VALUE, then NONE (:data:`bptt_cli.core.optim.CLIP_PREFERENCE`);
3. trained the default way (Keras' Adam, float32) before another optimizer or precision, so
   that a figure which names only the flow and clip shows what those alone mean;
4. the most epochs, then the most seeds: of two runs of one configuration in a folder (a smoke
   run and a paper run), the paper run;
5. the smaller key, so that the choice does not depend on the order the files were found in.

The test-loss curves use the rule within each configuration (only steps 4 and 5 differ there).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from bptt_cli.core.flow_names import flow_rank
from bptt_cli.core.optim import clip_rank
from bptt_cli.results import TRAINED_BY_DEFAULT


@dataclass(frozen=True)
class Candidate:
    """What the rule looks at of one run. ``key`` names the run to the caller (a run id, a
    file's path); ``epochs`` and ``seeds`` are 0 where the caller does not know them;
    ``default``: trained with the default optimizer and precision."""

    key: str
    flow: str
    clip: str
    epochs: int = 0
    seeds: int = 0
    default: bool = True


def rank(candidate: Candidate, prefer: Sequence[str] = ()) -> tuple:
    """Sort key of the rule: the smallest is the run to show."""
    flow = str(candidate.flow)
    flow_key = (prefer.index(flow), 0, 0, "") if flow in prefer else (len(prefer), *flow_rank(flow))
    return (
        *flow_key,
        clip_rank(candidate.clip),
        not candidate.default,
        -candidate.epochs,
        -candidate.seeds,
        candidate.key,
    )


def best(candidates: Iterable[Candidate], prefer: Sequence[str] = ()) -> Candidate:
    """The candidate to show (``candidates`` must not be empty)."""
    return min(candidates, key=lambda candidate: rank(candidate, prefer))


def best_per_flow(candidates: Iterable[Candidate], flows: Sequence[str]) -> list[Candidate]:
    """The best candidate of each of ``flows`` that has any, in the order of ``flows``; when
    none of them has, the best candidate of all (``candidates`` must not be empty)."""
    candidates = list(candidates)
    chosen = [
        best(c for c in candidates if c.flow == flow)
        for flow in flows
        if any(c.flow == flow for c in candidates)
    ]
    return chosen or [best(candidates)]


def candidates_of(frame: pd.DataFrame) -> dict[str, Candidate]:
    """Run id -> candidate, from a long frame of result rows (metrics or diagnostics: columns
    run_id, flow, clip, seed, epoch; optimizer and precision where there are any): its last
    epoch, its number of seeds and whether it was trained the default way."""
    other = pd.Series(False, index=frame.index)
    for column, value in TRAINED_BY_DEFAULT.items():
        if column in frame:
            other |= frame[column].fillna(value) != value
    runs = (
        frame.assign(_other=other)
        .groupby("run_id", sort=True)
        .agg(
            flow=("flow", "first"),
            clip=("clip", "first"),
            epochs=("epoch", "max"),
            seeds=("seed", "nunique"),
            other=("_other", "any"),
        )
    )
    return {
        str(run_id): Candidate(str(run_id), str(flow), str(clip), int(epochs), int(seeds), not other)
        for run_id, flow, clip, epochs, seeds, other in runs.itertuples(name=None)
    }


def is_default(config: dict) -> bool:
    """Whether a run's configuration (a sidecar's) was trained with the default optimizer and
    precision."""
    return all(config.get(column, value) == value for column, value in TRAINED_BY_DEFAULT.items())
