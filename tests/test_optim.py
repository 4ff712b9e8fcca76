"""Optimizers and clip modes (docs/model.md §3): each rule against a float64 transcription of its TF 2.9
Keras kernel, written here, and the invariants of each transform."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bptt_cli.core.optim import (
    OPTIMIZERS,
    Clip,
    clip_by_global_norm,
    clip_thresholds,
    make_optimizer,
    optimizer_identity,
)

PARAMS = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}


def updates_for(clip, grads):
    value, norm = clip_thresholds(clip)
    opt = optax.chain(optax.clip(value), clip_by_global_norm(norm))
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


# --- every rule against its Keras kernel, in float64 -------------------------------------

# A gradient sequence that spans what training meets: entries from 1e-7 (quantum's first
# gradients) to 40, of both signs, a zero entry, small steps (norm below 1) and large ones.
SCALES = [1e-7, 3e-7, 1e-6, 1e-4, 0.01, 1.0, 40.0, 1e-7, 5.0, 1e-6]


def gradient_sequence():
    rng = np.random.default_rng(0)
    for scale in SCALES:
        w = scale * rng.uniform(0.5, 1.5, (4, 3)) * rng.choice([-1.0, 1.0], (4, 3))
        b = scale * rng.uniform(0.5, 1.5, 3) * rng.choice([-1.0, 1.0], 3)
        w[0, 0] = 0.0
        yield {"w": w.astype(np.float32), "b": b.astype(np.float32)}


def keras_clip(g, clip):
    """tf.clip_by_value(-1, 1) / tf.clip_by_global_norm(1.0), in float64."""
    g = {k: v.astype(np.float64) for k, v in g.items()}
    if clip == "VALUE":
        return {k: np.clip(v, -1.0, 1.0) for k, v in g.items()}
    if clip == "NORM":
        norm = math.sqrt(sum(float(np.sum(v**2)) for v in g.values()))
        scale = 1.0 * min(1.0 / norm, 1.0) if math.isfinite(norm) else math.nan
        return {k: v * scale for k, v in g.items()}
    return g


def keras_rule(name, lr=1e-3):
    """``(slots, t, g) -> delta`` for one array, the Keras (TF 2.9) update written out."""
    if name == "adam":

        def rule(s, t, g):
            s.setdefault("m", 0 * g)
            s.setdefault("v", 0 * g)
            s["m"] = 0.9 * s["m"] + 0.1 * g
            s["v"] = 0.999 * s["v"] + 0.001 * g * g
            alpha = lr * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
            return -alpha * s["m"] / (np.sqrt(s["v"]) + 1e-7)

    elif name == "adam-optax":  # the bias-corrected form, eps after the correction

        def rule(s, t, g):
            s.setdefault("m", 0 * g)
            s.setdefault("v", 0 * g)
            s["m"] = 0.9 * s["m"] + 0.1 * g
            s["v"] = 0.999 * s["v"] + 0.001 * g * g
            m_hat, v_hat = s["m"] / (1 - 0.9**t), s["v"] / (1 - 0.999**t)
            return -lr * m_hat / (np.sqrt(v_hat) + 1e-7)

    elif name == "sgd":

        def rule(s, t, g):
            return -lr * g

    elif name.startswith("momentum-"):
        momentum = float(name.split("-")[1])

        def rule(s, t, g):
            s["a"] = momentum * s.get("a", 0 * g) - lr * g
            return s["a"]

    elif name == "adagrad":

        def rule(s, t, g):
            s["acc"] = s.get("acc", 0 * g + 0.1) + g * g
            return -lr * g / (np.sqrt(s["acc"]) + 1e-7)

    elif name == "adadelta":

        def rule(s, t, g):
            s["ag"] = 0.95 * s.get("ag", 0 * g) + 0.05 * g * g
            u = np.sqrt(s.get("au", 0 * g) + 1e-7) / np.sqrt(s["ag"] + 1e-7) * g
            s["au"] = 0.95 * s.get("au", 0 * g) + 0.05 * u * u
            return -lr * u

    elif name == "rmsprop":

        def rule(s, t, g):
            s["ms"] = 0.9 * s.get("ms", 0 * g) + 0.1 * g * g
            return -lr * g / (np.sqrt(s["ms"]) + 1e-7)

    return rule


@pytest.mark.parametrize("clip", ["NONE", "VALUE", "NORM"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_follows_its_keras_rule(name, clip):
    """Ten updates, gradients from 1e-7 to 40: every update equals the float64 rule's to
    float32 rounding, entry by entry."""
    params = {"w": jnp.ones((4, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    opt = make_optimizer(name, 1e-3, *clip_thresholds(clip))
    update = jax.jit(opt.update)
    state = opt.init(params)
    rule, slots = keras_rule(name), {k: {} for k in params}
    for t, g in enumerate(gradient_sequence(), start=1):
        delta, state = update(g, state, params)
        clipped = keras_clip(g, clip)
        for k in params:
            ref = rule(slots[k], t, clipped[k])
            error = np.abs(np.asarray(delta[k], np.float64) - ref)
            np.testing.assert_array_less(error, 2e-5 * np.abs(ref) + 1e-30, err_msg=f"{k} at update {t}")


def test_adams_first_steps_on_tiny_gradients_are_kerass_not_optaxs():
    """At quantum's first gradients (1e-7) Keras' effective eps is 3.2e-6: a step of about
    0.03 lr, where the bias-corrected form takes half of lr (16 times further)."""
    g = {"w": jnp.full((3,), 1e-7, jnp.float32)}
    params = {"w": jnp.zeros(3, jnp.float32)}
    steps = {}
    for name in ("adam", "adam-optax"):
        opt = make_optimizer(name, 1e-3, math.inf, math.inf)
        steps[name] = float(-opt.update(g, opt.init(params), params)[0]["w"][0])
    keras = 1e-3 * math.sqrt(1 - 0.999) / 0.1 * (0.1 * 1e-7) / (math.sqrt(0.001) * 1e-7 + 1e-7)
    np.testing.assert_allclose(steps["adam"], keras, rtol=2e-5)  # TF rounds 1 - 0.999 in float32
    np.testing.assert_allclose(steps["adam-optax"], 1e-3 * 1e-7 / (1e-7 + 1e-7), rtol=2e-5)
    assert steps["adam-optax"] > 15 * steps["adam"]  # 16x


def test_a_non_finite_global_norm_turns_the_update_into_nan():
    """tf.clip_by_global_norm: every entry finite, the sum of squares overflowing float32."""
    g = {"w": jnp.asarray([2e19, 1.0], jnp.float32), "b": jnp.zeros(2, jnp.float32)}
    for name in ("adam", "sgd"):
        opt = make_optimizer(name, 1e-3, *clip_thresholds("NORM"))
        delta, _ = opt.update(g, opt.init(g), g)
        assert all(bool(jnp.all(jnp.isnan(leaf))) for leaf in jax.tree.leaves(delta)), name
        # Clip NONE hands the same update to the optimizer unchanged (Adam's v overflows to inf).
        opt = make_optimizer(name, 1e-3, *clip_thresholds("NONE"))
        delta, _ = opt.update(g, opt.init(g), g)
        assert not any(bool(jnp.any(jnp.isnan(leaf))) for leaf in jax.tree.leaves(delta)), name


def test_adam_optax_is_optaxs_adam_and_inf_thresholds_are_identity():
    grads = random_grads(jax.random.key(0), 3.0)
    ours = make_optimizer("adam-optax", 1e-3, math.inf, math.inf)
    plain = optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-7)
    s1, s2 = ours.init(PARAMS), plain.init(PARAMS)
    for _ in range(3):
        u1, s1 = ours.update(grads, s1, PARAMS)
        u2, s2 = plain.update(grads, s2, PARAMS)
        jax.tree.map(np.testing.assert_array_equal, u1, u2)


def test_rules_that_changed_since_0_3_have_new_identities():
    assert optimizer_identity("adam") != "adam"  # 0.3.0 hashed "adam" for optax's rule
    assert optimizer_identity("adagrad") != "adagrad"  # optax's eps inside the square root
    assert optimizer_identity("sgd") == "sgd"
    assert len({optimizer_identity(name) for name in OPTIMIZERS}) == len(OPTIMIZERS)


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
