"""The physical constants of the built-in problems that are drawn, each written once.

Each problem module takes its ``Params`` from here, and :mod:`bptt_cli.plotting.drawings` reads
the same numbers; this module imports no jax, so the figures can be drawn where jax is absent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CartPoleParams:
    """Cart-pole (docs/model.md §5). ``total_mass`` is the same for every P, as released;
    ``pole_length`` is the half-length of the equations."""

    gravity: float = 9.8
    pole_mass: float = 0.1
    total_mass: float = 1.1
    pole_length: float = 0.5
    dt: float = 0.01
    n_steps: int = 100


@dataclass(frozen=True)
class PendulumParams:
    """Chained pendulum on a cart (docs/model.md §13): T = 2 s in 200 steps."""

    cart_mass: float = 1.0
    link_length: float = 0.5
    tip_mass: float = 0.1
    gravity: float = 9.8
    dt: float = 0.01
    n_steps: int = 200


@dataclass(frozen=True)
class GuidanceParams:
    """Guidance by repulsion (docs/model.md §6). The evader flocking sign and the
    sum-of-evaders centre are as released."""

    dt: float = 4.0 / 60
    n_steps: int = 60
    n_drivers: int = 2
    n_evaders: int = 4
    softening: float = 0.1
    driver_damping: float = 1.0
    driver_repulsion: float = 0.2
    evader_repulsion: float = 15.0
    evader_damping: float = 4.0
    evader_cohesion: float = 0.2
    flock_distance: float = 0.5


@dataclass(frozen=True)
class QuantumParams:
    """Quantum control, grid and time (docs/model.md §7): ``dx = length / (nx + 1)``."""

    nx: int = 32
    length: float = 2.0
    dt: float = 0.0625
    n_steps: int = 128

    @property
    def dx(self) -> float:
        return self.length / (self.nx + 1)
