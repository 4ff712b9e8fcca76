"""Steering a quantum particle in a box into a target eigenstate (docs/model.md §7).

State of one sample: ``(nx, 2)`` = real and imaginary parts of the wave function ψ on the
interior grid points ``x_j = j·dx``, ``j = 1 … nx``, of the domain ``(0, 2)`` with Dirichlet
walls. The control is one scalar per sample: the strength ``u`` of a uniform field, which adds
``u·x`` to the Hamiltonian ``H = −D2 + u·x``. Time advances by Crank–Nicolson.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from bptt_cli import nn
from bptt_cli.core.task import ProblemDef, Task
from bptt_cli.problems.params import QuantumParams

# --- params -----------------------------------------------------------------------------

# Declared in params.py with the other drawn problems' constants: the drawings read them there.
Params = QuantumParams


# --- physics ----------------------------------------------------------------------------


def _complex_dtype(real_dtype) -> jnp.dtype:
    return jnp.result_type(real_dtype, jnp.complex64)


def step(psi: jax.Array, u: jax.Array, params: Params = Params()) -> jax.Array:
    """One Crank–Nicolson step for ONE sample (docs/model.md §7).

    Solves ``(I + i·dt/2·H) ψ' = (I − i·dt/2·H) ψ`` with ``H = −D2 + u·x`` and
    ``D2 ψ_j = (ψ_{j−1} − 2ψ_j + ψ_{j+1}) / dx²``, ``ψ_0 = ψ_{nx+1} = 0``.

    Args:
      psi: ``(nx, 2)`` real and imaginary parts (float32; float64 under x64).
      u: scalar field strength.
      params: grid constants.

    Returns:
      ``(nx, 2)`` of the same real dtype: complex arithmetic inside (complex64 / complex128).
    """
    real = jnp.result_type(psi, u)
    cplx = _complex_dtype(real)
    nx, dt, dx = params.nx, params.dt, params.dx
    psi = jnp.asarray(psi, real)
    u = jnp.reshape(jnp.asarray(u, real), ())
    z = jax.lax.complex(psi[:, 0], psi[:, 1])
    x = jnp.asarray(np.arange(1, nx + 1) * dx, real)
    inv_dx2 = 1.0 / dx**2

    # H·ψ as a 3-point stencil; the zero padding is the Dirichlet wall.
    z_pad = jnp.pad(z, 1)
    h_psi = (2.0 * z - z_pad[:-2] - z_pad[2:]) * inv_dx2 + (u * x).astype(cplx) * z
    rhs = z - (0.5j * dt) * h_psi

    # I + i·dt/2·H: tridiagonal, its sub- and super-diagonals are −i·dt/(2·dx²). The solver
    # wants dl[0] = du[-1] = 0.
    half_i_dt = jnp.asarray(0.5j * dt, cplx)
    diag = 1.0 + half_i_dt * (2.0 * inv_dx2 + u * x).astype(cplx)
    off = jnp.full((nx,), -0.5j * dt * inv_dx2, cplx)
    lower = off.at[0].set(0.0)
    upper = off.at[-1].set(0.0)
    # lax's tridiagonal_solve (LAPACK gtsv on CPU) handles complex dtypes, vmap (per-sample
    # diagonals, since u differs per sample) and reverse-mode gradients through both the
    # right-hand side and the diagonals, so no hand-written Thomas scan is needed.
    z_next = jax.lax.linalg.tridiagonal_solve(lower, diag, upper, rhs[:, None])[:, 0]
    return jnp.stack([jnp.real(z_next), jnp.imag(z_next)], axis=-1)


def eigenstate(n, nx: int = 32) -> jax.Array:
    """``(nx,)`` real eigenstate ``φ_n(j) = sin(n·π·j / (nx + 1))`` with ``Σ φ_n² = 1``.

    ``n`` may be a Python int or a traced float scalar (the target level under ``jit``);
    ``n = 1`` is the ground state.
    """
    n = jnp.asarray(n, jnp.result_type(float))
    j = jnp.arange(1, nx + 1, dtype=n.dtype)
    phi = jnp.sin(n * (math.pi / (nx + 1)) * j)
    return phi / jnp.sqrt(jnp.sum(phi**2))


# --- data -------------------------------------------------------------------------------

WEIGHTINGS = {"1-1": (1, 1), "3-1": (3, 1), "7-1": (7, 1), "15-1": (15, 1)}


def sample_initial_states(key: jax.Array, n: int, weighting: str = "1-1") -> jax.Array:
    """``(n, nx, 2)`` superpositions of the two lowest eigenstates (docs/model.md §7).

    ``ψ0 = (c1·e^{iα1}·φ1 + c2·e^{iα2}·φ2) / sqrt(c1² + c2²)`` with ``c_k ~ w_k·N(0, 1)`` and
    ``α_k ~ U(0, 2π)``, ``(w1, w2) = WEIGHTINGS[weighting]``.
    """
    w1, w2 = WEIGHTINGS[weighting]
    key_c, key_alpha = jax.random.split(key)
    c = jax.random.normal(key_c, (n, 2), jnp.float32) * jnp.asarray([w1, w2], jnp.float32)[None]
    alpha = jax.random.uniform(key_alpha, (n, 2), jnp.float32, 0.0, 2.0 * math.pi)
    coef = c / jnp.sqrt(jnp.sum(c**2, axis=1, keepdims=True))
    nx = Params().nx
    basis = jnp.stack([eigenstate(1, nx), eigenstate(2, nx)]).astype(jnp.float32)  # (2, nx)
    re = (coef * jnp.cos(alpha)) @ basis
    im = (coef * jnp.sin(alpha)) @ basis
    return jnp.stack([re, im], axis=-1)


def sample_data(key: jax.Array, n_data: int, weighting: str = "1-1") -> tuple[jax.Array, jax.Array]:
    """Draw ``2 * n_data`` states: the first half trains, the second half tests."""
    states = sample_initial_states(key, 2 * n_data, weighting)
    return states[:n_data], states[n_data:]


# --- controller -------------------------------------------------------------------------


def init_controller(key: jax.Array, width: int = 60) -> list[dict[str, jax.Array]]:
    """CNN parameters in Keras layouts (docs/model.md §7); 11 701 parameters for ``width = 60``.

    ``[conv2d {"w": (3, 2, 1, W), "b": (W,)}, conv1d {"w": (3, W, W), "b": (W,)},
    dense {"w": (7·W, 1), "b": (1,)}]``. Kernels Glorot-uniform with Keras fans (kernel size ×
    channels), biases zero; the last kernel is not zeroed.
    """
    n1 = (Params().nx - 3) // 2 + 1
    n2 = (n1 - 3) // 2 + 1
    k1, k2, k3 = jax.random.split(key, 3)
    return [
        {"w": nn.glorot_uniform(k1, (3, 2, 1, width), 6, 6 * width), "b": jnp.zeros((width,))},
        {"w": nn.glorot_uniform(k2, (3, width, width), 3 * width, 3 * width), "b": jnp.zeros((width,))},
        {"w": nn.glorot_uniform(k3, (n2 * width, 1), n2 * width, 1), "b": jnp.zeros((1,))},
    ]


def _row_triples(h: jax.Array) -> jax.Array:
    """``(R, C) -> (⌊(R−3)/2⌋+1, 3·C)``: the rows seen by a kernel-3, stride-2 valid window.

    Three strided slices instead of a gather: their transposes are cheap pads, where a gather's
    is a scatter-add.
    """
    n_out = (h.shape[0] - 3) // 2 + 1
    taps = [h[k : k + 2 * n_out - 1 : 2] for k in range(3)]
    return jnp.concatenate(taps, axis=-1)


def controller(theta: list[dict[str, jax.Array]], psi: jax.Array) -> jax.Array:
    """Field strength (scalar) for ONE state ``psi (nx, 2)``.

    Each convolution is written as a patch matrix times the reshaped kernel. On a CPU this is
    as fast as ``lax.conv_general_dilated`` forward and 3–8× faster under ``value_and_grad``
    of a rollout, whose convolution transposes are slow on such small images (see
    ``bench/quantum_controller.py``). Equal to ``controller_conv``.
    """
    conv2d, conv1d, dense = theta
    width = conv2d["w"].shape[-1]
    h = jnp.tanh(_row_triples(psi) @ conv2d["w"].reshape(6, width) + conv2d["b"][None])  # (15, W)
    h = jnp.tanh(_row_triples(h) @ conv1d["w"].reshape(3 * width, width) + conv1d["b"][None])  # (7, W)
    return (h.reshape(-1) @ dense["w"] + dense["b"])[0]


def controller_conv(theta: list[dict[str, jax.Array]], psi: jax.Array) -> jax.Array:
    """Reference ``controller`` through ``lax.conv_general_dilated`` (Keras NHWC / HWIO layouts)."""
    conv2d, conv1d, dense = theta
    image = psi[None, :, :, None]  # (N=1, H=nx, W=2, C=1)
    h = jax.lax.conv_general_dilated(
        image, conv2d["w"], window_strides=(2, 2), padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jnp.tanh(h + conv2d["b"][None, None, None])[:, :, 0, :]  # (1, 15, W)
    h = jax.lax.conv_general_dilated(
        h, conv1d["w"], window_strides=(2,), padding="VALID", dimension_numbers=("NWC", "WIO", "NWC")
    )
    h = jnp.tanh(h + conv1d["b"][None, None])[0]  # (7, W)
    return (h.reshape(-1) @ dense["w"] + dense["b"])[0]


# --- loss -------------------------------------------------------------------------------


def fidelity(psi: jax.Array, n) -> jax.Array:
    """``|⟨φ_n, ψ⟩|²`` over the last two axes ``(..., nx, 2)`` -> ``(...)``; φ_n is real."""
    phi = eigenstate(n, psi.shape[-2]).astype(psi.dtype)
    phi = phi.reshape((1,) * (psi.ndim - 2) + phi.shape)
    re = jnp.sum(psi[..., 0] * phi, axis=-1)
    im = jnp.sum(psi[..., 1] * phi, axis=-1)
    return re**2 + im**2


def loss(xs: jax.Array, us: jax.Array, target, mode: str = "CONTINUOUS") -> jax.Array:
    """Infidelity to the target eigenstate, averaged over the batch (docs/model.md §7).

    ``xs`` is ``(B, n_steps + 1, nx, 2)`` with ``x0`` included; ``target`` is ``n`` (may be a
    traced float). CONTINUOUS: ``Σ_{t=1…Nt} (1 − |⟨φ_n, ψ_t⟩|²)``, range ``[0, Nt]``; FINAL:
    the ``t = Nt`` term only, range ``[0, 1]``.
    """
    del us
    if mode == "CONTINUOUS":
        return jnp.mean(jnp.sum(1.0 - fidelity(xs[:, 1:], target), axis=1))
    if mode == "FINAL":
        return jnp.mean(1.0 - fidelity(xs[:, -1], target))
    raise ValueError(f"unknown loss mode {mode!r}")


# --- problem descriptor -----------------------------------------------------------------


def _make_task(target, options) -> Task:
    """``target`` is the eigenstate n (a traced scalar under ``jit``: one program for all)."""
    params = Params()
    mode = options["loss"]
    weighting = options["weighting"]
    if mode not in ("CONTINUOUS", "FINAL"):
        raise ValueError(f"unknown loss mode {mode!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}")
    return Task(
        step=partial(step, params=params),
        controller=controller,
        init_controller=init_controller,
        loss=lambda xs, us: (loss(xs, us, target, mode), {}),
        sample_data=partial(sample_data, weighting=weighting),
        n_steps=params.n_steps,
    )


PROBLEM = ProblemDef(
    name="quantum",
    level_key="target_state",
    level_type=int,
    level_is_static=False,
    make_task=_make_task,
    default_options={"loss": "CONTINUOUS", "weighting": "1-1"},
    option_choices={"loss": ("CONTINUOUS", "FINAL"), "weighting": ("1-1", "3-1", "7-1", "15-1")},
    valid_level=lambda n: 1 <= n <= Params().nx,
    valid_level_text=f"an eigenstate 1 ... {Params().nx}",
    drawing="bptt_cli.plotting.drawings:quantum",
)
