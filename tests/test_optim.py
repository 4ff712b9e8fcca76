"""Optimizers and clip modes (SPEC §3): invariants of each transform."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bptt_cli.core.optim import OPTIMIZERS, Clip, clip_thresholds, make_optimizer

PARAMS = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}


def updates_for(clip, grads):
    value, norm = clip_thresholds(clip)
    opt = optax.chain(optax.clip(value), optax.clip_by_global_norm(norm))
    out, _ = opt.update(grads, opt.init(PARAMS), PARAMS)
    return out


def random_grads(key, scale):
    k1, k2 = jax.random.split(key)
    return {"w": scale * jax.random.normal(k1, (4, 3)), "b": scale * jax.random.normal(k2, (3,))}


def global_norm(tree):
    return float(jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(tree))))


@pytest.mark.parametrize("scale", [0.01, 1.0, 50.0])
def test_clip_invariants(scale):
    for i in range(10):
        grads = random_grads(jax.random.key(i), scale)
        none = updates_for(Clip.NONE, grads)
        value = updates_for(Clip.VALUE, grads)
        norm = updates_for(Clip.NORM, grads)
        jax.tree.map(np.testing.assert_array_equal, none, grads)
        assert all(float(jnp.max(jnp.abs(leaf))) <= 1.0 for leaf in jax.tree.leaves(value))
        jax.tree.map(lambda v, g: np.testing.assert_array_equal(v, jnp.clip(g, -1, 1)), value, grads)
        assert global_norm(norm) <= 1.0 + 1e-6
        if global_norm(grads) <= 1.0:
            jax.tree.map(np.testing.assert_array_equal, norm, grads)
        else:  # rescaled, direction kept
            ratio = global_norm(grads)
            for n, g in zip(jax.tree.leaves(norm), jax.tree.leaves(grads), strict=True):
                np.testing.assert_allclose(n * ratio, g, rtol=1e-5)


def test_thresholds():
    assert clip_thresholds("NONE") == (math.inf, math.inf)
    assert clip_thresholds("VALUE", 2.0, 3.0) == (2.0, math.inf)
    assert clip_thresholds("NORM", 2.0, 3.0) == (math.inf, 3.0)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_zero_updates_stay_finite(name):
    value, norm = clip_thresholds("NORM")
    opt = make_optimizer(name, 1e-3, value, norm)
    state = opt.init(PARAMS)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    for _ in range(3):
        updates, state = opt.update(zeros, state, PARAMS)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(updates))


def test_adam_matches_keras_defaults_and_inf_thresholds_are_identity():
    """Clip NONE through inf thresholds equals plain Adam(lr, 0.9, 0.999, eps 1e-7)."""
    grads = random_grads(jax.random.key(0), 3.0)
    ours = make_optimizer("adam", 1e-3, math.inf, math.inf)
    plain = optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-7)
    s1, s2 = ours.init(PARAMS), plain.init(PARAMS)
    for _ in range(3):
        u1, s1 = ours.update(grads, s1, PARAMS)
        u2, s2 = plain.update(grads, s2, PARAMS)
        jax.tree.map(np.testing.assert_array_equal, u1, u2)


def test_momentum_is_heavy_ball():
    opt = make_optimizer("momentum-0.9", 0.1, math.inf, math.inf)
    g = {"w": jnp.ones(2)}
    state = opt.init(g)
    u1, state = opt.update(g, state)
    u2, state = opt.update(g, state)
    np.testing.assert_allclose(u1["w"], -0.1)
    np.testing.assert_allclose(u2["w"], -0.1 * 1.9)


def test_rmsprop_eps_outside_sqrt():
    opt = make_optimizer("rmsprop", 1.0, math.inf, math.inf)
    g = {"w": jnp.array([2.0])}
    u, _ = opt.update(g, opt.init(g))
    expected = -2.0 / (math.sqrt(0.1 * 4.0) + 1e-7)
    np.testing.assert_allclose(u["w"], expected, rtol=1e-6)


def test_traced_thresholds_do_not_recompile():
    traces = []

    @jax.jit
    def step(grads, lr, value, norm):
        traces.append(1)
        opt = make_optimizer("adam", lr, value, norm)
        return opt.update(grads, opt.init(PARAMS), PARAMS)[0]

    grads = random_grads(jax.random.key(1), 5.0)
    step(grads, 1e-3, jnp.inf, 1.0)
    step(grads, 1e-2, 1.0, jnp.inf)
    assert len(traces) == 1
