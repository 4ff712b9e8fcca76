"""Optimizers and clip modes through optax (SPEC §3).

Clipping thresholds and the learning rate are plain numbers that may be traced, so runs that
differ only in clip mode or learning rate share one compiled program: a clip mode that is off
has an infinite threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import optax

from bptt_cli.config import OPTIMIZER_NAMES, Clip

# Keras defaults, which the released runs inherited.
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "adam": lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-7),
    "sgd": lambda lr: optax.sgd(lr),
    "momentum-0.8": lambda lr: optax.sgd(lr, momentum=0.8, nesterov=False),
    "momentum-0.9": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=False),
    "momentum-0.95": lambda lr: optax.sgd(lr, momentum=0.95, nesterov=False),
    "adagrad": lambda lr: optax.adagrad(lr, initial_accumulator_value=0.1, eps=1e-7),
    "adadelta": lambda lr: optax.adadelta(lr, rho=0.95, eps=1e-7),
    "rmsprop": lambda lr: optax.rmsprop(lr, decay=0.9, eps=1e-7, eps_in_sqrt=False),
}
assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES
__all__ = ["OPTIMIZERS", "Clip", "clip_thresholds", "make_optimizer"]


def clip_thresholds(clip: Clip | str, clip_value: float = 1.0, clip_norm: float = 1.0) -> tuple[float, float]:
    """``(value_threshold, norm_threshold)`` for a clip mode; ``inf`` switches a clip off."""
    clip = Clip(clip)
    return (
        clip_value if clip is Clip.VALUE else math.inf,
        clip_norm if clip is Clip.NORM else math.inf,
    )


def make_optimizer(name: str, learning_rate, value_threshold, norm_threshold) -> optax.GradientTransformation:
    """Clip by value, clip by global norm, then the optimizer; any argument may be traced."""
    return optax.chain(
        optax.clip(value_threshold),
        optax.clip_by_global_norm(norm_threshold),
        OPTIMIZERS[name](learning_rate),
    )
