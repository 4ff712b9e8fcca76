"""Every core: the jax CPU device count a process takes, the worker processes a machine runs,
and results that do not depend on either (diagnostics included, on several devices)."""

import json
import os
import shutil
import subprocess
import threading

import pandas as pd
import pytest
from clitools import BIN, cli, definition, env_for, here, metrics

from bptt_cli import results
from bptt_cli.core import devices
from bptt_cli.workers import core_groups

FIT_WHY = "two per usable core (6); each program uses those that split its rows best"


@pytest.mark.parametrize(
    ("env", "requested", "expected"),
    [
        ({}, None, (12, FIT_WHY, True)),
        ({}, 2, (2, "--devices 2", True)),
        ({"JAX_NUM_CPU_DEVICES": "3"}, None, (3, "JAX_NUM_CPU_DEVICES", False)),
        ({"JAX_NUM_CPU_DEVICES": "3"}, 5, (5, "--devices 5", True)),  # the option wins over the variable
        ({"XLA_FLAGS": "--a=1 --xla_force_host_platform_device_count=4 --b"}, None, (4, "XLA_FLAGS", False)),
        ({"XLA_FLAGS": "--xla_backend_optimization_level=0"}, None, (12, FIT_WHY, True)),
    ],
)
def test_cpu_device_count(env, requested, expected):
    assert devices.cpu_devices(env, cores=6, requested=requested) == expected


def test_one_core_gets_one_device():
    assert devices.cpu_devices({}, cores=1) == (1, "one per usable core (1)", True)


@pytest.mark.parametrize(
    ("rows", "available", "cores", "used"),
    [
        (9, 4, 2, 3),  # 3 rows per device, 1.5 devices per core: 4.5 rows per core (2 devices: 5)
        (3, 4, 2, 3),  # 1.5 rows per core (2 devices: 2, with a filler)
        (10, 4, 2, 2),  # 5 (3 devices: 4 rows each x 1.5 = 6)
        (6, 4, 2, 2),  # 3, as on 3 devices: the fewer
        (144, 4, 2, 2),
        (1, 4, 2, 1),
        (9, 1, 2, 1),  # only one device
        (9, 4, 1, 1),  # one core: more devices only add fillers
        (9, 8, 4, 5),  # 2 rows per device (one a filler), 1.25 devices per core: 2.5 (3 devices: 3)
    ],
)
def test_a_program_takes_the_devices_that_split_its_rows_best(rows, available, cores, used):
    assert devices.fit_devices(rows, available, cores) == used
    fitted = devices.Profile(platform="cpu", merge_flows=False, pad_levels=False, fit_cores=cores)
    assert fitted.devices_for(rows, available) == used
    assert devices.Profile(platform="cpu", merge_flows=False, pad_levels=False).devices_for(rows, 3) == min(
        rows, 3
    )


@pytest.mark.parametrize(
    ("rows", "cores", "count", "threads"),
    [
        (1, 2, 1, 2),  # one row: one device and XLA's own pool, as before every core was used
        (2, 2, 2, 3),  # as many devices as cores: a spare thread for LAPACK's blocked one
        (3, 2, 3, 4),
        (9, 2, 3, 4),  # 3 rows a device
        (48, 2, 2, 3),  # 24 rows a core on 2 or 4 devices: the fewer
        (1, 8, 1, 8),
        (5, 1, 1, 2),  # a single core has one device
    ],
)
def test_a_process_takes_the_devices_its_widest_program_uses(rows, cores, count, threads):
    got, _, ours = devices.cpu_devices({}, cores, rows=rows)
    assert (got, ours) == (count, True)
    assert got == devices.fit_devices(rows, 2 * cores if cores > 1 else 1, cores)
    assert devices.intra_op_threads(cores, got) == threads
    assert devices.intra_op_threads(cores, got) > min(got, rows)  # a thread free of LAPACK's blocks


def test_a_process_without_its_rows_known_takes_two_devices_per_core():
    assert devices.cpu_devices({}, 2)[0] == 4
    assert devices.intra_op_threads(2, 4) == 5
    assert devices.cpu_devices({"JAX_NUM_CPU_DEVICES": "6"}, 2, rows=1)[0] == 6  # the user's count wins


def test_rows_per_core():
    assert devices.rows_per_core(9, 2, 2) == 5  # one filler row
    assert devices.rows_per_core(9, 3, 2) == 4.5
    assert devices.rows_per_core(9, 1, 2) == 9  # a second core idles


def bptt_run_on_two_cores(*args, cwd, cache) -> subprocess.CompletedProcess:
    """``bptt-run args`` pinned to at most 2 of this process's cores, by ``taskset`` (a fork in
    this jax process could deadlock), which util-linux provides; the test skips without it."""
    taskset = shutil.which("taskset")
    if taskset is None:
        pytest.skip("needs taskset (util-linux) to run a command on at most 2 cores")
    pinned = [taskset, "-c", ",".join(map(str, sorted(os.sched_getaffinity(0))[:2]))]
    return subprocess.run(
        [*pinned, BIN / "bptt-run", *map(str, args)],
        cwd=cwd,
        env=env_for(cache),
        capture_output=True,
        text=True,
        timeout=400,
    )


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_default_devices_split_rows_evenly_with_the_same_results(tmp_path, jax_cache, capsys):
    """One process on 2 cores with the default device count: a program of 3 rows (one clip x 3
    seeds) takes 3 devices, one row each (not 2 with a filler row, nor a fourth it would not
    use), and its metrics equal those of one device (the same command with --devices 1, in this
    process)."""
    path = definition(tmp_path, epochs=2, seeds=3, diagnostics=False)
    grid = (path, "--flow", "R", "--clip", "NORM")  # one run (every flow is sharded alike)
    one = here("bptt-run", *grid, "--out", tmp_path / "1", "--devices", "1", capsys=capsys, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    result = bptt_run_on_two_cores(
        *grid, "--out", tmp_path / "default", "--workers", "1", cwd=tmp_path, cache=jax_cache
    )
    assert result.returncode == 0, result.stderr
    assert "3 CPU device(s): those 3 row(s) use on 2 usable cores" in result.stderr, result.stderr
    for label, n_devices in (("1", 1), ("default", 3)):
        (meta,) = [json.loads(p.read_text()) for p in (tmp_path / label / "tiny").glob("*.json")]
        assert len(meta["devices"]) == n_devices, meta["devices"]
    pd.testing.assert_frame_equal(
        metrics(tmp_path / "default" / "tiny"), metrics(tmp_path / "1" / "tiny"), rtol=1e-6
    )


@pytest.mark.slow  # a paper-scale quantum epoch, ~20 s alone on 2 cores
def test_a_lapack_kernel_on_as_many_devices_as_cores_does_not_hang(tmp_path, jax_cache):
    """Quantum's tridiagonal solve is jaxlib's LAPACK kernel, which blocks an XLA pool thread
    while other pool threads solve parts of its batch. ``--devices 2`` on two cores (a pool of
    two threads) hung at paper scale (256 states) every time, until the process gave the pool
    a spare thread (``devices.intra_op_threads``). The run takes ~20 s alone on 2 cores; the
    timeout only catches the hang."""
    args = "quantum --scale paper --level 3 --clip NORM --flow R --seeds 2 --epochs 1 --devices 2"
    result = bptt_run_on_two_cores(
        *args.split(), "--no-diagnostics", "--out", tmp_path / "out", cwd=tmp_path, cache=jax_cache
    )
    assert result.returncode == 0, result.stderr
    assert "on 2 CPU device(s): --devices 2" in result.stderr
    losses = metrics(tmp_path / "out" / "quantum")["test_loss"]
    assert len(losses) == 2 and losses.notna().all()


@pytest.mark.parametrize(
    ("env", "requested"),
    [({"JAX_NUM_CPU_DEVICES": "x"}, None), ({"JAX_NUM_CPU_DEVICES": "0"}, None), ({}, 0), ({}, -3)],
)
def test_bad_cpu_device_count(env, requested):
    with pytest.raises(ValueError, match="allowed: a positive integer"):
        devices.cpu_devices(env, cores=2, requested=requested)


def test_usable_cores_follow_the_affinity(monkeypatch):
    """A process pinned to some cores (taskset, a cgroup cpuset, SLURM's --cpus-per-task) counts
    those, not the machine's; where affinity is unknown, the machine's cores."""

    def usable_when_pinned_to(cores: set[int]) -> int:
        answer = []  # in a thread of its own: pinning it leaves this process's affinity alone

        def pinned():
            os.sched_setaffinity(0, cores)
            answer.append(devices.usable_cores())

        thread = threading.Thread(target=pinned)
        thread.start()
        thread.join()
        return answer[0]

    available = sorted(os.sched_getaffinity(0))
    for n in range(1, min(len(available), 3) + 1):
        assert usable_when_pinned_to(set(available[-n:])) == n
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert devices.usable_cores() == 7


@pytest.mark.parametrize(
    ("cores", "n", "groups"),
    [
        ([0, 1], 2, [[0], [1]]),
        ([3, 1, 2, 0], 2, [[0, 1], [2, 3]]),
        ([0, 1, 2], 2, [[0], [1, 2]]),
        ([4, 5, 6, 7, 8], 3, [[4], [5, 6], [7, 8]]),
        ([0, 1], 1, [[0, 1]]),
    ],
)
def test_core_groups_are_disjoint_and_cover(cores, n, groups):
    assert core_groups(cores, n) == groups


@pytest.mark.slow  # four commands with diagnostics; the fast suite compares 1 and 3 devices above
def test_same_results_on_1_2_and_3_devices_and_with_workers(tmp_path, jax_cache):
    """One process on 1, 2 or 3 jax CPU devices (rows sharded, 3 seeds x 2 clips padded to a
    multiple of the device count), and the default: a worker process per core, each training
    its own programs. Metrics and gradient diagnostics agree to float32 rounding."""
    path = definition(tmp_path, epochs=2, seeds=3, diagnostics=True)
    outputs = {}
    for label, args in {
        "1": ["--devices", "1"],
        "2": ["--devices", "2"],
        "3": ["--devices", "3"],
        "workers": [],
    }.items():
        out = tmp_path / label
        result = cli("bptt-run", path, "--out", out, *args, cache=jax_cache, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs[label] = out
        metas = [json.loads(p.read_text()) for p in (out / "tiny").glob("*.json")]
        if label == "workers":
            assert f"on {len(os.sched_getaffinity(0))} CPU cores: 2 worker processes" in result.stderr
            assert len({m["history"][0]["worker"] for m in metas}) == 2  # both workers trained
            assert all(m["devices"] == ["cpu:0"] for m in metas)  # each on its one core
        else:
            assert all(len(m["devices"]) == int(label) for m in metas), [m["devices"] for m in metas]
    reference = metrics(outputs["1"] / "tiny")
    keys = ["run_id", "seed", "epoch", "t"]
    reference_diagnostics = results.read_results(outputs["1"], kind="diagnostics").sort_values(keys)
    assert len(reference_diagnostics) == 4 * 3 * 2 * 101  # runs x seeds x diagnosed epochs (0, 1) x (Nt + 1)
    for label in ("2", "3", "workers"):
        pd.testing.assert_frame_equal(metrics(outputs[label] / "tiny"), reference, rtol=1e-6)
        diagnosed = results.read_results(outputs[label], kind="diagnostics").sort_values(keys)
        pd.testing.assert_frame_equal(
            diagnosed.reset_index(drop=True), reference_diagnostics.reset_index(drop=True), rtol=1e-5
        )


@pytest.mark.parametrize("variable", ["TMPDIR", "SLURM_TMPDIR"])
def test_a_slurm_array_needs_a_folder_every_task_reaches(variable, tmp_path, capsys):
    private = tmp_path / "private"
    private.mkdir()
    extra = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", variable: str(private)}
    out = private / "results"
    result = here("bptt-run", "cartpole", "--out", out, capsys=capsys, cwd=tmp_path, **extra)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "is in this array task's own temporary space" in result.stderr
    assert not out.exists()
    shared = here(
        "bptt-run",
        "cartpole",
        "--out",
        tmp_path / "shared",
        "--dry-run",
        capsys=capsys,
        cwd=tmp_path,
        **extra,
    )
    assert shared.returncode == 0, shared.stderr  # a folder outside it is fine
