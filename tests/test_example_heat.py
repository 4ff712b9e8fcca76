"""The worked example `examples/heat/`: a user's own simulator, loaded by file and by module path.

The physics against a NumPy transcription and its invariants, the abstract contract check, the
smoke scale through the real command line and its figure, and the same module as a package.
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from clitools import BIN, env_for
from jax.test_util import check_grads

from bptt_cli import problems

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "heat"
LEVELS = (1.0, 3.0, 10.0, 30.0)


@pytest.fixture(scope="module")
def heat():
    """The example module, loaded as the runner loads it: from its file."""
    return sys.modules[problems.get(str(EXAMPLE / "heat.py")).make_task.__module__]


def reference_step(x: np.ndarray, u: float, tau: float, n_steps: int = 64, t_end: float = 1.0) -> np.ndarray:
    """Backward Euler for u_t = (1/tau) u_ss on [0, 1], u(0) = control, u(1) = 0, written out
    densely: ``(I - r·Lap) x' = x + r·u·e_0``, ``r = dt / (tau h²)``."""
    n = x.size
    h = 1.0 / (n + 1)
    r = t_end / n_steps / (tau * h * h)
    lap = -2.0 * np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
    rhs = x.copy()
    rhs[0] += r * u
    return np.linalg.solve(np.eye(n) - r * lap, rhs)


# --- physics ------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 30.0])
def test_step_matches_numpy_for_one_and_many_steps(heat, x64, tau):
    params = heat.Params(diffusion_time=tau)
    rng = np.random.default_rng(0)
    x = rng.normal(size=params.n_points)
    controls = rng.normal(size=20) * 2.0
    step = jax.jit(lambda x, u: heat.step(x, u, params))
    got, want = jnp.asarray(x), x
    for i, u in enumerate(controls):
        got, want = step(got, jnp.float64(u)), reference_step(want, u, tau)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12, err_msg=f"step {i}")


def test_step_keeps_float32(heat):
    x = jnp.zeros(32, jnp.float32)
    assert heat.step(x, jnp.float32(1.0)).dtype == jnp.float32


def test_without_control_the_heat_decays_monotonically(heat):
    """Boundaries at 0 and no source: the discrete energy Σx² falls at every step, and the
    maximum principle holds (|x| never exceeds its initial maximum)."""
    params = heat.Params(diffusion_time=10.0)
    x, _ = heat.sample_data(jax.random.key(3), 4, params)
    energies, peak = [jnp.sum(x**2, axis=1)], jnp.max(jnp.abs(x), axis=1)
    step = jax.jit(jax.vmap(lambda x: heat.step(x, jnp.float32(0.0), params)))
    for _ in range(params.n_steps):
        x = step(x)
        energies.append(jnp.sum(x**2, axis=1))
        assert bool(jnp.all(jnp.max(jnp.abs(x), axis=1) <= peak + 1e-6))
    energies = np.asarray(jnp.stack(energies))
    assert np.all(np.diff(energies, axis=0) < 0)
    assert np.all(energies[-1] < 0.5 * energies[0])


@pytest.mark.parametrize("u", [1.0, -2.5])
def test_the_steady_profile_is_a_fixed_point(heat, x64, u):
    """Holding the left end at u, the linear profile u·(1 - s) is the discrete steady state."""
    params = heat.Params(diffusion_time=3.0)
    s = np.arange(1, params.n_points + 1) / (params.n_points + 1)
    x = jnp.asarray(u * (1.0 - s))
    np.testing.assert_allclose(np.asarray(heat.step(x, jnp.float64(u), params)), np.asarray(x), atol=1e-12)


def test_step_gradients(heat, x64):
    params = heat.Params(diffusion_time=3.0)
    x = jnp.asarray(np.random.default_rng(1).normal(size=params.n_points))
    check_grads(lambda x, u: heat.step(x, u, params), (x, jnp.float64(0.7)), order=1, modes=["fwd", "rev"])


# --- the contract -----------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["CONTINUOUS", "FINAL"])
def test_loads_by_file_and_passes_the_contract_check(loss):
    problem = problems.get(str(EXAMPLE / "heat.py"))
    assert (problem.name, problem.level_key, problem.level_is_static) == ("heat", "diffusion_time", False)
    for level in LEVELS:
        problems.check(problem, level, {**problem.default_options, "loss": loss})
    assert not problem.valid_level(0.0) and problem.valid_level(0.5)


def test_task_starts_at_zero_control_and_data_ignores_the_level(heat):
    problem = heat.PROBLEM
    tasks = [problem.make_task(jnp.float32(level), problem.default_options) for level in (1.0, 30.0)]
    x_train, x_test = tasks[0].sample_data(jax.random.key(0), 5)
    again = tasks[1].sample_data(jax.random.key(0), 5)
    np.testing.assert_array_equal(np.asarray(x_train), np.asarray(again[0]))
    assert x_train.shape == x_test.shape == (5, 32)
    theta = tasks[0].init_controller(jax.random.key(1))
    assert float(tasks[0].controller(theta, x_train[0])) == 0.0
    xs = jnp.zeros((2, 65, 32))
    total, aux = tasks[0].loss(xs, jnp.zeros((2, 64)))
    target = 1.0 - np.arange(1, 33) / 33
    assert math.isclose(float(total), float(np.mean(target**2)), rel_tol=1e-6)
    assert math.isclose(float(aux["tracking_loss"]), float(total), rel_tol=1e-6)


# --- the command line -------------------------------------------------------------------


def run(tool, *args, cache, cwd):
    """A command-line tool in a subprocess with PYTHONPATH unset, as in a user's fresh shell."""
    env = env_for(cache)
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(BIN / tool), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics(folder: Path) -> pd.DataFrame:
    csvs = [p for p in folder.glob("*.csv") if not p.name.endswith(".diagnostics.csv")]
    return pd.concat(pd.read_csv(p) for p in csvs).sort_values(["run_id", "seed", "epoch"])


@pytest.mark.slow  # 8 runs and the figures; the fast suite trains the example by module path below
def test_smoke_scale_trains_and_plots(tmp_path, jax_cache):
    out = tmp_path / "results"
    # Diagnostics off: they cost a compile per flow and the suite's time (the example keeps them).
    smoke = ("examples/heat/heat.toml", "--scale", "smoke", "--no-diagnostics", "--out", out)
    run("bptt-run", *smoke, cache=jax_cache, cwd=ROOT)
    frame = metrics(out / "heat")
    assert set(frame["flow"]) == {"R", "M", "C", "S"}
    assert set(frame["clip"]) == {"NORM"}
    assert set(frame["level"]) == {1.0, 30.0}
    assert frame["run_id"].nunique() == 8
    assert len(frame) == 8 * 2 * 3  # runs × seeds × epochs
    assert frame.groupby("run_id")["seed"].nunique().eq(2).all()
    assert frame.groupby(["run_id", "seed"])["epoch"].apply(list).map([1, 2, 3].__eq__).all()
    losses = frame[["batch_loss", "train_loss", "test_loss", "train_tracking_loss", "test_tracking_loss"]]
    assert np.isfinite(losses.to_numpy()).all() and not frame["diverged"].any()
    # Three epochs of four updates are enough for every flow to lower the training loss.
    for _, group in frame.groupby(["run_id", "seed"]):
        assert np.all(np.diff(group["train_loss"].to_numpy()) < 0), group[["flow", "level", "train_loss"]]

    plotted = run("bptt-plot", out, cache=jax_cache, cwd=ROOT)
    assert (out / "figures" / "heat.png").stat().st_size > 0
    assert (out / "figures" / "heat.pdf").is_file() and (out / "summary.md").is_file()
    summary = pd.read_csv(out / "summary.csv")
    heat_rows = summary[summary["experiment"] == "heat"]
    assert len(heat_rows) == 8 and (heat_rows["n_seeds"] == 2).all()
    assert "diffusion_time" in plotted.stdout


# The smoke scale's R program (same shapes), so that it comes from the compilation cache.
PACKAGE_DEFINITION = """
problem = "mylab.sims.heat"
[grid]
levels = [1.0, 30.0]
flows = ["R"]
clips = ["NORM"]
[train]
epochs = 2
seeds = 2
seed = 42
data_seed = 42
n_data = 32
batch_size = 8
optimizer = "adam"
learning_rate = 1e-3
clip_value = 1.0
clip_norm = 1.0
[diagnostics]
enabled = false
"""


def test_the_same_problem_by_module_path(tmp_path, jax_cache):
    """A user's package in the working folder: console scripts do not put it on sys.path, the
    resolver falls back to the working folder."""
    package = tmp_path / "mylab" / "sims"
    package.mkdir(parents=True)
    for folder in (package.parent, package):
        (folder / "__init__.py").write_text("")
    shutil.copy(EXAMPLE / "heat.py", package / "heat.py")
    (tmp_path / "lab.toml").write_text(PACKAGE_DEFINITION)
    run("bptt-run", "lab.toml", "--out", "results", cache=jax_cache, cwd=tmp_path)
    frame = metrics(tmp_path / "results" / "lab")
    assert len(frame) == 2 * 2 * 2 and set(frame["problem"]) == {"heat"}
    for sidecar in (tmp_path / "results" / "lab").glob("*.json"):
        assert json.loads(sidecar.read_text())["config"]["problem_ref"] == "mylab.sims.heat"
    assert np.isfinite(frame["test_loss"]).all() and not frame["diverged"].any()
    for _, group in frame.groupby(["run_id", "seed"]):
        assert group["train_loss"].iloc[1] < group["train_loss"].iloc[0]
