"""Simulators as people write them (tests/data/implicit_pendulum.py), through the real command
line: a step with its own adjoint (``jax.custom_vjp``, reverse mode only) trains every flow with
the diagnostics on and plots; a step jax cannot differentiate is one line, exit code 2, nothing
written; a step with a hidden ``stop_gradient`` trains with a one-line warning, and R equals S."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clitools import cli, here
from jax.test_util import check_grads

from bptt_cli import problems, results

DATA = Path(__file__).parent / "data"
DEFINITION = """
problem = "{problem}"
[grid]
levels = [0.2, 1.0]
flows = {flows}
clips = ["NORM"]
[train]
epochs = 2
seeds = 2
n_data = 16
batch_size = 8
[options]
solver = "{solver}"
"""


@pytest.fixture(scope="module")
def pendulum():
    return sys.modules[problems.get(str(DATA / "implicit_pendulum.py")).make_task.__module__]


def definition(tmp_path: Path, solver: str, flows=("R", "M", "C", "S")) -> Path:
    path = tmp_path / f"{solver}.toml"
    flow_list = "[" + ", ".join(f'"{f}"' for f in flows) + "]"
    path.write_text(DEFINITION.format(problem=DATA / "implicit_pendulum.py", flows=flow_list, solver=solver))
    return path


def test_adjoint_equals_differentiating_the_unrolled_solver_and_finite_differences(pendulum, x64):
    """The custom adjoint against reverse mode through a fixed number of Newton iterations (a
    program jax differentiates by itself), and against central differences."""

    @jax.jit
    def unrolled(x, u, damping):
        y = x
        for _ in range(30):
            jac = jax.jacfwd(pendulum.residual)(y, x, u, damping)
            y = y - jnp.linalg.solve(jac, pendulum.residual(y, x, u, damping))
        return y

    step = jax.jit(pendulum.adjoint_step)
    adjoint = jax.jit(jax.jacrev(pendulum.adjoint_step, argnums=(0, 1, 2)))
    exact = jax.jit(jax.jacrev(unrolled, argnums=(0, 1, 2)))
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, u, damping = jnp.asarray(rng.uniform(-1, 1, 2)), jnp.float64(rng.normal()), jnp.float64(0.4)
        np.testing.assert_allclose(step(x, u, damping), unrolled(x, u, damping), rtol=1e-12)
        for g, w in zip(adjoint(x, u, damping), exact(x, u, damping), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
        check_grads(step, (x, u, damping), order=1, modes=["rev"])
    with pytest.raises(TypeError, match="forward-mode"):  # what the diagnostics once required
        jax.jacfwd(pendulum.adjoint_step)(x, u, damping)


@pytest.mark.slow  # every flow's and the diagnostics' compiles; the adjoint itself is checked above
def test_custom_vjp_step_trains_every_flow_with_diagnostics_and_plots(tmp_path, jax_cache):
    out = tmp_path / "out"
    done = cli("bptt-run", definition(tmp_path, "adjoint"), "--out", out, cache=jax_cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    metrics = results.read_results(out)
    assert sorted(metrics["flow"].unique()) == ["C", "M", "R", "S"]
    assert len(metrics) == 4 * 2 * 2 * 2 and np.isfinite(metrics["test_loss"]).all()
    diag = results.read_results(out, kind="diagnostics")
    assert sorted(diag["epoch"].unique()) == [0, 1]  # the diagnosed epochs within 2
    steps = diag[diag["t"] < 20]
    assert steps["jac_physics"].notna().all() and (steps["jac_physics"] > 0).all()
    assert np.isfinite(steps["log10_sensitivity_closed_loop"]).all()
    # The pendulum's own Jacobians damp (implicit Euler): the product decays, the bound above it.
    assert (steps["log10_sensitivity_physics"] <= steps["log10_growth_physics"] + 1e-5).all()
    plotted = cli("bptt-plot", out, cache=jax_cache, cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert {"adjoint.png", "adjoint_diagnostics.png"} <= names, names


def test_step_jax_cannot_differentiate_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    done = here("bptt-run", definition(tmp_path, "while"), "--out", out, capsys=capsys, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("bptt-run: error:"), done.stderr
    assert (
        "problem 'implicit_pendulum': step cannot be differentiated in reverse mode (jax.vjp)" in done.stderr
    )
    assert "while_loop" in done.stderr and "jax.custom_vjp" in done.stderr
    assert not out.exists()


def test_hidden_stop_gradient_warns_once_and_r_trains_like_s(tmp_path, jax_cache):
    out = tmp_path / "out"
    toml = definition(tmp_path, "frozen", flows=("R", "S"))
    done = cli("bptt-run", toml, "--out", out, "--no-diagnostics", cache=jax_cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, done.stderr  # one per level; from the parent only, not per worker
    for line, level in zip(warnings, ("0.2", "1.0"), strict=True):
        assert line.startswith("bptt-run: warning: problem 'implicit_pendulum' at damping = " + level)
        assert "∂step/∂x is zero at all 4 checked states" in line and "train like S" in line
    assert "∂step/∂u" not in done.stderr
    metrics = results.read_results(out).sort_values(["level", "seed", "epoch"])
    by_flow = {flow: rows["test_loss"].to_numpy() for flow, rows in metrics.groupby("flow")}
    np.testing.assert_allclose(by_flow["R"], by_flow["S"], rtol=1e-6)
    assert len(by_flow["R"]) == 2 * 2 * 2


def test_check_transforms_names_function_and_transformation(pendulum):
    problem = problems.get(str(DATA / "implicit_pendulum.py"))
    problems.check_transforms(problem, 0.2, {"solver": "adjoint"}, flows=["R", "M", "S", "C"])
    with pytest.raises(problems.ProblemError, match=r"step cannot be differentiated in reverse mode"):
        problems.check_transforms(problem, 0.2, {"solver": "while"}, flows=["S"], diagnostics=False)
    assert problems.dead_gradients(problem, 0.2, {"solver": "adjoint"}) == []
    (frozen,) = problems.dead_gradients(problem, 0.2, {"solver": "frozen"})
    assert "∂step/∂x is zero" in frozen
