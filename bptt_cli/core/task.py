"""The contract between a control problem and the training core (public: ``bptt_cli.Task`` and
``bptt_cli.ProblemDef``).

A problem module exposes pure, single-sample functions and one ``PROBLEM`` descriptor. The core
batches with ``jax.vmap`` and never looks inside. A minimal problem::

    PROBLEM = ProblemDef(
        name="heat",
        level_key="diffusivity",
        level_type=float,
        level_is_static=False,          # the level is a number: every level shares one program
        make_task=lambda level, options: Task(
            step=..., controller=..., init_controller=..., loss=..., sample_data=...,
            n_steps=100, control_shape=(),
        ),
    )

This module imports no jax, so the command line can read descriptors cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jax
    import numpy as np

PyTree = Any


@dataclass(frozen=True)
class Task:
    """Everything the trainer needs about one problem at one level.

    Attributes:
      step: ``(x, u) -> x_next`` for ONE sample; must return the state's shape and dtype.
      controller: ``(theta, x) -> u`` for ONE sample, ``u`` of shape ``control_shape``.
      init_controller: ``key -> theta``, the network's initial parameters (any pytree).
      loss: ``(xs, us) -> (total, aux)`` on a batched trajectory: ``xs`` is
        ``(B, n_steps + 1, *state)`` with ``x0`` first, ``us`` is ``(B, n_steps, *control)``;
        ``total`` a scalar, ``aux`` maps the names in ``ProblemDef.aux_metrics`` to scalars
        (``{}`` when there are none).
      sample_data: ``(key, n_data) -> (x_train, x_test)``, each ``(n_data, *state)``.
      n_steps: the horizon ``Nt``.
      control_shape: the shape of one control ``u`` (``()`` for a scalar).
      n_params: the number of real parameter entries when ``theta`` carries padding (entries
        that stay exactly zero; see ``ProblemDef.make_padded_task``); ``None``: every entry is
        real. Only the C rule's kept fraction reads it.
    """

    step: Callable[[jax.Array, jax.Array], jax.Array]
    controller: Callable[[PyTree, jax.Array], jax.Array]
    init_controller: Callable[[jax.Array], PyTree]
    loss: Callable[[jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    sample_data: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]
    n_steps: int
    control_shape: tuple[int, ...] = ()
    n_params: Any = None


def _any_level(level: Any) -> bool:
    return True


@dataclass(frozen=True)
class ProblemDef:
    """Describes a problem to the runner, the command line and the plots.

    Attributes:
      name: the problem's name in run ids, CSVs and figures, e.g. ``"cartpole"``.
      level_key: name of the complexity axis in configs and CSVs, e.g. ``"n_poles"``.
      level_type: ``int`` or ``float``; levels in definitions are parsed with it.
      level_is_static: True when the level changes array shapes: ``make_task`` is called with
        a Python number, and each level is its own compiled program (unless the problem can be
        padded). False when the level is only a number: ``make_task`` is then called inside
        ``jit`` with the level as a traced float32 scalar, so that every level shares one
        program; the task may compute with it but not branch on it or shape arrays by it. The
        data (``sample_data``) and ``n_steps`` are then taken from the task at the program's
        first level, called with a plain number: they must not depend on the level.
      make_task: ``(level, options) -> Task``; ``options`` holds the ``[options]`` table of the
        experiment definition with the defaults filled in.
      default_options: allowed problem options and their defaults.
      option_choices: for options with a fixed set of values, the allowed values.
      option_checks: for other options, which values make sense (a predicate on the value)
        and how to say so in an error message. An option whose default is a number always
        takes a number of that type.
      aux_metrics: names of the extra loss parts returned in ``aux`` by ``Task.loss``.
      valid_level, valid_level_text: which levels make sense (a predicate on the parsed value)
        and how to say so in an error message.
      make_padded_task: optional, for ``level_is_static`` problems: ``(level, max_level,
        options) -> Task`` with ``level`` a traced scalar and every array shaped for
        ``max_level``, so that several levels share one program (used on a GPU). Its results
        must equal ``make_task(level)``'s up to float32 rounding: padded state entries and
        padded parameter entries stay exactly zero, and ``Task.n_params`` counts the real ones.
        Called with a Python ``level`` outside ``jit`` for ``sample_data``.
      optimum: optional ``(level, options, x_test) -> float``: the best loss any controller of
        this kind can reach on ``x_test`` (float64, on the host). Runs then record it and an
        ``optimality_gap = test_loss / optimum - 1`` column.
      drawing: optional ``"module:attribute"`` naming a drawing module that imports no jax
        (see ``bptt_cli.plotting.trajectories``); a module path or a ``.py`` file.
    """

    name: str
    level_key: str
    level_type: type
    level_is_static: bool
    make_task: Callable[[Any, Mapping[str, Any]], Task]
    default_options: Mapping[str, Any] = field(default_factory=dict)
    option_choices: Mapping[str, tuple] = field(default_factory=dict)
    option_checks: Mapping[str, tuple[Callable[[Any], bool], str]] = field(default_factory=dict)
    aux_metrics: tuple[str, ...] = ()
    valid_level: Callable[[Any], bool] = _any_level
    valid_level_text: str = "any number"
    make_padded_task: Callable[[Any, Any, Mapping[str, Any]], Task] | None = None
    optimum: Callable[[Any, Mapping[str, Any], np.ndarray], float] | None = None
    drawing: str | None = None
