"""Compile the runner's programs for a GPU this machine does not have, and count their kernels.

XLA compiles for a GPU from a description of it (``bptt_cli/targets/<name>.txtpb``, a
``GpuTargetConfigProto`` with its sources) once jax's CUDA plugin is installed, whether or not
a driver or a device answers (with ``JAX_PLATFORMS=cpu`` and
``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1``, which ``bptt-run --target`` sets): :func:`target_devices` asks jax for a one-GPU topology of that
description, and :func:`compile_for` lowers a program's chunk function on abstract inputs
(``jax.ShapeDtypeStruct``) placed on it, with the GPU profile's unroll and compiler options,
exactly as the runner would on the real device. Nothing runs: what comes back is the optimized
HLO, the compile time and XLA's memory analysis.

:func:`kernel_launches` counts, in the optimized HLO, every instruction a GPU runs as a kernel
or a library call (fusions, custom calls such as cuBLAS, copies and any op left unfused; not
parameters, constants, tuples, bitcasts or get-tuple-element), multiplied by the known trip
counts of the loops around it. The epoch loop's trip count is not known at compile time, so it
counts once: the result is kernel launches per epoch (plus the chunk's few launches around it).

On a GPU these programs are launch-bound (see ``bptt_cli.core.devices``): a launch of a small
kernel costs the host a few microseconds whatever the kernel does, so launches × cost per
launch estimates the wall time. :data:`LAUNCH_SECONDS` is a range, not a measurement; ``make
bench`` on a real GPU measures it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from bptt_cli.core import devices
from bptt_cli.core.plan import Program
from bptt_cli.runner.build import ProgramCache, numerics, prepare, shardings

# Host cost of launching one small kernel, low and high (seconds). Not measured on this
# project's programs: the range NVIDIA's CUDA documentation and profiling guides give for the
# launch overhead of a kernel issued from the host (a few microseconds), widened for the
# device-to-host copy of each while loop's predicate. `make bench` on a GPU measures it.
LAUNCH_SECONDS = (2e-6, 8e-6)
TARGETS = tuple(
    sorted(
        p.name.removesuffix(".txtpb")
        for p in resources.files("bptt_cli.targets").iterdir()
        if p.name.endswith(".txtpb")
    )
)


class TargetError(RuntimeError):
    """The target cannot be compiled for here (no CUDA plugin, unknown name)."""


def target_config(name: str) -> str:
    """The text of ``bptt_cli/targets/<name>.txtpb``."""
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}; allowed: {', '.join(TARGETS)}")
    return (resources.files("bptt_cli.targets") / f"{name}.txtpb").read_text()


def device_memory(name: str) -> int:
    """The target's device memory in bytes, from its description."""
    return int(re.search(r"device_memory_size:\s*(\d+)", target_config(name)).group(1))


def description(name: str) -> str:
    """The device kind the target describes (``device_description_str``), as jax names it."""
    return re.search(r'device_description_str:\s*"([^"]*)"', target_config(name)).group(1)


@cache
def target_devices(name: str) -> tuple:
    """One abstract GPU of the named target (a topology's devices: compile only)."""
    from jax.experimental import topologies

    config = target_config(name)
    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=config, topology="1x1x1")
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise TargetError(
            f"cannot compile for {name}: jax's CUDA plugin is missing or failed ({type(err).__name__}: "
            f"{reason}); install it with pip install 'jax[cuda12]==<your jax version>' "
            "(make gpu-compile does, into .venv-gpu)"
        ) from None
    return tuple(topology.devices)


@dataclass(frozen=True)
class TargetCompile:
    """A program compiled for a target."""

    program: Program
    target: str
    compile_seconds: float
    memory_bytes: int
    launches_per_epoch: int
    hlo: str = field(repr=False)  # the optimized HLO the launches were counted in

    def fits(self) -> bool:
        return self.memory_bytes <= device_memory(self.target)

    def seconds(self, per_launch: tuple[float, float] = LAUNCH_SECONDS) -> tuple[float, float]:
        """Estimated wall time of the program's epochs on the target, low and high."""
        epochs = self.program.epochs - self.program.start_epoch
        return tuple(self.launches_per_epoch * epochs * cost for cost in per_launch)


def compile_for(program: Program, target: str, profile: devices.Profile | None = None) -> TargetCompile:
    """Compile ``program``'s chunk function for ``target`` as the runner compiles it on a GPU."""
    profile = profile or devices.profile("gpu")
    on = target_devices(target)
    with numerics(profile, program.precision):
        return _compile_for(program, target, profile, on)


def _compile_for(program, target, profile, on) -> TargetCompile:
    import jax
    import jax.numpy as jnp

    p = prepare(program, profile, len(on), ProgramCache())
    rows, data_sharding, replicated = shardings(on, p.data_axis)

    def abstract(tree, sharding):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)

    state = abstract(jax.eval_shape(p.init, p.hypers), rows)
    hypers = abstract(p.hypers, rows)
    data = abstract((p.x_train, p.x_test), data_sharding)
    n = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
    t0 = time.perf_counter()
    compiled = p.chunk_fn.lower(state, hypers, *data, n).compile(profile.compiler_options or None)
    seconds = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    text = compiled.as_text()
    return TargetCompile(program, target, seconds, int(peak), kernel_launches(text), text)


# --- counting kernels in optimized HLO text --------------------------------------------------

NOT_KERNELS = frozenset(
    {
        "parameter",
        "constant",
        "tuple",
        "get-tuple-element",
        "bitcast",
        "after-all",
        "add-dependency",
        "opt-barrier",
        "partition-id",
        "replica-id",
        "domain",
        "copy-done",
        "async-done",
        "async-update",
        "send-done",
        "recv-done",
    }
)
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclass(frozen=True)
class _Instruction:
    opcode: str
    attributes: str


def _opcode(rhs: str) -> tuple[str, str]:
    """``(opcode, rest)`` of an instruction's right-hand side ``shape opcode(operands), attrs``."""
    end = rhs.index(" ") if " " in rhs else len(rhs)
    if rhs.startswith("("):  # a tuple shape: it ends where its first parenthesis closes
        depth = 0
        for end, char in enumerate(rhs, 1):  # noqa: B007 (end is read after the loop)
            depth += (char == "(") - (char == ")")
            if depth == 0:
                break
    rest = rhs[end:].lstrip()
    match = re.match(r"([\w\-]+)\(", rest)
    return (match.group(1) if match else ""), rest


def parse_hlo(text: str) -> tuple[str, dict[str, list[_Instruction]]]:
    """The entry computation's name and every computation's instructions."""
    computations: dict[str, list[_Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if not line.strip() or line.startswith(("HloModule", "//")):
            continue
        if not line[0].isspace():
            if line.startswith("}"):
                current = None
                continue
            match = _HEADER.match(line)
            if match and line.rstrip().endswith("{"):
                current = match.group(1)
                computations[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if current is None or " = " not in line:
            continue
        rhs = line.split(" = ", 1)[1].strip()
        opcode, rest = _opcode(rhs)
        computations[current].append(_Instruction(opcode, rest))
    return entry, computations


def _called(attributes: str, key: str) -> list[str]:
    match = re.search(rf"\b{key}=\{{([^}}]*)\}}", attributes)
    if match:
        return [name.strip().lstrip("%") for name in match.group(1).split(",") if name.strip()]
    match = re.search(rf"\b{key}=%?([\w.\-]+)", attributes)
    return [match.group(1)] if match else []


def kernel_launches(text: str) -> int:
    """Kernels and library calls one pass through the entry computation launches (see the
    module docstring), loops multiplied by their known trip counts, unknown ones counted once."""
    entry, computations = parse_hlo(text)
    counted: dict[str, int] = {}

    def count(name: str) -> int:
        if name not in counted:
            counted[name] = 0  # a guard against recursion; HLO has none
            counted[name] = sum(_launches(instruction) for instruction in computations.get(name, []))
        return counted[name]

    def _launches(instruction: _Instruction) -> int:
        op, attributes = instruction.opcode, instruction.attributes
        if op in NOT_KERNELS:
            return 0
        if op == "while":
            trip = _TRIP.search(attributes)
            n = int(trip.group(1)) if trip else 1
            body = sum(count(c) for c in _called(attributes, "body"))
            condition = sum(count(c) for c in _called(attributes, "condition"))
            return n * body + (n + 1 if trip else 1) * condition
        if op == "conditional":
            branches = _called(attributes, "branch_computations") or [
                *_called(attributes, "true_computation"),
                *_called(attributes, "false_computation"),
            ]
            return max((count(c) for c in branches), default=0)
        if op == "call":
            return sum(count(c) for c in _called(attributes, "to_apply"))
        return 1  # a fusion, a custom call, a copy, an unfused op, an async start

    return count(entry)
