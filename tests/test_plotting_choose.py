"""The one rule that picks which run a figure shows (bptt_cli.plotting.choose)."""

from __future__ import annotations

import random

import pandas as pd

from bptt_cli.plotting import choose
from bptt_cli.plotting.choose import Candidate


def run(flow: str, clip: str = "NORM", epochs: int = 10, seeds: int = 3, key: str | None = None) -> Candidate:
    return Candidate(key or f"{flow}-{clip}-{epochs}-{seeds}", flow, clip, epochs, seeds)


def ranked(candidates: list[Candidate], prefer=()) -> list[str]:
    """Keys best first, from the candidates in a shuffled order (the rule must not see it)."""
    shuffled = random.Random(len(candidates)).sample(candidates, len(candidates))
    return [c.key for c in sorted(shuffled, key=lambda c: choose.rank(c, prefer))]


def test_flow_order_without_a_preference_is_the_papers_then_truncations_by_k():
    flows = ["X", "T10", "S", "T2", "C", "M", "R"]
    assert ranked([run(f, key=f) for f in flows]) == ["R", "M", "C", "S", "T2", "T10", "X"]


def test_preferred_flows_first_in_their_order_then_the_others():
    flows = ["S", "M", "R", "C", "T3"]
    assert ranked([run(f, key=f) for f in flows], prefer=("C", "R")) == ["C", "R", "M", "S", "T3"]
    assert ranked([run(f, key=f) for f in flows], prefer=("T3",)) == ["T3", "R", "M", "C", "S"]


def test_flow_before_clip_before_epochs_before_seeds_before_key():
    candidates = [
        run("R", "NORM", epochs=1000, seeds=5, key="r-norm"),
        run("C", "NONE", epochs=10, seeds=1, key="c-none"),
        run("C", "VALUE", epochs=10, seeds=1, key="c-value"),
        run("C", "NORM", epochs=10, seeds=1, key="c-norm-short"),
        run("C", "NORM", epochs=20, seeds=1, key="c-norm-long-1-seed"),
        run("C", "NORM", epochs=20, seeds=3, key="c-norm-long-b"),
        run("C", "NORM", epochs=20, seeds=3, key="c-norm-long-a"),
        run("C", "weird", epochs=99, seeds=9, key="c-unknown-clip"),
    ]
    assert ranked(candidates, prefer=("C", "R")) == [
        "c-norm-long-a",
        "c-norm-long-b",
        "c-norm-long-1-seed",
        "c-norm-short",
        "c-value",
        "c-none",
        "c-unknown-clip",
        "r-norm",
    ]
    assert choose.best(candidates, prefer=("C", "R")).key == "c-norm-long-a"
    assert choose.best(candidates).key == "r-norm"  # without a preference R comes first


def test_best_per_flow_keeps_the_figures_order_or_falls_back_to_the_best_of_all():
    candidates = [run("C", "VALUE"), run("C", "NORM"), run("M"), run("S"), run("R", "NONE")]
    chosen = choose.best_per_flow(candidates, ("R", "C"))
    assert [(c.flow, c.clip) for c in chosen] == [("R", "NONE"), ("C", "NORM")]
    assert [c.flow for c in choose.best_per_flow(candidates[:2], ("R", "C"))] == ["C"]
    assert [c.flow for c in choose.best_per_flow([run("S"), run("T4"), run("M")], ("R", "C"))] == ["M"]


def test_candidates_of_a_long_frame():
    frame = pd.DataFrame(
        [
            {"run_id": run_id, "flow": flow, "clip": "NORM", "seed": seed, "epoch": epoch}
            for run_id, flow, seeds, epochs in (("a", "R", 2, 3), ("b", "C", 1, 5))
            for seed in range(seeds)
            for epoch in range(1, epochs + 1)
        ]
    )
    assert choose.candidates_of(frame) == {
        "a": Candidate("a", "R", "NORM", epochs=3, seeds=2),
        "b": Candidate("b", "C", "NORM", epochs=5, seeds=1),
    }


def test_a_run_trained_the_default_way_is_shown_before_another_optimizer_or_precision():
    """A figure that names only flow and clip shows Keras' Adam in float32, even where a run of
    another optimizer or precision has more epochs or the smaller key."""
    candidates = [
        Candidate("a-optax", "C", "NORM", 20, 3, default=False),
        Candidate("b-adam", "C", "NORM", 10, 3),
        Candidate("c-value", "C", "VALUE", 10, 3),
    ]
    assert ranked(candidates) == ["b-adam", "a-optax", "c-value"]
    frame = pd.DataFrame(
        [
            {"run_id": run_id, "flow": "C", "clip": "NORM", "seed": 0, "epoch": 1, **variant}
            for run_id, variant in (
                ("a", {"optimizer": "adam-optax", "precision": "float32"}),
                ("b", {"optimizer": "adam", "precision": "float64"}),
                ("c", {"optimizer": None, "precision": None}),  # files of earlier releases
            )
        ]
    )
    assert {k: c.default for k, c in choose.candidates_of(frame).items()} == {
        "a": False,
        "b": False,
        "c": True,
    }
    assert choose.is_default({"optimizer": "adam"}) and not choose.is_default({"precision": "float64"})
