"""Optimizers and clip modes through optax (SPEC §3).

Clipping thresholds and the learning rate are plain numbers that may be traced, so runs that
differ only in clip mode or learning rate share one compiled program: a clip mode that is off
has an infinite threshold. Importing this module does not import optax (or jax): definitions
are checked against these names before anything heavy is loaded.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optax

__all__ = ["CLIP_PREFERENCE", "OPTIMIZERS", "Clip", "clip_rank", "clip_thresholds", "make_optimizer"]


class Clip(enum.StrEnum):
    """Applied to the update handed to the optimizer, after C's combination (SPEC §3)."""

    NONE = "NONE"
    VALUE = "VALUE"  # every entry clipped to [-clip_value, clip_value]
    NORM = "NORM"  # the whole update rescaled to global L2 norm <= clip_norm


# Which clip mode's run a figure shows when it shows one: the paper's main mode first.
CLIP_PREFERENCE = (Clip.NORM, Clip.VALUE, Clip.NONE)

# name -> (optax factory, its arguments besides the learning rate): Keras defaults, which the
# released runs inherited.
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "adam": ("adam", {"b1": 0.9, "b2": 0.999, "eps": 1e-7}),
    "sgd": ("sgd", {}),
    "momentum-0.8": ("sgd", {"momentum": 0.8, "nesterov": False}),
    "momentum-0.9": ("sgd", {"momentum": 0.9, "nesterov": False}),
    "momentum-0.95": ("sgd", {"momentum": 0.95, "nesterov": False}),
    "adagrad": ("adagrad", {"initial_accumulator_value": 0.1, "eps": 1e-7}),
    "adadelta": ("adadelta", {"rho": 0.95, "eps": 1e-7}),
    "rmsprop": ("rmsprop", {"decay": 0.9, "eps": 1e-7, "eps_in_sqrt": False}),
}


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

    factory, options = OPTIMIZERS[name]
    return optax.chain(
        optax.clip(value_threshold),
        optax.clip_by_global_norm(norm_threshold),
        getattr(optax, factory)(learning_rate, **options),
    )
