"""Building a program: its task and data, per-row numbers, shardings, and compiled functions.

Compiled functions are kept in a :class:`ProgramCache` keyed by everything static about them,
so that programs differing only in per-row numbers (or resumed at another epoch) reuse them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bptt_cli import problems
from bptt_cli.core import compile_cache, devices, diagnostics, flows, train
from bptt_cli.core.optim import clip_thresholds
from bptt_cli.core.plan import MAX_CHUNK, Program, RowLayout
from bptt_cli.core.spec import RunSpec
from bptt_cli.core.task import ProblemDef

N_TRAJECTORIES = 8  # test trajectories saved per seed at the end of a run


@contextmanager
def numerics(profile: devices.Profile, precision: str) -> Iterator[None]:
    """The numeric settings under which every program is traced, compiled and called (the run,
    the GPU compile, the benchmarks): the profile's matmul precision (full float32 products: a
    GPU would otherwise use TF32) and, for a float64 program, jax's x64; and, once per process,
    jax's persistent compilation cache (``core.compile_cache``: a program compiled by an earlier
    run, worker or SLURM task is read back, not compiled again)."""
    compile_cache.use()
    with jax.default_matmul_precision(profile.matmul_precision), jax.enable_x64(precision == "float64"):
        yield


def _within(profile: devices.Profile, precision: str, fn: Callable) -> Callable:
    """``fn`` called under :func:`numerics` (for functions jitted lazily, on first call)."""

    def call(*args):
        with numerics(profile, precision):
            return fn(*args)

    return call


@dataclass
class ProgramCache:
    """Jitted functions by kind and static setup: built once, reused by later programs."""

    functions: dict[tuple, Any] = field(default_factory=dict)

    def get(self, kind: str, key: tuple, make: Callable[[], Any]) -> Any:
        if (kind, key) not in self.functions:
            self.functions[(kind, key)] = make()
        return self.functions[(kind, key)]

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.functions if k == kind)


@dataclass
class Built:
    """A program ready to run on its devices.

    Attributes:
      layout: the rows of the vmapped axis.
      state: the training state of every row (resumed rows restored).
      inputs: ``(hypers, x_train, x_test)``, what every chunk is called with besides the state.
      chunk: the compiled ``(state, *inputs, n_epochs) -> (state, metrics, diverged)``.
      compile_seconds: XLA's compile of ``chunk`` (or reading it back from jax's persistent
        cache); trace_seconds: tracing and lowering it before (Python: never cached).
      diagnose: ``(theta, *inputs) -> name -> per-row arrays``, or None without diagnostics.
      trajectories: ``(theta, *inputs) -> (xs, us)`` per row.
      n_steps: the horizon; ``optima``: level -> best reachable loss (where the problem has one);
      drawing: the problem's drawing reference; ``state_shapes``: level -> a state's own shape
        where states are padded (else None).
    """

    program: Program
    layout: RowLayout
    devices: tuple
    state: train.TrainState
    inputs: tuple
    chunk: Any
    compile_seconds: float
    diagnose: Any
    trajectories: Any
    n_steps: int
    optima: dict[Any, float]
    drawing: str | None
    state_shapes: dict[Any, tuple[int, ...]] | None
    trace_seconds: float = 0.0


@dataclass
class Prepared:
    """What a program is before it meets devices: its task source and data, its rows and their
    numbers, and the jitted (not yet compiled) chunk function."""

    task_of: Callable
    data: Any
    n_steps: int
    layout: RowLayout
    hypers: train.Hypers
    x_train: Any
    x_test: Any
    data_axis: int | None
    init: Any
    chunk_fn: Any
    static: tuple


def prepare(
    program: Program, profile: devices.Profile, n_devices: int, cache: ProgramCache | None = None
) -> Prepared:
    """The program's task, data, rows for ``n_devices`` and jitted functions (nothing compiled)."""
    cache = cache if cache is not None else ProgramCache()
    problem = problems.get(program.problem_ref)
    task_of, data, n_steps = _task_source(program, problem)
    layout = RowLayout.of(program, n_devices)
    if program.levels_padded:
        x_train, x_test = (jnp.stack([data[spec.level][i] for spec, _ in layout.rows]) for i in (0, 1))
        data_axis = 0
    else:
        (x_train, x_test), data_axis = data, None
    # Drawn in float32 (as every built-in problem draws), widened for a float64 program.
    x_train, x_test = train.widen((x_train, x_test), program.precision)
    setup = train.Setup(
        program.flow, program.optimizer, program.batch_size, program.pair, profile.unroll, program.precision
    )
    static = (
        program.problem_ref,
        program.options,
        program.level,
        program.levels_padded,
        data_axis,
        program.precision,
    )
    init = cache.get(
        "init", (*static, setup), lambda: jax.jit(jax.vmap(partial(train.init_state, task_of, setup)))
    )
    chunk_fn = cache.get(
        "chunk",
        (*static, setup),
        lambda: jax.jit(
            jax.vmap(
                partial(train.train_chunk, task_of, setup, MAX_CHUNK),
                in_axes=(0, 0, data_axis, data_axis, None),
            )
        ),
    )
    return Prepared(
        task_of,
        data,
        n_steps,
        layout,
        _hypers(layout.rows, program.precision),
        x_train,
        x_test,
        data_axis,
        init,
        chunk_fn,
        static,
    )


def shardings(on: Sequence, data_axis: int | None) -> tuple[NamedSharding, NamedSharding, NamedSharding]:
    """How a program sits on the devices ``on``: ``(rows, data, replicated)``, the rows split
    over the devices, the data split with them where it is per row (padded levels), else
    copied to each."""
    mesh = Mesh(np.array(on), ("runs",))
    rows, replicated = NamedSharding(mesh, PartitionSpec("runs")), NamedSharding(mesh, PartitionSpec())
    return rows, rows if data_axis == 0 else replicated, replicated


def build(
    program: Program,
    profile: devices.Profile,
    cache: ProgramCache | None = None,
    saved: dict[str, list[np.ndarray]] | None = None,
) -> Built:
    """Compile ``program`` with its rows sharded over the process's devices (as many as the
    profile gives a program of its rows); ``saved`` maps run ids to checkpointed state leaves to
    resume from. Everything is traced and compiled under :func:`numerics`."""
    with numerics(profile, program.precision):
        return _build(program, profile, cache, saved)


def _build(program, profile, cache, saved) -> Built:
    cache = cache if cache is not None else ProgramCache()
    on = tuple(jax.devices())
    on = on[: profile.devices_for(program.rows, len(on))]
    problem = problems.get(program.problem_ref)
    p = prepare(program, profile, len(on), cache)
    task_of, data, layout, data_axis, static = p.task_of, p.data, p.layout, p.data_axis, p.static
    state = _restore(p.init(p.hypers), layout, saved or {})
    rows, data_sharding, _ = shardings(on, data_axis)
    hypers, state = jax.device_put((p.hypers, state), rows)
    x_train, x_test = jax.device_put((p.x_train, p.x_test), data_sharding)

    t0 = time.perf_counter()
    lowered = p.chunk_fn.lower(state, hypers, x_train, x_test, jnp.int32(1))
    t1 = time.perf_counter()
    compiled = lowered.compile(profile.compiler_options or None)  # read back when cached
    compile_seconds = time.perf_counter() - t1

    in_axes = (0, 0, data_axis, data_axis)
    n_diag = min(diagnostics.N_STATES, program.n_data)

    def diagnose(theta, hy, x_train, x_test):
        return diagnostics.diagnose(task_of(hy.level), theta, x_test[:n_diag], profile.unroll)

    diag_fn = None
    if any(spec.diagnostics for spec in program.runs):
        jitted = cache.get(
            "diagnostics",
            (*static, profile.unroll, n_diag),
            lambda: jax.jit(jax.vmap(diagnose, in_axes=in_axes)),
        )

        def on_one_device(theta, *inputs):
            # On ONE device, and finished before anything else is dispatched: jaxlib's CPU SVD
            # blocks XLA's thread pool (see diagnostics.py); five calls per run need no overlap.
            return jax.block_until_ready(jitted(*jax.device_put((theta, *inputs), on[0])))

        diag_fn = _within(profile, program.precision, on_one_device)

    n_traj = min(N_TRAJECTORIES, program.n_data)

    def trajectories(theta, hy, x_train, x_test):
        task = task_of(hy.level)
        return flows.rollout("R", task.controller, task.step, theta, x_test[:n_traj], task.n_steps)

    traj_fn = cache.get(
        "trajectories", (*static, n_traj), lambda: jax.jit(jax.vmap(trajectories, in_axes=in_axes))
    )
    return Built(
        program=program,
        layout=layout,
        devices=on,
        state=state,
        inputs=(hypers, x_train, x_test),
        chunk=compiled,
        compile_seconds=compile_seconds,
        trace_seconds=t1 - t0,
        diagnose=diag_fn,
        trajectories=_within(profile, program.precision, traj_fn),
        n_steps=p.n_steps,
        optima=_optima(program, problem, data),
        drawing=_drawing_ref(problem.drawing, program.problem_ref),
        state_shapes=_state_shapes(program, problem) if program.levels_padded else None,
    )


def _task_source(program: Program, problem: ProblemDef):
    """``task_of`` (a row's level -> Task, at trace time), per-level or shared data, n_steps."""
    options = dict(program.options)
    key = jax.random.key(program.data_seed)
    if program.levels_padded:

        def padded_task_of(level):
            return problem.make_padded_task(level, program.level, options)

        by_level = {level: padded_task_of(level).sample_data(key, program.n_data) for level in program.levels}
        return padded_task_of, by_level, padded_task_of(program.level).n_steps
    if problem.level_is_static:
        task = problem.make_task(program.level, options)
        return (lambda level: task), task.sample_data(key, program.n_data), task.n_steps
    task = problem.make_task(program.levels[0], options)

    def task_of(level):
        return problem.make_task(level, options)

    return task_of, task.sample_data(key, program.n_data), task.n_steps


def _hypers(rows: Sequence[tuple[RunSpec, int]], precision: str = "float32") -> train.Hypers:
    """The per-row numbers of a program: init key, learning rate, clip thresholds, level, flow."""
    thresholds = [clip_thresholds(spec.clip, spec.clip_value, spec.clip_norm) for spec, _ in rows]
    gates = [flows.gates(spec.flow) for spec, _ in rows]
    real = jnp.dtype(precision)
    return train.Hypers(
        key=jax.vmap(jax.random.key)(jnp.asarray([seed for _, seed in rows])),
        learning_rate=jnp.asarray([spec.learning_rate for spec, _ in rows], real),
        clip_value=jnp.asarray([value for value, _ in thresholds], real),
        clip_norm=jnp.asarray([norm for _, norm in thresholds], real),
        level=jnp.asarray([float(spec.level) for spec, _ in rows], real),
        gates=jax.tree.map(lambda *per_row: jnp.asarray(np.stack(per_row)), *gates),
    )


def _restore(state, layout: RowLayout, saved: dict[str, list[np.ndarray]]):
    """Overwrite the rows of resumed runs with their checkpoints (filler rows stay as they are)."""
    saved = {run_id: leaves for run_id, leaves in saved.items() if run_id in layout.slices}
    if not saved:
        return state
    leaves, treedef = jax.tree.flatten(state)
    leaves = [np.array(leaf) for leaf in leaves]
    for run_id, values in saved.items():
        for leaf, value in zip(leaves, values, strict=True):
            leaf[layout.slices[run_id]] = value
    return jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])


def _optima(program: Program, problem: ProblemDef, data) -> dict[Any, float]:
    """The problem's best reachable loss per level on the test states (float64, host)."""
    if problem.optimum is None:
        return {}
    options = dict(program.options)
    x_test = {
        level: np.asarray(data[level][1] if program.levels_padded else data[1]) for level in program.levels
    }
    return {level: float(problem.optimum(level, options, x_test[level])) for level in program.levels}


def _state_shapes(program: Program, problem: ProblemDef) -> dict[Any, tuple[int, ...]]:
    """A state's own shape per level, for cutting padded trajectories back to it."""
    shapes = {}
    for level in program.levels:
        task = problem.make_task(level, dict(program.options))
        shapes[level] = jax.eval_shape(
            lambda key, task=task: task.sample_data(key, 1)[0], jax.random.key(0)
        ).shape[1:]
    return shapes


def _drawing_ref(drawing: str | None, problem_ref: str) -> str | None:
    """A drawing reference that resolves from anywhere: a file named relative to a user's
    problem file becomes absolute."""
    if not drawing or ":" not in drawing or not problems.is_file_ref(problem_ref):
        return drawing
    module, attribute = drawing.rsplit(":", 1)
    return f"{problems.canonical_ref(module, Path(problem_ref).parent)}:{attribute}"
