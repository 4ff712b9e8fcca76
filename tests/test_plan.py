"""The pure planner (no jax): programs, the row layout of a program, and its chunk schedule."""

import dataclasses
import itertools

import pytest

from bptt_cli import config, problems
from bptt_cli.core import devices, plan

GRID = """
problem = "cartpole"
[grid]
levels = [1, 2]
flows = ["S", "T3", "C", "R", "M"]
clips = ["NORM", "NONE"]
[train]
epochs = 100
seeds = 3
n_data = 16
"""


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    path = tmp_path_factory.mktemp("def") / "g.toml"
    path.write_text(GRID)
    return config.resolve(config.load(str(path)))


def test_narrow_programs_in_figure_order(specs):
    programs = plan.plan([(s, 0) for s in specs], devices.profile("cpu"), problems.get)
    assert [(p.level, p.flow) for p in programs] == [
        (level, flow) for level in (1, 2) for flow in ("R", "M", "C", "S", "T3")
    ]
    assert all(p.rows == 2 * 3 and not p.levels_padded for p in programs)


def test_row_layout_fills_to_the_device_count(specs):
    program = plan.plan([(s, 0) for s in specs[:2]], devices.profile("cpu"), problems.get)[0]
    layout = plan.RowLayout.of(program, n_devices=4)
    assert program.rows == 6 and len(layout.rows) == 8 and layout.n_real == 6
    assert layout.rows[6:] == (layout.rows[5], layout.rows[5])  # fillers copy the last row
    first, second = program.runs
    assert layout.slices == {first.run_id: slice(0, 3), second.run_id: slice(3, 6)}
    assert [seed for _, seed in layout.rows[:6]] == [*first.seeds, *second.seeds]
    assert len(plan.RowLayout.of(program, n_devices=3).rows) == 6  # already a multiple


def test_chunks_stop_at_diagnosed_epochs_and_the_end(specs):
    spec = dataclasses.replace(specs[0], diagnostics=(0, 1, 10, 100))
    program = plan.plan([(spec, 0)], devices.profile("cpu"), problems.get)[0]
    assert plan.chunk_stops(program) == [1, 10, 100]  # epoch 0 is taken before any chunk
    resumed = plan.plan([(spec, 10)], devices.profile("cpu"), problems.get)[0]
    assert plan.chunk_stops(resumed) == [100]
    stops = plan.chunk_stops(program)
    assert plan.next_chunk(0, 64, stops) == 1
    assert plan.next_chunk(1, 64, stops) == 9
    assert plan.next_chunk(10, 64, stops) == 64
    assert plan.next_chunk(74, 64, stops) == 26
    assert plan.next_chunk(10, 0, stops) == 1  # at least one epoch
    assert plan.next_chunk(10, 500, stops, cap=8) == 8


def test_chunks_tile_the_span_exactly(specs):
    spec = dataclasses.replace(specs[0], diagnostics=(0, 1, 10, 100))
    program = plan.plan([(spec, 3)], devices.profile("cpu"), problems.get)[0]
    stops, done, chunks = plan.chunk_stops(program), 3, []
    for wanted in (5, 1, 50, 7, 64, 64, 64):
        if done == program.epochs:
            break
        n = plan.next_chunk(done, wanted, stops)
        chunks.append((done, n))
        done += n
    assert done == 100 and all(a + n == b for (a, n), (b, _) in itertools.pairwise(chunks))
    assert {a + n for a, n in chunks} >= {10, 100}  # every diagnosed epoch ends a chunk
