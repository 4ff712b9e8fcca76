"""Optimizers and clip modes as the released runs had them: TF 2.9 Keras (docs/model.md §3).

Each update rule is written out below as an optax ``GradientTransformation``, transcribing the
Keras (``OptimizerV2``) kernel it reproduces, operation by operation; only ``adam-optax`` (the
rule of releases up to 0.3.0, kept for comparison) is optax's own. Clipping thresholds and the
learning rate are plain numbers that may be traced, so runs that differ only in clip mode or
learning rate share one compiled program: a clip mode that is off has an infinite threshold.
Importing this module does not import optax (or jax): definitions are checked against these
names before anything heavy is loaded.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import optax

__all__ = [
    "CLIP_PREFERENCE",
    "OPTIMIZERS",
    "Clip",
    "clip_rank",
    "clip_thresholds",
    "make_optimizer",
    "optimizer_identity",
]


class Clip(enum.StrEnum):
    """Applied to the update handed to the optimizer, after C's combination (docs/model.md §3)."""

    NONE = "NONE"
    VALUE = "VALUE"  # every entry clipped to [-clip_value, clip_value]
    NORM = "NORM"  # the whole update rescaled to global L2 norm <= clip_norm


# Which clip mode's run a figure shows when it shows one: the paper's main mode first.
CLIP_PREFERENCE = (Clip.NORM, Clip.VALUE, Clip.NONE)


class Rule(NamedTuple):
    """An offered optimizer: its update rule (a function below) with Keras' defaults, and
    ``identity``, the name a run id hashes. A rule that changes gets a new identity, so runs
    trained with the old rule are not taken for runs of the new one."""

    rule: str
    options: dict[str, Any]
    identity: str


OPTIMIZERS: dict[str, Rule] = {
    # Release 0.3.0 hashed "adam" for optax's rule: Keras' rule is a new identity.
    "adam": Rule("keras_adam", {"b1": 0.9, "b2": 0.999, "eps": 1e-7}, "adam-keras"),
    "adam-optax": Rule("optax_adam", {"b1": 0.9, "b2": 0.999, "eps": 1e-7}, "adam-optax"),
    "sgd": Rule("keras_sgd", {"momentum": 0.0}, "sgd"),
    "momentum-0.8": Rule("keras_sgd", {"momentum": 0.8}, "momentum-0.8"),
    "momentum-0.9": Rule("keras_sgd", {"momentum": 0.9}, "momentum-0.9"),
    "momentum-0.95": Rule("keras_sgd", {"momentum": 0.95}, "momentum-0.95"),
    # Release 0.3.0 had optax's adagrad (eps inside the square root): Keras' is a new identity.
    "adagrad": Rule("keras_adagrad", {"initial_accumulator": 0.1, "eps": 1e-7}, "adagrad-keras"),
    "adadelta": Rule("keras_adadelta", {"rho": 0.95, "eps": 1e-7}, "adadelta"),
    "rmsprop": Rule("keras_rmsprop", {"rho": 0.9, "eps": 1e-7}, "rmsprop"),
}


def optimizer_identity(name: str) -> str:
    """The name of ``name``'s update rule in run ids (unknown names hash as themselves)."""
    return OPTIMIZERS[name].identity if name in OPTIMIZERS else name


def clip_rank(clip: str) -> int:
    """Sort key of :data:`CLIP_PREFERENCE` (unknown modes last)."""
    return CLIP_PREFERENCE.index(clip) if clip in CLIP_PREFERENCE else len(CLIP_PREFERENCE)


def clip_thresholds(clip: Clip | str, clip_value: float = 1.0, clip_norm: float = 1.0) -> tuple[float, float]:
    """``(value_threshold, norm_threshold)`` for a clip mode; ``inf`` switches a clip off."""
    clip = Clip(clip)
    return (
        clip_value if clip is Clip.VALUE else math.inf,
        clip_norm if clip is Clip.NORM else math.inf,
    )


def make_optimizer(name: str, learning_rate, value_threshold, norm_threshold) -> optax.GradientTransformation:
    """Clip by value, clip by global norm, then the optimizer; any argument may be traced."""
    import optax

    rule = OPTIMIZERS[name]
    return optax.chain(
        optax.clip(value_threshold),
        clip_by_global_norm(norm_threshold),
        _RULES[rule.rule](learning_rate, **rule.options),
    )


# --- clipping -----------------------------------------------------------------------------


def clip_by_global_norm(max_norm) -> optax.GradientTransformation:
    """``tf.clip_by_global_norm``: every entry times ``max_norm·min(1/‖u‖, 1/max_norm)``, and a
    NaN update when ``‖u‖`` is not finite (an overflowing sum of squares included), so that the
    run is flagged diverged there as the released runs died (optax's version would hand the
    optimizer a zero update instead). ``max_norm = inf`` leaves the update as it is."""
    import jax
    import jax.numpy as jnp
    import optax

    def update(updates, state, params=None):
        del params
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(u)) for u in jax.tree.leaves(updates)))
        # (norm - norm) is NaN exactly when the norm is not finite: TF's own device.
        scale = max_norm * jnp.minimum(1.0 / norm, 1.0 / max_norm) + (norm - norm)
        scale = jnp.where(jnp.isfinite(max_norm), scale, 1.0)
        return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# --- update rules (TF 2.9 Keras kernels; each returns the change to add to the parameters) ---


class _Slots(NamedTuple):
    step: Any  # int32 count of updates applied
    slots: tuple  # per-parameter accumulators, each a pytree like the parameters


def _rule(init_slots, apply) -> optax.GradientTransformation:
    """A transformation from ``init_slots(params) -> tuple of pytrees`` and
    ``apply(t, g, *slots) -> (delta, *new_slots)`` on single arrays (``t``: the step, from 1)."""
    import jax
    import jax.numpy as jnp
    import optax

    def init(params):
        return _Slots(jnp.zeros([], jnp.int32), init_slots(params))

    def update(grads, state, params=None):
        del params
        t = state.step + 1
        out = jax.tree.map(lambda g, *s: apply(t, g, *s), grads, *state.slots)
        treedef = jax.tree.structure(grads)
        parts = list(zip(*treedef.flatten_up_to(out), strict=True))
        delta, *slots = (treedef.unflatten(p) for p in parts)
        return delta, _Slots(t, tuple(slots))

    return optax.GradientTransformation(init, update)


def _zeros(params):
    import jax
    import jax.numpy as jnp

    return jax.tree.map(jnp.zeros_like, params)


def keras_adam(learning_rate, b1: float, b2: float, eps: float):
    """Keras' Adam (``ResourceApplyAdam``): ε-hat on the uncorrected second moment, the bias
    corrections folded into the step size."""
    import jax.numpy as jnp

    def apply(t, g, m, v):
        # Constants in the parameters' dtype, as TF's kernel computes them (T(1) - beta1()).
        one, beta1, beta2 = (g.dtype.type(c) for c in (1.0, b1, b2))
        step = t.astype(g.dtype)
        alpha = learning_rate * jnp.sqrt(one - beta2**step) / (one - beta1**step)
        m = m + (g - m) * (one - beta1)
        v = v + (g * g - v) * (one - beta2)
        return -(m * alpha.astype(g.dtype)) / (jnp.sqrt(v) + g.dtype.type(eps)), m, v

    return _rule(lambda p: (_zeros(p), _zeros(p)), apply)


def optax_adam(learning_rate, b1: float, b2: float, eps: float):
    """Adam as releases up to 0.3.0 had it: optax's bias-corrected form, ε after the correction."""
    import optax

    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def keras_sgd(learning_rate, momentum: float):
    """Keras' SGD; with momentum the heavy ball of ``ResourceApplyKerasMomentum``
    (``a ← momentum·a − lr·g``, ``θ ← θ + a``), never Nesterov."""
    if momentum == 0.0:
        return _rule(lambda p: (), lambda t, g: (-(g * learning_rate),))

    def apply(t, g, a):
        a = a * momentum - g * learning_rate
        return a, a

    return _rule(lambda p: (_zeros(p),), apply)


def keras_adagrad(learning_rate, initial_accumulator: float, eps: float):
    """Keras' Adagrad (``ResourceApplyAdagradV2``): ``acc ← acc + g²``,
    ``θ ← θ − lr·g/(√acc + ε)``, the accumulator starting at ``initial_accumulator``."""
    import jax
    import jax.numpy as jnp

    def apply(t, g, acc):
        acc = acc + g * g
        return -(g * learning_rate) / (jnp.sqrt(acc) + eps), acc

    return _rule(lambda p: (jax.tree.map(lambda x: jnp.full_like(x, initial_accumulator), p),), apply)


def keras_adadelta(learning_rate, rho: float, eps: float):
    """Keras' Adadelta (``ResourceApplyAdadelta``)."""
    import jax.numpy as jnp
    from jax import lax

    def apply(t, g, acc_g, acc_u):
        acc_g = acc_g * rho + g * g * (1 - rho)
        u = jnp.sqrt(acc_u + eps) * lax.rsqrt(acc_g + eps) * g
        acc_u = acc_u * rho + u * u * (1 - rho)
        return -(u * learning_rate), acc_g, acc_u

    return _rule(lambda p: (_zeros(p), _zeros(p)), apply)


def keras_rmsprop(learning_rate, rho: float, eps: float):
    """Keras' RMSprop without momentum or centering: ``ms ← ρ·ms + (1−ρ)·g²``,
    ``θ ← θ − lr·g/(√ms + ε)`` (ε outside the square root), ``ms`` starting at 0."""
    import jax.numpy as jnp

    def apply(t, g, ms):
        ms = rho * ms + (1 - rho) * (g * g)
        return -(g * learning_rate) / (jnp.sqrt(ms) + eps), ms

    return _rule(lambda p: (_zeros(p),), apply)


_RULES = {
    "keras_adam": keras_adam,
    "optax_adam": optax_adam,
    "keras_sgd": keras_sgd,
    "keras_adagrad": keras_adagrad,
    "keras_adadelta": keras_adadelta,
    "keras_rmsprop": keras_rmsprop,
}
