"""Where a GPU program's kernel launches go: compile the paper programs for a GPU target (no GPU
needed, see ``bptt_cli.runner.aot``) and break each loop's body down by kind of kernel.

Run it with jax's CUDA plugin installed (``make gpu-compile`` makes ``.venv-gpu``)::

    .venv-gpu/bin/python bench/launches.py                 # cartpole, guidance, quantum on h100
    .venv-gpu/bin/python bench/launches.py cartpole --unroll 16 --target a100

Per program it prints the launches per epoch (as ``bptt-run --dry-run --target`` counts them)
and, per while loop with a known trip count, the kernels one iteration launches by kind: GEMMs
(cuBLAS or Triton matrix products), other library calls, reductions, stores of the loop's stacked outputs
(dynamic-update-slice: the residuals the backward pass reads), concatenations, copies and the
remaining elementwise fusions. The horizon loops' iterations hold ``unroll`` simulator steps.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import Counter
from dataclasses import replace

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

from bptt_cli import config, problems
from bptt_cli.core import devices, plan
from bptt_cli.runner import aot

KINDS = ("gemm", "library", "reduce", "store", "concat", "copy", "elementwise")


def kind(instruction) -> str:
    """What one kernel-launching HLO instruction does, as this breakdown names it."""
    op, attributes = instruction.opcode, instruction.attributes
    if op == "copy":
        return "copy"
    called = " ".join(aot._called(attributes, "calls"))
    target = re.search(r'custom_call_target="([^"]*)"', attributes)
    if "gemm" in called or (target and "gemm" in target.group(1)):
        return "gemm"
    if op == "custom-call":
        return "library"
    if "dynamic_update_slice" in called:
        return "store"
    if "kind=kInput" in attributes and "reduce" in called:
        return "reduce"
    if "concatenate" in called:
        return "concat"
    return "elementwise"


def loops(text: str) -> list[tuple[int, Counter]]:
    """``(trip count, kernels of one iteration by kind)`` for every while loop whose trip count
    XLA knows (the minibatch, horizon and evaluation loops; not the epoch loop)."""
    _, computations = aot.parse_hlo(text)
    found = []
    for instructions in computations.values():
        for instruction in instructions:
            trip = aot._TRIP.search(instruction.attributes)
            if instruction.opcode != "while" or not trip:
                continue
            body = computations[aot._called(instruction.attributes, "body")[0]]
            kernels = Counter(
                kind(i) for i in body if i.opcode not in aot.NOT_KERNELS and i.opcode != "while"
            )
            found.append((int(trip.group(1)), kernels))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="*", default=["cartpole", "guidance", "quantum"])
    parser.add_argument("--target", default="h100", choices=aot.TARGETS)
    parser.add_argument("--unroll", type=int, help="horizon unroll [default: the GPU profile's]")
    parser.add_argument("--scale", default="paper")
    args = parser.parse_args()

    profile = devices.profile("gpu")
    if args.unroll:
        profile = replace(profile, unroll=args.unroll)
    total = 0
    for name in args.experiments:
        specs = config.resolve(config.load(name), args.scale)
        for program in plan.plan([(spec, 0) for spec in specs], profile, problems.get):
            compiled = aot.compile_for(program, args.target, profile)
            total += compiled.launches_per_epoch
            print(
                f"{name}: {program.rows} rows, unroll {profile.unroll}: {compiled.launches_per_epoch:,} "
                f"launches per epoch (compile {compiled.compile_seconds:.0f} s)"
            )
            for trip, kernels in loops(compiled.hlo):
                parts = ", ".join(f"{k} {kernels[k]}" for k in KINDS if kernels[k])
                print(f"  loop of {trip:3d} iterations: {sum(kernels.values()):3d} kernels each ({parts})")
    print(f"total: {total:,} launches per epoch")


if __name__ == "__main__":
    main()
