"""Time the quantum controller's implementations inside a full 128-step rollout (docs/model.md §7).

Prints one row per (implementation, batch size): the forward rollout + CONTINUOUS loss and its
``value_and_grad`` w.r.t. the controller parameters, vmapped over the batch, jitted, compile
excluded, median over several runs. ``physics only`` replays the same rollout with a fixed
control, to show how much of the time the Crank–Nicolson steps take.

    .venv/bin/python bench/quantum_controller.py [--repeats 5] [--batches 8 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from bptt_cli.problems import quantum

_ROWS1 = 2 * np.arange(15)[:, None] + np.arange(3)[None]  # (15, 3) rows under each conv2d window
_ROWS2 = 2 * np.arange(7)[:, None] + np.arange(3)[None]  # (7, 3) rows under each conv1d window


def controller_gather(theta, psi):
    """Patches by fancy indexing (a gather) + einsum."""
    conv2d, conv1d, dense = theta
    h = jnp.tanh(jnp.einsum("tkc,kco->to", psi[_ROWS1], conv2d["w"][:, :, 0]) + conv2d["b"][None])
    h = jnp.tanh(jnp.einsum("tkc,kco->to", h[_ROWS2], conv1d["w"]) + conv1d["b"][None])
    return (h.reshape(-1) @ dense["w"] + dense["b"])[0]


def controller_taps(theta, psi):
    """One matmul per kernel tap on strided slices, summed (no patch matrix)."""
    conv2d, conv1d, dense = theta
    h = sum(psi[k : k + 29 : 2] @ conv2d["w"][k, :, 0] for k in range(3))
    h = jnp.tanh(h + conv2d["b"][None])
    h = sum(h[k : k + 13 : 2] @ conv1d["w"][k] for k in range(3))
    h = jnp.tanh(h + conv1d["b"][None])
    return (h.reshape(-1) @ dense["w"] + dense["b"])[0]


def _fixed_control(theta, psi):
    del psi
    return theta[2]["b"][0] + 0.5


VARIANTS = {
    "lax.conv (reference)": quantum.controller_conv,
    "gather + einsum": controller_gather,
    "taps: 3 matmuls": controller_taps,
    "slices + matmul (used)": quantum.controller,
    "physics only": _fixed_control,
}


def make_loss(control, target=3.0):
    params = quantum.Params()

    def rollout(theta, x0):
        def body(x, _):
            u = control(theta, x)
            x_next = quantum.step(x, u, params)
            return x_next, (x_next, u)

        _, (xs, us) = jax.lax.scan(body, x0, None, length=params.n_steps)
        return jnp.concatenate([x0[None], xs], axis=0), us

    def total(theta, x0s):
        xs, us = jax.vmap(rollout, in_axes=(None, 0))(theta, x0s)
        return quantum.loss(xs, us, target)

    return total


def median_seconds(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 256])
    args = parser.parse_args()

    theta = quantum.init_controller(jax.random.key(0))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cpus; 128 steps, ms")
    print(f"{'controller':<24} {'batch':>5} {'forward':>9} {'value_and_grad':>15}")
    for batch in args.batches:
        x0s = quantum.sample_initial_states(jax.random.key(1), batch)
        for name, control in VARIANTS.items():
            total = make_loss(control)
            fwd = jax.jit(total)
            vag = jax.jit(jax.value_and_grad(total))
            t_fwd = median_seconds(fwd, (theta, x0s), args.repeats)
            t_vag = median_seconds(vag, (theta, x0s), args.repeats)
            print(f"{name:<24} {batch:>5} {1e3 * t_fwd:>9.2f} {1e3 * t_vag:>15.2f}", flush=True)


if __name__ == "__main__":
    main()
