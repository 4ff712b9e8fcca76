"""Device-dependent speed settings, in one place, each with where its value comes from.

None of these settings changes a result beyond float32 rounding: they decide how runs are
grouped into compiled programs and how those programs are compiled.

Why a GPU wants different settings from a CPU: each run is a scan over 50-200 simulator steps
inside a scan over 32 minibatches, for 1000 epochs. On a GPU every loop iteration costs at
least a kernel launch, whatever the number of rows batched into it, so a grid's wall time is
about (programs run one after another) × (sequential iterations per program) × (launch cost),
and rows added to a program are nearly free. On a CPU the arithmetic itself is the cost, so a
row that computes more than it needs (an M run paying for R's backward pass) is slower.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace

GROUPINGS = ("auto", "narrow", "wide")


@dataclass(frozen=True)
class Profile:
    """How programs are formed and compiled on one kind of device.

    Attributes:
      merge_flows: runs of different flows share a program (the flow is per-row data, and C
        rows make every row compute g_R and g_M as one vmapped pass of twice the width).
      pad_levels: levels that change shapes (cart-pole's poles) are padded to the largest level
        of the grid and share a program.
      unroll: unroll factor of the horizon scans.
      compiler_options: extra XLA options handed to ``jax.jit(...).lower(...).compile``.
      matmul_precision: float32 matrix products at full precision (no TF32 on a GPU), so that
        a GPU run agrees with a CPU run to float32 rounding.
      fit_cores: when > 0, the process's CPU devices (more than its cores, chosen by us) share
        this many cores, and each program uses the number of them that splits its rows best
        (``fit_devices``); 0: each program uses every device (as many as it has rows).
      basis: where these values come from.
    """

    platform: str
    merge_flows: bool
    pad_levels: bool
    unroll: int = 1
    compiler_options: dict[str, str] = field(default_factory=dict)
    matmul_precision: str = "highest"
    fit_cores: int = 0
    basis: str = ""

    def devices_for(self, rows: int, available: int) -> int:
        """How many of ``available`` devices a program of ``rows`` rows is sharded over."""
        return fit_devices(rows, available, self.fit_cores) if self.fit_cores else min(rows, available)


PROFILES = {
    "cpu": Profile(
        platform="cpu",
        merge_flows=False,
        pad_levels=False,
        unroll=1,
        basis=(
            "measured on 2 CPU cores (make bench): one program per flow keeps M and S off R's "
            "backward pass and C at its two leanest passes; unrolling the horizon did not help"
        ),
    ),
    "gpu": Profile(
        platform="gpu",
        merge_flows=True,
        pad_levels=True,
        unroll=8,
        basis=(
            "UNMEASURED on a GPU (none was available when this was written): chosen from public "
            "evidence that small loop bodies are launch-bound on GPUs (jax-ml/jax#2491, #30245), "
            "so fewer, wider programs; unroll 8 from kernel launches counted in the programs "
            "compiled for an H100 without one (bench/launches.py: the paper's three programs "
            "launch 256 059 kernels per epoch at unroll 4, 216 911 at 8, 203 541 at 16, which "
            "compiles twice as long); XLA's while-loop command buffers are left at XLA's defaults "
            "because recent reports show crashes (openxla/xla#35760). Run `make bench` on a GPU "
            "to measure and revise."
        ),
    ),
}


# Optimizer steps of the longest run up to which "auto" lays a CPU grid out wide: compiling
# then costs more than training. `bptt-run cartpole --scale smoke` (4 epochs of 4 steps, eight
# programs narrow, one wide) took 113 s narrow and 58 s wide on the loaded 2-core machine; a
# narrow cart-pole program compiles in 5-10 s, about what 500 of its steps cost to train.
# BPTT_TINY_STEPS overrides it (the test suite sets 0: its tiny grids keep the CPU layout).
TINY_STEPS = 256


def tiny_steps() -> int:
    return int(os.environ.get("BPTT_TINY_STEPS", TINY_STEPS))


def profile(platform: str, grouping: str = "auto", steps: int | None = None) -> Profile:
    """The profile for a jax platform (``"cpu"``, ``"gpu"``/``"cuda"``/``"rocm"``, ...).

    ``grouping`` overrides the program layout: ``"narrow"`` is one program per flow and shape
    (the CPU layout), ``"wide"`` merges flows and pads levels (the GPU layout); ``"auto"`` is
    the platform's, except that a CPU grid whose longest run takes at most ``TINY_STEPS``
    optimizer ``steps`` (a smoke test) is laid out wide: its time is compiling. The
    environment variables ``BPTT_UNROLL`` (an integer) and ``BPTT_COMPILER_OPTIONS`` (a JSON
    object of XLA options) override the compile settings, for measuring alternatives.
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; allowed: {', '.join(GROUPINGS)}")
    base = PROFILES["cpu" if platform == "cpu" else "gpu"]
    base = replace(base, platform=platform)
    if grouping == "auto" and platform == "cpu" and steps is not None and steps <= tiny_steps():
        grouping = "wide"
    if grouping != "auto":
        wide = grouping == "wide"
        base = replace(base, merge_flows=wide, pad_levels=wide)
    if "BPTT_UNROLL" in os.environ:
        base = replace(base, unroll=max(1, int(os.environ["BPTT_UNROLL"])))
    if "BPTT_COMPILER_OPTIONS" in os.environ:
        base = replace(base, compiler_options=dict(json.loads(os.environ["BPTT_COMPILER_OPTIONS"])))
    return base


_XLA_DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\S*)")


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, which ``taskset``, cgroup cpusets and
    SLURM's ``--cpus-per-task`` set (``os.cpu_count()`` where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def rows_per_core(rows: int, n_devices: int, cores: int) -> float:
    """The load of a program whose ``rows`` are split over ``n_devices`` devices sharing ``cores``
    cores, in rows one core computes: the rows each device holds (filler rows included, so that
    the rows shard evenly) times the devices that share a core."""
    return -(-rows // n_devices) * max(1.0, n_devices / cores)


def fit_devices(rows: int, available: int, cores: int) -> int:
    """The fewest of ``available`` devices with the least ``rows_per_core``: 9 rows on 2 cores
    take 3 devices of 3 rows each (4.5 rows per core), not 2 devices of 5 rows with a filler
    (5 rows per core). Measured on 2 cores (cart-pole R, 9 rows, steady seconds per epoch):
    3 devices 0.825 and 0.780 s, 2 devices 0.944 and 0.916 s, 1 device 1.58 and 1.61 s."""
    return min(range(1, max(1, min(rows, available)) + 1), key=lambda k: (rows_per_core(rows, k, cores), k))


def program_load(profile: Profile, rows: int, cores: int, available: int | None = None) -> tuple[int, float]:
    """``(devices used, rows_per_core)`` of a program of ``rows`` rows in a process on ``cores``
    cores with ``available`` devices (default: the count ``cpu_devices`` gives such a process);
    a fitting profile fits to those cores."""
    if profile.fit_cores:
        profile = replace(profile, fit_cores=cores)
    used = profile.devices_for(rows, cpu_devices({}, cores)[0] if available is None else available)
    return used, rows_per_core(rows, used, cores)


def cpu_devices(
    env: Mapping[str, str], cores: int, requested: int | None = None, rows: int | None = None
) -> tuple[int, str, bool]:
    """How many jax CPU devices a process should have: ``(count, why, set_by_us)``.

    An explicit ``requested`` count wins; then a count the user gave jax (``JAX_NUM_CPU_DEVICES``,
    or ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``); else two devices per usable
    core (one on a single core), so that programs and rows spread over every core (XLA gives a
    process one CPU device, and this project's programs are too small for its intra-op threads
    to use a second core), and a program can take the count that splits its rows evenly
    (``fit_devices``). Where the widest program the process may run is known to have at most
    ``rows`` rows, it gets only the devices such a program uses: a one-row program's process
    has one device, as before every core was used. Devices a process has but its program does
    not use are not free: a one-row quantum program spent 7-15 % more CPU time per epoch in a
    process of four devices than in one of one (XLA's CPU client with several devices), and
    more wall time on a loaded machine (issue 33). Raises ValueError for a count that is not a
    positive integer.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"invalid device count {requested}; allowed: a positive integer")
        return requested, f"--devices {requested}", True
    if "JAX_NUM_CPU_DEVICES" in env:
        return _positive(env["JAX_NUM_CPU_DEVICES"], "JAX_NUM_CPU_DEVICES"), "JAX_NUM_CPU_DEVICES", False
    match = _XLA_DEVICE_COUNT.search(env.get("XLA_FLAGS", ""))
    if match:
        return _positive(match.group(1), "XLA_FLAGS device count"), "XLA_FLAGS", False
    if cores == 1:
        return 1, "one per usable core (1)", True
    if rows is not None:
        count = fit_devices(rows, 2 * cores, cores)
        return count, f"those {rows} row(s) use on {cores} usable cores", True
    return 2 * cores, f"two per usable core ({cores}); each program uses those that split its rows best", True


def intra_op_threads(cores: int, count: int) -> int:
    """Threads to give XLA's CPU intra-op pool in a process of ``count`` CPU devices on ``cores``
    usable cores: ``max(cores, count + 1)``, XLA's own choice (the cores) unless the devices
    would take every thread.

    jaxlib's LAPACK kernels (quantum's tridiagonal solve, the diagnostics' SVD) split a batch
    over that pool and block one of its threads until the parts are done. A program sharded over
    as many devices as the pool has threads can block every thread at once, and then nothing
    runs the parts: ``--devices 2`` on two cores hung quantum at paper scale, every time. With
    a spare thread some thread is always free to run them. Fewer devices than cores leave a
    thread free already. XLA takes the pool's size from the environment variable ``NPROC`` where
    it is set (else the usable cores)."""
    return max(cores, count + 1)


def _positive(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"invalid {name} {text!r}; allowed: a positive integer")
    return value


def current(grouping: str = "auto", steps: int | None = None) -> Profile:
    """The profile of jax's default backend."""
    import jax

    return profile(jax.default_backend(), grouping, steps)


# --- where this process computes: the one place that sets it ---------------------------------

DEVICES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class Placement:
    """Where a process computes, as :func:`configure` set it.

    Attributes:
      count, why: its jax CPU device count and why that many (``cpu_devices``).
      fit: the count is ours (those the grid's rows use, at most two per core), so each program
        takes the devices that split its rows best (``Profile.fit_cores``); an explicit count is
        used as given.
      target: a GPU compiled for without one (``--target``), or None: programs are then laid
        out for a GPU while jax computes on the CPU.
    """

    count: int
    why: str
    fit: bool
    target: str | None = None

    def profile(self, grouping: str = "auto", steps: int | None = None) -> Profile:
        """The profile programs are planned and compiled with here, for runs of at most
        ``steps`` optimizer steps where that is known (``profile``)."""
        if self.target is not None:
            return profile("gpu", grouping)
        base = current(grouping, steps)
        return replace(base, fit_cores=usable_cores()) if base.platform == "cpu" and self.fit else base


def _set_jax_count(count: int) -> None:
    """Where jax is imported already (it read ``JAX_NUM_CPU_DEVICES`` then) but has not started
    a backend, its configuration still takes the count; a started backend keeps its devices."""
    import sys

    if "jax" not in sys.modules:
        return
    import jax
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_num_cpu_devices", count)


def configure(
    device: str = "auto",
    count: int | None = None,
    *,
    target: str | None = None,
    cores: Sequence[int] | None = None,
    rows: int | None = None,
    env: MutableMapping[str, str] = os.environ,
) -> Placement:
    """Set where this process computes, before jax starts (it reads these once, at start-up):
    the one place that decides devices. Every compile (a run, a pool's worker, the GPU compile
    of ``--target``, ``make bench``) then goes through ``runner.build.numerics`` for its numbers.

    ``cores`` first pins the process to those cores (a pool's worker: its devices are then
    those cores, whatever count its parent had). The CPU device count is ``cpu_devices``', for
    programs of at most ``rows`` rows where that is known; XLA's intra-op pool gets a spare
    thread where the devices would take every one (``intra_op_threads``). ``device`` ``"cpu"`` (or a
    ``target``, compiled for without a GPU) keeps jax off any GPU; ``"gpu"`` refuses to fall
    back to the CPU. Raises ValueError, naming the bad value and what is allowed, for a device
    or a count that cannot be.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    inherited = env
    if cores:
        os.sched_setaffinity(0, cores)
        inherited = {k: v for k, v in env.items() if k != "JAX_NUM_CPU_DEVICES"}  # the parent's count
    n_cores = usable_cores()
    n, why, ours = cpu_devices(inherited, n_cores, count, rows)
    if ours:
        env["JAX_NUM_CPU_DEVICES"] = str(n)
        _set_jax_count(n)
    env["NPROC"] = str(intra_op_threads(n_cores, n))
    if device == "cpu" or target is not None:
        env["JAX_PLATFORMS"] = "cpu"
    if target is not None:  # jax's CUDA plugin registers without a driver
        env.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    elif device == "gpu":
        # jax already prefers a GPU when it has one; here we only refuse to fall back to the CPU.
        import jax

        try:
            jax.devices("gpu")
        except Exception:  # jax raises RuntimeError, or asserts when every backend is filtered out
            raise ValueError(
                "device 'gpu' requested but jax sees no GPU (install the CUDA build: make install where "
                "nvidia-smi works, or pip install 'bptt-cli[gpu]'); allowed here: auto, cpu"
            ) from None
    return Placement(n, why, ours and count is None, target)
