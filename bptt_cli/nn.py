"""Tiny functional layers shared by the controllers (Keras-compatible initialisation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def glorot_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int, fan_out: int) -> jax.Array:
    """Glorot/Xavier uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    limit = jnp.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


def init_mlp(key: jax.Array, sizes: list[int], zero_last: bool) -> list[dict[str, jax.Array]]:
    """Dense layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``.

    Kernels are Glorot-uniform and biases zero; with ``zero_last`` the last kernel starts at
    zero too, so the initial output is exactly 0 (docs/model.md §5, as released).
    """
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        last = i == len(sizes) - 2
        w = (
            jnp.zeros((n_in, n_out))
            if (last and zero_last)
            else glorot_uniform(k, (n_in, n_out), n_in, n_out)
        )
        layers.append({"w": w, "b": jnp.zeros((n_out,))})
    return layers


def mlp(layers: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """tanh on every hidden layer, linear output. ``x`` is a flat vector ``(sizes[0],)``."""
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]
