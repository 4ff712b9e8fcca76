"""The training protocol (docs/model.md §4): determinism, seeds as a vmapped axis, NaN isolation."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bptt_cli.core import flows, train
from bptt_cli.core.task import Task
from bptt_cli.problems import cartpole

N_DATA = 16
MAX_EPOCHS = 4


@pytest.fixture(scope="module")
def task():
    return cartpole.PROBLEM.make_task(1, {"loss": "FINAL"})


@pytest.fixture(scope="module")
def data(task):
    return task.sample_data(jax.random.key(42), N_DATA)


def hypers(seeds, lr=1e-3, clip_value=jnp.inf, clip_norm=1.0):
    n = len(seeds)
    return train.Hypers(
        key=jax.vmap(jax.random.key)(jnp.asarray(seeds)),
        learning_rate=jnp.broadcast_to(jnp.asarray(lr, jnp.float32), (n,)),
        clip_value=jnp.full((n,), clip_value, jnp.float32),
        clip_norm=jnp.full((n,), clip_norm, jnp.float32),
        level=jnp.ones((n,), jnp.float32),
        gates=jax.tree.map(lambda g: jnp.full((n,), g), flows.gates("R")),
    )


_CACHE = {}


def program(task, flow):
    if (task, flow) not in _CACHE:
        setup = train.Setup(flow, "adam", 8)
        task_of = lambda level: task  # noqa: E731
        chunk = partial(train.train_chunk, task_of, setup, MAX_EPOCHS)
        _CACHE[(task, flow)] = (
            jax.jit(jax.vmap(partial(train.init_state, task_of, setup))),
            jax.jit(jax.vmap(chunk, in_axes=(0, 0, None, None, None))),
        )
    return _CACHE[(task, flow)]


def train_runs(task, data, flow, hy, n_epochs=MAX_EPOCHS, chunks=None):
    init, chunk = program(task, flow)
    state = init(hy)
    collected = []
    for n in chunks or [n_epochs]:
        state, metrics, diverged = chunk(state, hy, *data, jnp.int32(n))
        collected.append(({k: np.asarray(v[:, :n]) for k, v in metrics.items()}, np.asarray(diverged[:, :n])))
    metrics = {k: np.concatenate([c[0][k] for c in collected], axis=1) for k in collected[0][0]}
    return state, metrics, np.concatenate([c[1] for c in collected], axis=1)


def test_metric_columns_and_semantics(task, data):
    _, m_r, _ = train_runs(task, data, "R", hypers([0]))
    _, m_c, _ = train_runs(task, data, "C", hypers([0]))
    assert set(m_r) == {
        "batch_loss",
        "train_loss",
        "test_loss",
        "update_sq_norm",
        "cos_mr",
        "c_kept_fraction",
        "clip_active_fraction",
    }
    assert np.all(np.isnan(m_r["cos_mr"])) and np.all(np.isnan(m_r["c_kept_fraction"]))  # one gradient only
    assert np.all(np.abs(m_c["cos_mr"]) <= 1.0)
    assert np.all((m_c["c_kept_fraction"] > 0) & (m_c["c_kept_fraction"] <= 1))
    for m in (m_r, m_c):
        for name in ("batch_loss", "train_loss", "test_loss", "update_sq_norm"):
            assert np.all(np.isfinite(m[name])), name
        assert np.all((m["test_loss"] >= 0) & (m["test_loss"] <= 2))
        assert np.all(m["update_sq_norm"] > 0)
    # Training makes progress on the training set within a few epochs.
    assert m_r["train_loss"][0, -1] < m_r["train_loss"][0, 0]


def test_same_seed_same_numbers(task, data):
    _, a, _ = train_runs(task, data, "R", hypers([5]))
    _, b, _ = train_runs(task, data, "R", hypers([5]))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    _, c, _ = train_runs(task, data, "R", hypers([6]))
    assert not np.array_equal(a["test_loss"], c["test_loss"])


def test_vmapped_seed_equals_single_seed(task, data):
    _, batch, _ = train_runs(task, data, "C", hypers([1, 2, 3]))
    _, single, _ = train_runs(task, data, "C", hypers([2]))
    for name in ("batch_loss", "train_loss", "test_loss", "update_sq_norm", "cos_mr"):
        np.testing.assert_allclose(batch[name][1], single[name][0], rtol=2e-5, err_msg=name)


def test_chunking_does_not_change_results(task, data):
    state_a, a, _ = train_runs(task, data, "R", hypers([0, 1]), chunks=[4])
    state_b, b, _ = train_runs(task, data, "R", hypers([0, 1]), chunks=[1, 3])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    jax.tree.map(np.testing.assert_array_equal, state_a.theta, state_b.theta)


def test_nan_seed_is_flagged_and_isolated(task, data):
    lr = jnp.asarray([1e-3, jnp.nan, 1e-3], jnp.float32)
    state, bad, diverged = train_runs(task, data, "R", hypers([0, 1, 2], lr=lr))
    _, good, _ = train_runs(task, data, "R", hypers([0, 1, 2]))
    assert diverged[1].all() and not diverged[[0, 2]].any()
    # The diverged run stopped updating: its parameters are still the initial ones.
    init, _ = program(task, "R")
    start = init(hypers([0, 1, 2], lr=lr))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[1], b[1]), state.theta, start.theta)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state.theta))
    for name in ("train_loss", "test_loss"):
        np.testing.assert_allclose(bad[name][[0, 2]], good[name][[0, 2]], rtol=2e-5)


def test_clip_value_rows_share_the_program_and_differ(task, data):
    """Two clip thresholds as two rows of one compiled call: the clip acts on the row whose
    threshold is small and on no other, and the rows' training differs."""
    hy = hypers([0, 0], clip_value=jnp.asarray([jnp.inf, 1e-4]), clip_norm=jnp.inf)
    _, m, _ = train_runs(task, data, "R", hy)
    assert np.all(m["clip_active_fraction"][0] == 0) and np.all(m["clip_active_fraction"][1] == 1)
    assert not np.allclose(m["test_loss"][0], m["test_loss"][1])
    _, chunk = program(task, "R")
    size = chunk._cache_size()
    train_runs(task, data, "R", hypers([0, 0], clip_value=jnp.asarray([1.0, 1e-3]), clip_norm=jnp.inf))
    assert chunk._cache_size() == size  # other thresholds, the same program


def test_chunk_length_is_traced_not_recompiled(task, data):
    """One compiled program serves every chunk length (the runner adapts it on the fly)."""
    _, chunk = program(task, "R")
    hy = hypers([7, 8, 9, 10, 11])  # a row count no other test uses
    init, _ = program(task, "R")
    state = init(hy)
    state, _, _ = chunk(state, hy, *data, jnp.int32(1))
    size = chunk._cache_size()
    for n in (2, 3, 1):
        state, _, _ = chunk(state, hy, *data, jnp.int32(n))
    assert chunk._cache_size() == size


def test_an_overflowing_update_norm_under_norm_marks_the_run_diverged(task, data):
    """docs/model.md §3, as released: tf.clip_by_global_norm turns an update whose sum of squares
    overflows float32 into NaN, so the run dies at its first update (optax's clip would hand
    Adam a zero update and the run would go on, unflagged)."""
    huge = Task(**{**task.__dict__, "loss": lambda xs, us: (1e30 * task.loss(xs, us)[0], {})})
    hy = hypers([0, 1], clip_norm=1.0)
    state, m, diverged = train_runs(huge, data, "R", hy)
    assert np.all(m["update_sq_norm"] == np.inf)  # the overflow is real: sum of squares > 3.4e38
    assert np.all(np.isfinite(m["batch_loss"]))  # every entry of the update is finite
    assert diverged.all()
    init, _ = program(huge, "R")
    start = init(hy)  # stopped at the first update: the initial parameters, kept finite
    jax.tree.map(np.testing.assert_array_equal, state.theta, start.theta)
