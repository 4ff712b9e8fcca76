"""Speed figures for `make bench`: compile time and seconds per epoch of the training program
(the same jitted, vmapped chunk the runner uses, per-epoch evaluation included).

Prints one table per backend (CPU always; GPU when jax sees one). "per run-epoch" is the epoch
time divided by the number of seeds trained together. Compare ratios within one run: machines
are noisy.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import jax
import jax.numpy as jnp

from bptt_cli import problems
from bptt_cli.core import train

# (problem, level, flows, seed counts)
CASES = [
    ("cartpole", 2, ("R", "C"), (1, 8, 32)),
    ("guidance", 0.1, ("R", "C"), (1, 8, 32)),
    ("quantum", 3, ("R", "C"), (1, 8)),
]
EPOCHS = 2


def measure(device, problem_name, level, flow, n_seeds, n_data=256):
    problem = problems.get(problem_name)
    static = level if problem.level_is_static else None
    task = problem.make_task(static, dict(problem.default_options))
    setup = train.Setup(flow, "adam", 8)
    with jax.default_device(device):
        x_train, x_test = task.sample_data(jax.random.key(42), n_data)
        hypers = train.Hypers(
            key=jax.vmap(jax.random.key)(jnp.arange(n_seeds)),
            learning_rate=jnp.full((n_seeds,), 1e-3),
            clip_value=jnp.full((n_seeds,), jnp.inf),
            clip_norm=jnp.full((n_seeds,), 1.0),
            level=jnp.full((n_seeds,), float(level)),
        )
        state = jax.jit(jax.vmap(partial(train.init_state, task, setup)))(hypers)
        chunk = jax.jit(
            jax.vmap(partial(train.train_chunk, task, setup, EPOCHS), in_axes=(0, 0, None, None, None))
        )
        t0 = time.perf_counter()
        compiled = chunk.lower(state, hypers, x_train, x_test, jnp.int32(1)).compile()
        compile_s = time.perf_counter() - t0
        state, metrics, _ = compiled(state, hypers, x_train, x_test, jnp.int32(1))  # warm-up
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        state, metrics, _ = compiled(state, hypers, x_train, x_test, jnp.int32(EPOCHS))
        jax.block_until_ready(metrics)
        epoch_s = (time.perf_counter() - t0) / EPOCHS
    return compile_s, epoch_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=[c[0] for c in CASES], help="one problem only")
    args = parser.parse_args()
    backends = [("cpu", jax.devices("cpu")[0])]
    try:
        backends.append(("gpu", jax.devices("gpu")[0]))
    except RuntimeError:
        print("no GPU visible to jax: CPU figures only")

    print(f"jax {jax.__version__}, {os.cpu_count()} CPU cores visible, {EPOCHS} timed epochs after a warm-up")
    for backend, device in backends:
        print(f"\n== {backend}: {device.device_kind}")
        print(
            f"{'problem':10s} {'level':>6s} {'flow':>4s} {'seeds':>5s} {'compile s':>9s} {'s/epoch':>8s} {'s/run-epoch':>11s}"
        )
        for problem_name, level, flows, seed_counts in CASES:
            if args.only and problem_name != args.only:
                continue
            for flow in flows:
                counts = seed_counts if backend == "cpu" else (1, 8, 32, 128)
                for n_seeds in counts:
                    compile_s, epoch_s = measure(device, problem_name, level, flow, n_seeds)
                    print(
                        f"{problem_name:10s} {level!s:>6s} {flow:>4s} {n_seeds:5d} {compile_s:9.2f} "
                        f"{epoch_s:8.3f} {epoch_s / n_seeds:11.4f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
