"""Pictures of the built-in problems' states, for the trajectory figures (no jax, only matplotlib).

A run records its test trajectories in ``<run_id>.trajectories.npz``; the JSON ``meta`` there
names a *drawing* as ``"package.module:attribute"`` or ``"/absolute/path/file.py:attribute"``
(null when the problem has none). :mod:`bptt_cli.plotting.trajectories` imports it and draws the
trained controllers with it; without a drawing (or when it fails to import) it plots the state
components over time instead.

The drawing contract
--------------------
A drawing is any object (a module, a class instance, a namespace) with at least one of:

``frame(ax, x, u)``
    Draw ONE state ``x`` (one sample's state, e.g. ``(1+P, 2)`` for the cart-pole) and the
    control ``u`` applied in it (one sample's control, e.g. ``()`` or ``(1,)``; ``None`` at the
    final state, where no control is applied) into the matplotlib Axes ``ax``. Called once per
    animation frame and once per panel of a strip of frames, on a fresh or cleared Axes. It
    sets a view of its own (a fixed one where it can, so that frames compare), which
    ``extent`` below, when given, overrides.
``trajectory(ax, xs, us)``
    Draw a whole trajectory, ``xs (Nt+1, *state)`` and ``us (Nt, *control)``, into one Axes. It
    may add twin or inset axes next to ``ax`` (e.g. with ``ax.inset_axes`` or
    ``mpl_toolkits.axes_grid1.make_axes_locatable``).

and optionally

``dt``
    The simulated seconds per step (titles then show the time in seconds, not the step).
``extent(xs)``
    The box ``(x_min, x_max, y_min, y_max)`` that every frame of the trajectory ``xs`` fits in
    (or None). The plotter sets the union over the trajectories it shows on every frame, so
    that frames share one view even when, say, a cart drives far from where it started.

With ``frame`` the plotter writes an animated GIF and, unless the drawing also has
``trajectory``, a still strip of frames; with ``trajectory`` it writes a still.
The caller sets every title; arrays arrive as NumPy float arrays and may hold NaN or inf when a
run diverged. A drawing module must not import jax: plotting runs where jax may be absent.

Built-in drawings: :data:`cartpole`, :data:`pendulum` (``frame``), :data:`guidance` and
:data:`quantum` (``trajectory``).
"""

from __future__ import annotations

import numpy as np
from matplotlib.patches import FancyArrow, Rectangle
from mpl_toolkits.axes_grid1 import make_axes_locatable

from bptt_cli.problems.params import CartPoleParams, GuidanceParams, PendulumParams, QuantumParams

CART_COLOUR = "#073b4c"
LINK_COLOURS = ("#ef476f", "#118ab2", "#06d6a0", "#6a4c93", "#f78c6b", "#8d99ae")
FORCE_COLOUR = "#e76f51"
TRACK_HALF_WIDTH = 3.0  # the default view: the track from -3 to 3
CART_WIDTH, CART_HEIGHT = 0.4, 0.2
FORCE_SCALE = 0.05  # arrow length per unit of force, capped at MAX_ARROW
MAX_ARROW = 1.2


def _scalar(u) -> float | None:
    """The scalar control of one sample (shape ``()`` or ``(1,)``), or None when there is none."""
    if u is None:
        return None
    values = np.ravel(np.asarray(u, dtype=float))
    return float(values[0]) if values.size else None


def _not_finite(ax, half_height: float) -> None:
    ax.text(0.0, 0.0, "state is not finite\n(the run diverged)", ha="center", va="center", color="0.3")
    _cart_view(ax, 0.0, half_height)


def _cart_view(ax, cart_x: float, half_height: float) -> None:
    """The default view: the track from −3 to 3, widened when the cart has left it. (The
    trajectory figures replace it by one view for the whole trajectory, from ``extent``.)"""
    reach = half_height + CART_WIDTH
    ax.set_xlim(min(-TRACK_HALF_WIDTH, cart_x - reach), max(TRACK_HALF_WIDTH, cart_x + reach))
    ax.set_ylim(-half_height, half_height)
    ax.set_aspect("equal")
    ax.set_yticks([])
    ax.set_xlabel("cart position")


def _cart_extent(xs, half_height: float) -> tuple[float, float, float, float] | None:
    """The view a whole trajectory needs: the default track, widened to every cart position."""
    carts = np.asarray(xs, dtype=float)[:, 0, 0]
    carts = carts[np.isfinite(carts)]
    if carts.size == 0:
        return None
    reach = half_height + CART_WIDTH
    low = min(-TRACK_HALF_WIDTH, float(carts.min()) - reach)
    high = max(TRACK_HALF_WIDTH, float(carts.max()) + reach)
    return low, high, -half_height, half_height


def _draw_cart_and_force(ax, cart_x: float, force: float | None) -> None:
    """Track, cart (centred on the hinge at height 0) and the force as an arrow."""
    ax.axhline(-CART_HEIGHT / 2, color="0.55", lw=1.0, zorder=0)
    ax.add_patch(
        Rectangle(
            (cart_x - CART_WIDTH / 2, -CART_HEIGHT / 2),
            CART_WIDTH,
            CART_HEIGHT,
            facecolor=CART_COLOUR,
            edgecolor=CART_COLOUR,
            zorder=3,
        )
    )
    if force is not None and np.isfinite(force) and force != 0.0:
        length = float(np.clip(FORCE_SCALE * force, -MAX_ARROW, MAX_ARROW))
        ax.add_patch(
            FancyArrow(
                cart_x + np.sign(length) * CART_WIDTH / 2,
                0.0,
                length,
                0.0,
                width=0.035,
                head_width=0.11,
                head_length=min(0.1, abs(length)),
                length_includes_head=True,
                color=FORCE_COLOUR,
                zorder=4,
            )
        )
    label = "no force (final state)" if force is None else f"force on the cart: {force:+.2f}"
    ax.text(0.02, 0.97, label, transform=ax.transAxes, ha="left", va="top", fontsize=7, color=FORCE_COLOUR)


class CartPoleDrawing:
    """Cart-pole (docs/model.md §5), state ``(1+P, 2)``: row 0 = cart ``(x, ẋ)``, row k = pole k
    ``(θ_k, θ̇_k)`` with θ = 0 upright. All poles hinge on the cart; each is drawn with its full
    length, twice the half-length of the equations. The control is the force on the cart."""

    dt = CartPoleParams().dt
    pole_length = 2 * CartPoleParams().pole_length

    def frame(self, ax, x, u) -> None:
        x = np.asarray(x, dtype=float)
        half_height = self.pole_length + 0.3
        if not np.isfinite(x).all():
            _not_finite(ax, half_height)
            return
        pivot = float(x[0, 0])
        _draw_cart_and_force(ax, pivot, _scalar(u))
        for k, theta in enumerate(x[1:, 0]):
            tip = (pivot + self.pole_length * np.sin(theta), self.pole_length * np.cos(theta))
            colour = LINK_COLOURS[k % len(LINK_COLOURS)]
            ax.plot([pivot, tip[0]], [0.0, tip[1]], color=colour, lw=3, solid_capstyle="round", zorder=5)
        ax.plot([pivot], [0.0], "o", color="white", mec=CART_COLOUR, ms=4, zorder=6)
        _cart_view(ax, pivot, half_height)

    def extent(self, xs) -> tuple[float, float, float, float] | None:
        return _cart_extent(xs, self.pole_length + 0.3)


class PendulumDrawing:
    """Chained pendulum on a cart (docs/model.md §13), state ``(1+n, 2)``: row 0 = cart ``(x, ẋ)``, row k
    = link k ``(φ_k, φ̇_k)``, the absolute angle from upright. Links of length ℓ in a chain,
    link 1 hinged on the cart, tip k at ``(x + ℓ·Σ_{j≤k} sin φ_j, ℓ·Σ_{j≤k} cos φ_j)``, a
    mass at every tip. Every frame is centred on the cart at equal aspect, as tall and wide as
    the chain is long: the cart travels several metres, and a view wide enough for its whole
    path would shrink links of half a metre to dots. Where the cart is shows on the x axis (in
    track coordinates) and in a label; the track's origin is marked when in view."""

    dt = PendulumParams().dt
    link_length = PendulumParams().link_length

    def frame(self, ax, x, u) -> None:
        x = np.asarray(x, dtype=float)
        phis = x[1:, 0]
        reach = self.link_length * len(phis) + 0.3
        if not np.isfinite(x).all():
            _not_finite(ax, reach)
            return
        pivot = float(x[0, 0])
        _draw_cart_and_force(ax, pivot, _scalar(u))
        ax.plot([0.0], [-CART_HEIGHT / 2], "|", color="0.35", ms=12, mew=1.5, zorder=1)  # the origin
        joints_x = pivot + self.link_length * np.concatenate([[0.0], np.cumsum(np.sin(phis))])
        joints_y = self.link_length * np.concatenate([[0.0], np.cumsum(np.cos(phis))])
        for k in range(len(phis)):
            colour = LINK_COLOURS[k % len(LINK_COLOURS)]
            ax.plot(
                joints_x[k : k + 2],
                joints_y[k : k + 2],
                color=colour,
                lw=3.5,
                solid_capstyle="round",
                zorder=5,
            )
            ax.plot([joints_x[k + 1]], [joints_y[k + 1]], "o", color=colour, mec="0.15", ms=8, zorder=7)
        # the hinges: on the cart, and between links
        ax.plot(joints_x[:-1], joints_y[:-1], "o", color="white", mec="0.15", ms=4, ls="none", zorder=8)
        ax.text(
            0.98,
            0.03,
            f"cart at x = {pivot:+.2f}",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
        )
        ax.set_xlim(pivot - reach, pivot + reach)
        ax.set_ylim(-reach, reach)
        ax.set_aspect("equal")
        ax.set_yticks([])
        ax.set_xlabel("cart position (view centred on the cart)")


class GuidanceDrawing:
    """Guidance by repulsion (docs/model.md §6), states ``(Nt+1, 6, 2, 2)``: agents (2 drivers, then 4
    evaders) × (position, velocity) × (x, y). Draws every agent's path, where it starts and
    ends, and the target (the origin)."""

    dt = GuidanceParams().dt
    n_drivers = GuidanceParams().n_drivers
    driver_colour = "#118ab2"
    evader_colour = "#f78c6b"

    def trajectory(self, ax, xs, us) -> None:
        positions = np.asarray(xs, dtype=float)[:, :, 0, :]  # (Nt+1, agents, 2)
        for agent in range(positions.shape[1]):
            driver = agent < self.n_drivers
            colour = self.driver_colour if driver else self.evader_colour
            path = positions[:, agent]
            first = agent in (0, self.n_drivers)
            ax.plot(
                path[:, 0],
                path[:, 1],
                color=colour,
                lw=1.8 if driver else 1.2,
                label=("driver (controlled)" if driver else "evader") if first else None,
            )
            ax.plot(*path[0], "o", mfc="white", mec=colour, ms=6)
            ax.plot(*path[-1], "o", color=colour, mec="0.2", ms=6)
        ax.plot([0], [0], marker="*", color="0.1", ms=14, ls="none", label="target (origin)")
        ax.plot([], [], "o", mfc="white", mec="0.3", ls="none", label="start")
        ax.plot([], [], "o", color="0.3", ls="none", label="end")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x position")
        ax.set_ylabel("y position")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=7, framealpha=0.85)


class QuantumDrawing:
    """Quantum control (docs/model.md §7), states ``(Nt+1, nx, 2)``: real and imaginary parts of ψ
    on ``x_j = j·dx``, ``dx = length / (nx + 1)``, j = 1…nx; control ``(Nt,)`` or ``(Nt, 1)``,
    the uniform field u.
    Draws the probability density |ψ(x, t)|² as an image (time upwards), the mean position on
    top of it, and u(t) in a panel beside it sharing the time axis."""

    dt = QuantumParams().dt
    length = QuantumParams().length

    def trajectory(self, ax, xs, us) -> None:
        psi = np.asarray(xs, dtype=float)
        density = psi[..., 0] ** 2 + psi[..., 1] ** 2  # (Nt+1, Nx)
        n_x = density.shape[1]
        dx = self.length / (n_x + 1)
        positions = dx * np.arange(1, n_x + 1)
        times = self.dt * np.arange(density.shape[0])
        image = ax.imshow(
            density,
            origin="lower",
            aspect="auto",
            cmap="magma",
            extent=(0.5 * dx, self.length - 0.5 * dx, -0.5 * self.dt, times[-1] + 0.5 * self.dt),
            interpolation="nearest",
        )
        ax.set_facecolor(image.cmap(0.0))  # the walls, where ψ = 0
        total = density.sum(axis=1)
        with np.errstate(all="ignore"):
            mean_x = (density * positions).sum(axis=1) / total
        ax.plot(mean_x, times, color="white", lw=0.9, alpha=0.8, label="mean position")
        ax.set_xlim(0.0, self.length)
        ax.set_xticks(np.linspace(0.0, self.length, 5))
        ax.set_xlabel("position x in the box")
        ax.set_ylabel("time t")
        ax.legend(loc="upper right", fontsize=7, framealpha=0.6)
        divider = make_axes_locatable(ax)
        control_ax = divider.append_axes("right", size="32%", pad=0.25, sharey=ax)
        # u is held constant over each step: a staircase with time upwards.
        controls = np.asarray(us, dtype=float).reshape(len(us), -1)[:, 0]
        edges = self.dt * np.arange(len(controls) + 1)
        control_ax.plot(np.repeat(controls, 2), np.repeat(edges, 2)[1:-1], color="#118ab2", lw=1.2)
        control_ax.axvline(0.0, color="0.6", lw=0.8)
        control_ax.set_xlabel("field u(t)")
        control_ax.tick_params(labelleft=False)
        control_ax.grid(True, alpha=0.3)
        colour_ax = divider.append_axes("bottom", size="4%", pad=0.55)
        ax.figure.colorbar(image, cax=colour_ax, orientation="horizontal", label="probability density |ψ|²")


cartpole = CartPoleDrawing()
pendulum = PendulumDrawing()
guidance = GuidanceDrawing()
quantum = QuantumDrawing()
