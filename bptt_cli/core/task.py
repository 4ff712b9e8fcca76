"""The contract between a control problem and the training core.

A problem module (``bptt_cli.problems.<name>``) exposes pure, single-sample functions and
one ``PROBLEM`` descriptor. The core batches with ``jax.vmap`` and never looks inside.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jax

PyTree = Any


@dataclass(frozen=True)
class Task:
    """Everything the trainer needs about one problem at one shape-defining level.

    Attributes:
      step: ``(x, u) -> x_next`` for ONE sample (physics constants already bound).
      controller: ``(theta, x) -> u`` for ONE sample.
      init_controller: ``key -> theta``, the network's initial parameters.
      loss: ``(xs, us, level) -> (total, aux)`` on a batched trajectory: ``xs`` is
        ``(B, n_steps + 1, ...)`` with ``x0`` included, ``us`` is ``(B, n_steps, ...)``,
        ``level`` a traced float scalar (the numeric complexity level; problems whose level
        changes array shapes ignore it). ``aux`` maps names from ``ProblemDef.aux_metrics``
        to scalars (e.g. ``{"physics_loss": ...}``), ``{}`` when there are none.
      sample_data: ``(key, n_data) -> (x_train, x_test)``, each ``(n_data, ...)``.
      n_steps: the horizon ``Nt``.
    """

    step: Callable[[jax.Array, jax.Array], jax.Array]
    controller: Callable[[PyTree, jax.Array], jax.Array]
    init_controller: Callable[[jax.Array], PyTree]
    loss: Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    sample_data: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]
    n_steps: int


@dataclass(frozen=True)
class ProblemDef:
    """Describes a problem to the runner, the CLI and the plots.

    Attributes:
      name: registry name, e.g. ``"cartpole"``.
      level_key: name of the complexity axis in configs and CSVs, e.g. ``"n_poles"``.
      level_type: ``int`` or ``float``; levels given on the command line are parsed with it.
      level_is_static: True when the level changes array shapes (one compiled program per
        level); False when it is only a number fed to ``Task.loss`` (levels share a program).
      make_task: ``(static_level, options) -> Task``. ``static_level`` is the level when
        ``level_is_static`` and ``None`` otherwise; ``options`` holds the problem options of
        the experiment definition (``[problem]`` table), defaults filled in.
      default_options: allowed problem options and their defaults.
      option_choices: for options with a fixed set of values, the allowed values.
      aux_metrics: names of the extra loss parts returned in ``aux`` by ``Task.loss``.
    """

    name: str
    level_key: str
    level_type: type
    level_is_static: bool
    make_task: Callable[[Any, Mapping[str, Any]], Task]
    default_options: Mapping[str, Any] = field(default_factory=dict)
    option_choices: Mapping[str, tuple] = field(default_factory=dict)
    aux_metrics: tuple[str, ...] = ()
