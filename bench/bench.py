"""Speed figures for `make bench`: the runner's own compiled programs, timed on this machine.

Sections (compare ratios within one run: machines are noisy):
1. seconds per epoch of one program per problem, flow and row count (CPU: 1, 8, 32 rows per
   flow in the CPU layout; GPU: 1, 8, 64, 512, 2048 rows), with compile times;
2. the two program layouts side by side (one program per flow, or one wide program);
3. GPU only: unroll factors and XLA command buffers for while loops;
4. the cost of the gradient diagnostics against a paper-scale run;
5. the host's share of wall time in a real run of a paper-sized program (48 runs per commit);
6. where a CPU's time goes for cart-pole: its matrix products against this CPU's peak;
7. the paper grid's estimated wall time on this machine;
9. GPU only: wall seconds per kernel launch of the paper programs (an epoch's time over its
   launches counted in the optimized HLO), stored for `bptt-run --dry-run --target`;
8. every core: steady seconds per epoch of whole bptt-run commands on one jax CPU device (as
   the releases before every-core) and by default (one device per usable core, and one worker
   process per core for a grid of several programs), for a many-row program per problem and
   for a grid of four one-row programs;
r. this checkout against a previous release (0.2.0 by default, installed from its commit into
   .bench/ on first use): whole bptt-run commands, one-row programs of every problem and a
   many-row grid, side by side and alternating, with the ratios (bench/release.py).
The figures of sections 1-2 are stored for `bptt-run --dry-run` estimates.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# Compile times are measured: no persistent compilation cache (before the runner reads it).
os.environ["BPTT_COMPILE_CACHE"] = "off"

import jax
import jax.numpy as jnp

from bptt_cli import config, estimate, problems, runner
from bptt_cli.core import devices, plan

CPU_ROWS = (1, 8, 32)
GPU_ROWS = (1, 8, 64, 512, 2048)
PROBLEMS = {"cartpole": 2, "guidance": 0.1, "quantum": 3}  # the level each problem is timed at
TIMED_EPOCHS = 2


def program_for(problem: str, level, flows: list[str], rows: int, profile, n_data=256, epochs=1000):
    """One program of the runner: ``rows`` rows spread over the flows (seeds fill the rest)."""
    exp = config.load(problem)
    seeds = max(1, rows // len(flows))
    specs = config.resolve(
        exp,
        levels=[level],
        flows=flows,
        clips=["NORM"],
        seeds=seeds,
        epochs=epochs,
        n_data=n_data,
        diagnostics=False,
    )
    (program,) = plan.plan([(s, 0) for s in specs], profile, problems.get)
    return program


def time_program(program, profile, epochs=TIMED_EPOCHS) -> tuple[float, float, runner.Built]:
    """(compile seconds, steady seconds per epoch, the built program)."""
    built = runner.build(program, profile)
    state, metrics, _ = built.chunk(built.state, *built.inputs, jnp.int32(1))  # warm-up
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    state, metrics, _ = built.chunk(state, *built.inputs, jnp.int32(epochs))
    jax.block_until_ready(metrics)
    return built.compile_seconds, (time.perf_counter() - t0) / epochs, built


def header(title: str) -> None:
    print(f"\n== {title}", flush=True)


def section_rows(profile, gpu: bool, only, max_rows: int) -> list[dict]:
    header(
        "1. one program: seconds per epoch (256 training + 256 test states, per-epoch evaluation included)"
    )
    print(
        f"{'problem':9s} {'level':>5s} {'flow':>5s} {'rows':>5s} {'compile s':>9s} {'s/epoch':>8s} {'s/row-epoch':>11s}"
    )
    entries = []
    for name, level in PROBLEMS.items():
        if only and name != only:
            continue
        flow_sets = [["R"], ["C"]] if gpu else [["R"], ["M"], ["S"], ["C"]]
        for flows in flow_sets:
            counts = GPU_ROWS if gpu else (CPU_ROWS if name != "quantum" else CPU_ROWS[:2])
            for rows in [r for r in counts if r <= max_rows]:
                program = program_for(name, level, flows, rows, profile)
                compile_s, epoch_s, _ = time_program(program, profile)
                print(
                    f"{name:9s} {level!s:>5s} {flows[0]:>5s} {program.rows:5d} {compile_s:9.2f} {epoch_s:8.3f} "
                    f"{epoch_s / program.rows:11.4f}",
                    flush=True,
                )
                if flows[0] in ("R", "C"):
                    entries.append(
                        {
                            "problem": name,
                            "gradients": program.passes,
                            "rows": program.rows,
                            "epoch_seconds": epoch_s,
                            "compile_seconds": compile_s,
                            "n_data": 256,
                            "batch_size": 8,
                        }
                    )
    return entries


def section_layouts(platform: str, only) -> None:
    header(
        "2. layouts: one program per flow (narrow) against one program for all flows (wide), 8 seeds per flow"
    )
    print(
        f"{'problem':9s} {'layout':>7s} {'programs':>8s} {'compile s':>9s} {'s/epoch (sum)':>13s} {'s/row-epoch':>11s}"
    )
    for name, level in PROBLEMS.items():
        if only and name != only:
            continue
        seeds = 8 if name != "quantum" else 2
        for layout in ("narrow", "wide"):
            profile = devices.profile(platform, layout)
            specs = config.resolve(
                config.load(name), levels=[level], clips=["NORM"], seeds=seeds, epochs=1000, diagnostics=False
            )
            programs = plan.plan([(s, 0) for s in specs], profile, problems.get)
            timed = [time_program(p, profile) for p in programs]
            compile_s = sum(t[0] for t in timed)
            epoch_s = sum(t[1] for t in timed)
            rows = sum(p.rows for p in programs)
            print(
                f"{name:9s} {layout:>7s} {len(programs):8d} {compile_s:9.2f} {epoch_s:13.3f} {epoch_s / rows:11.4f}",
                flush=True,
            )


def section_gpu_options(platform: str, max_rows: int) -> None:
    rows = min(512, max_rows)
    header(f"3. GPU compile options (cart-pole, one wide program of 4 flows, {rows} rows)")
    print(f"{'unroll':>6s} {'command buffers':>22s} {'compile s':>9s} {'s/epoch':>8s}")
    buffers = [None, "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"]
    for unroll in (1, 2, 4, 8):
        for cb in buffers:
            options = {} if cb is None else {"xla_gpu_enable_command_buffer": cb}
            label = "XLA default" if cb is None else "+ WHILE, CONDITIONAL"
            profile = replace(devices.profile(platform, "wide"), unroll=unroll, compiler_options=options)
            program = program_for("cartpole", 2, ["R", "M", "C", "S"], rows, profile)
            try:
                compile_s, epoch_s, _ = time_program(program, profile)
                print(f"{unroll:6d} {label:>22s} {compile_s:9.2f} {epoch_s:8.3f}", flush=True)
            except Exception as err:  # an option this jaxlib does not know: say so and go on
                print(f"{unroll:6d} {label:>22s}   failed: {' '.join(str(err).split())[:80]}")


def section_launch_cost(profile) -> None:
    from bptt_cli.runner import aot

    header("9. GPU: wall seconds per kernel launch (paper-scale wide programs, 3 seeds)")
    print(f"{'problem':9s} {'rows':>5s} {'launches/epoch':>14s} {'s/epoch':>8s} {'µs/launch':>9s}")
    per_launch = []
    for name in PROBLEMS:
        specs = config.resolve(config.load(name), seeds=3, diagnostics=False)
        for program in plan.plan([(s, 0) for s in specs], profile, problems.get):
            _, epoch_s, built = time_program(program, profile)
            launches = aot.kernel_launches(built.chunk.as_text())
            per_launch.append(epoch_s / launches)
            print(
                f"{name:9s} {program.rows:5d} {launches:14,d} {epoch_s:8.3f} {1e6 * per_launch[-1]:9.2f}",
                flush=True,
            )
    median = float(sorted(per_launch)[len(per_launch) // 2])
    print(
        f"median {1e6 * median:.2f} µs per launch; stored for --dry-run --target: {estimate.save_launch_seconds(median)}"
    )


def section_diagnostics(profile, only) -> None:
    header("4. diagnostics: cost against a paper-scale run (1000 epochs, diagnosed at 0, 1, 10, 100, 1000)")
    print(f"{'problem':9s} {'rows':>4s} {'compile s':>9s} {'call s':>7s} {'run s':>8s} {'extra':>6s}")
    for name, level in PROBLEMS.items():
        if only and name != only:
            continue
        program = program_for(name, level, ["C"], 3, profile)
        program = replace(
            program, runs=tuple(replace(s, diagnostics=(0, 1, 10, 100, 1000)) for s in program.runs)
        )
        compile_s, epoch_s, built = time_program(program, profile)
        t0 = time.perf_counter()
        jax.block_until_ready(built.diagnose(built.state.theta, *built.inputs))
        diag_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(built.diagnose(built.state.theta, *built.inputs))
        call = time.perf_counter() - t0
        run_s = compile_s + 1000 * epoch_s
        extra = (diag_compile - call + 5 * call) / run_s
        print(
            f"{name:9s} {program.rows:4d} {diag_compile - call:9.2f} {call:7.3f} {run_s:8.0f} {extra:6.1%}",
            flush=True,
        )


def section_host(platform: str) -> None:
    header("5. host share: a real run of the cart-pole paper grid as ONE wide program (48 runs x 3 seeds)")
    profile = devices.profile(platform, "wide")
    specs = config.resolve(config.load("cartpole"), epochs=12, n_data=32, diagnostics=False)
    os.environ["BPTT_CHUNK_EPOCHS"] = "2"  # many commits: the worst case for the host
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = runner.run(specs, Path(out), profile=profile)
        wall = time.perf_counter() - t0 - sum(set(report.compile_seconds.values()))
    del os.environ["BPTT_CHUNK_EPOCHS"]
    (program,) = plan.plan([(s, 0) for s in specs], profile, problems.get)
    built = runner.build(program, profile)
    state = built.state
    jax.block_until_ready(built.chunk(state, *built.inputs, jnp.int32(2)))
    t0 = time.perf_counter()
    for _ in range(6):
        state, metrics, _ = built.chunk(state, *built.inputs, jnp.int32(2))
    jax.block_until_ready(metrics)
    pure = time.perf_counter() - t0
    print(
        f"12 epochs in 6 commits of 48 runs: wall {wall:.2f} s (after compile), compiled chunks back to back "
        f"{pure:.2f} s, host work {report.host_seconds:.2f} s ({report.host_seconds / 6:.3f} s per commit, "
        f"overlapping the next chunk)\nshare of wall time outside compiled code: {max(0.0, 1 - pure / wall):.1%}",
        flush=True,
    )


def section_cpu_limit() -> None:
    header("6. where a CPU's time goes: cart-pole's matrix products against this CPU's peak")
    width, batch, steps = 100, 8, 1000
    w = jax.random.normal(jax.random.key(0), (width, width))
    x = jax.random.normal(jax.random.key(1), (batch, width))

    @jax.jit
    def chain(x):
        return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=steps)[0]

    jax.block_until_ready(chain(x))
    t0 = time.perf_counter()
    jax.block_until_ready(chain(x))
    seconds = time.perf_counter() - t0
    peak = 2 * batch * width * width * steps / seconds / 1e9
    # One cart-pole update (2 poles): forward through 10-100-100-1 and back (about 3x forward),
    # 100 steps, 32 minibatches of 8, plus the forward evaluation of 512 states per epoch.
    flops_step = 2 * (10 * width + width * width + width)
    epoch_flops = 3 * flops_step * batch * 100 * 32 + flops_step * 512 * 100
    program = program_for("cartpole", 2, ["R"], 1, devices.profile("cpu", "narrow"))
    _, epoch_s, _ = time_program(program, devices.profile("cpu", "narrow"))
    print(
        f"a scan of 8x100 @ 100x100 matrix products + tanh: {peak:.1f} GFLOP/s\n"
        f"cart-pole R, 1 seed: {epoch_flops / 1e9:.2f} GFLOP per epoch in {epoch_s:.3f} s = "
        f"{epoch_flops / epoch_s / 1e9:.1f} GFLOP/s ({epoch_flops / epoch_s / 1e9 / peak:.0%} of that rate)",
        flush=True,
    )
    scan_outputs_check()


def scan_outputs_check() -> None:
    """jaxlib 0.11.1 on a CPU copies a small stacked ``lax.scan`` output's whole buffer at every
    step (jax-ml/jax#40101): the cost per step then grows with the length. Every rollout here
    stacks its states, so a user on such a jaxlib trains several times slower."""
    import jaxlib

    def per_step(length: int) -> float:
        run = jax.jit(lambda x: jax.lax.scan(lambda h, _: (h * 0.5 + 1.0, h), x, None, length=length)[1])
        x = jnp.ones((8, 4))
        jax.block_until_ready(run(x))
        t0 = time.perf_counter()
        for _ in range(5):
            jax.block_until_ready(run(x))
        return (time.perf_counter() - t0) / 5 / length

    short, long = per_step(1_000), per_step(16_000)
    verdict = (
        "OK: the cost per step does not grow with the length"
        if long < 3 * short
        else f"SLOW: the cost per step grows with the length (jaxlib {jaxlib.__version__}; jax-ml/jax#40101): "
        "use another jaxlib version"
    )
    print(
        f"stacked scan outputs (8x4 per step): {1e9 * short:.0f} ns per step over 1000 steps, "
        f"{1e9 * long:.0f} ns over 16000: {verdict}",
        flush=True,
    )


def section_grid(profile) -> None:
    header("7. the paper grid (make reproduce: 132 configurations x 3 seeds x 1000 epochs) on this machine")
    specs = [s for name in ("cartpole", "guidance", "quantum") for s in config.resolve(config.load(name))]
    programs = plan.plan([(s, 0) for s in specs], profile, problems.get)
    entries = estimate.load()
    one = [estimate.program_seconds(program, entries) for program in programs]
    for program, seconds in zip(programs, one, strict=True):
        print(f"  {program.describe()}: {'no figures' if seconds is None else estimate.fmt(seconds)}")
    if None in one:
        print(f"{len(programs)} programs, estimated wall time unknown (no figures for some problem)")
        return
    cores = devices.usable_cores()
    workers = min(cores, len(programs))
    fit, per_worker = replace(profile, fit_cores=1), max(1, cores // workers)
    every = [
        estimate.program_seconds(p, entries, devices.program_load(fit, p.rows, per_worker)[1])
        for p in programs
    ]
    print(
        f"{len(programs)} programs, estimated wall time on one device (the releases before every-core): "
        f"{estimate.fmt(sum(one))}; on all {cores} cores ({workers} workers): "
        f"{estimate.fmt(estimate.plan_seconds(every, workers))}"
    )


# name -> (bptt-run arguments, (short, long) epochs): steady seconds per epoch are the wall-time
# difference of a short and a long run of the whole command over their epoch difference, so
# that start-up and compile times cancel. The long runs are long enough (30-60 s) that the
# start-up's own variation (a second or two: processes, imports, compiles) stays a few percent.
CORE_CASES = {
    "cartpole R, 9 rows": ("cartpole -l 2 -f R -c NORM -c NONE -c VALUE --seeds 3", (2, 40)),
    "guidance C, 9 rows": ("guidance -l 0.1 -f C -c NORM -c NONE -c VALUE --seeds 3", (2, 40)),
    "quantum C, 9 rows": ("quantum -l 4 -f C -c NORM -c NONE -c VALUE --seeds 3", (1, 5)),
    "cartpole R/M/S/C, 4 x 1 row": ("cartpole -l 2 -f R -f M -f S -f C -c NORM --seeds 1", (2, 60)),
}


def section_cores(only_case: str | None = None) -> None:
    import shutil
    import subprocess
    import sys

    cores = devices.usable_cores()
    header(
        f"8. every core: whole bptt-run commands, one process with one jax CPU device (the previous "
        f"releases) against the default on {cores} usable cores"
    )
    print(f"{'case':28s} {'1 device s/epoch':>16s} {'default':>8s} {'speed-up':>8s}")
    command = [str(Path(sys.executable).parent / "bptt-run")]
    for case, (args, (short, long)) in CORE_CASES.items():
        if only_case and only_case not in case:
            continue
        seconds = []
        for extra in ({"JAX_NUM_CPU_DEVICES": "1"}, {}):
            env = {**os.environ, "JAX_PLATFORMS": "cpu", "BPTT_COMPILE_CACHE": "off", **extra}
            walls = []
            for epochs in (short, long):
                out = tempfile.mkdtemp(prefix="bptt-bench-")
                t0 = time.perf_counter()
                subprocess.run(
                    [*command, *args.split(), "--epochs", str(epochs), "--no-diagnostics", "--out", out],
                    env=env,
                    capture_output=True,
                    check=True,
                )
                walls.append(time.perf_counter() - t0)
                shutil.rmtree(out)
            seconds.append((walls[1] - walls[0]) / (long - short))
        print(f"{case:28s} {seconds[0]:16.3f} {seconds[1]:8.3f} {seconds[0] / seconds[1]:7.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(PROBLEMS), help="one problem only (sections 1, 2 and 4)")
    parser.add_argument("--sections", default="123456789r", help="which sections to run, e.g. 18r")
    parser.add_argument(
        "--release", default="0.2.0", help="section r: the release to compare with (see bench/release.py)"
    )
    parser.add_argument("--max-rows", type=int, default=1 << 30, help="skip row counts above this")
    parser.add_argument(
        "--gpu-sections", action="store_true", help="run the GPU-only sections on any device (to check them)"
    )
    parser.add_argument("--case", help="sections 8 and r: only the cases whose name contains this")
    args = parser.parse_args()
    device = jax.devices()[0]
    gpu = device.platform != "cpu" or args.gpu_sections
    profile = devices.current()
    print(
        f"jax {jax.__version__} on {device.platform} ({device.device_kind}, {len(jax.devices())} device(s)), "
        f"{os.cpu_count()} CPU cores; layout {'wide' if profile.merge_flows else 'narrow'}, unroll "
        f"{profile.unroll}; {profile.basis}"
    )
    if "1" in args.sections:
        entries = section_rows(profile, gpu, args.only, args.max_rows)
        if not args.only and not args.gpu_sections:
            print(f"stored for --dry-run estimates: {estimate.save(entries, jax.__version__)}")
    if "2" in args.sections:
        section_layouts(device.platform, args.only)
    if "3" in args.sections and gpu:
        section_gpu_options(device.platform, args.max_rows)
    if "4" in args.sections:
        section_diagnostics(profile, args.only)
    if "5" in args.sections:
        section_host(device.platform)
    if "6" in args.sections and not gpu:
        section_cpu_limit()
    if "7" in args.sections:
        section_grid(profile)
    if "9" in args.sections and gpu:
        section_launch_cost(profile)
    if "8" in args.sections and not gpu:
        section_cores(args.case)
    if "r" in args.sections and not gpu:
        import release

        release.compare(args.release, only=args.case)


if __name__ == "__main__":
    main()
