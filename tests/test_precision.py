"""--precision float64 (issue 28 item 3): the whole run in double precision, end to end, for
every built-in problem and a user's, starting from the float32 run's data and weights."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bptt_cli import config, problems, results
from bptt_cli.core import devices, flows
from bptt_cli.core.plan import plan
from bptt_cli.runner.build import numerics, prepare

HEAT = Path(__file__).resolve().parents[1] / "examples" / "heat" / "heat.toml"
DEFINITIONS = ["cartpole", "guidance", "quantum", "lqr", "pendulum", str(HEAT)]


def program_of(definition: str, precision: str, flow: str = "C", **train):
    exp = config.load(definition)
    specs = config.resolve(
        exp, "smoke", flows=[flow], clips=["NORM"], seeds=2, precision=precision, diagnostics=False, **train
    )
    profile = devices.profile("cpu")
    return plan([(specs[0], 0)], profile, problems.get)[0], profile


def leaf_dtypes(tree) -> set[str]:
    return {str(leaf.dtype) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)}


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda d: Path(d).stem)
def test_a_float64_program_is_float64_end_to_end(definition):
    """Traced, not compiled: data, per-row numbers, parameters, optimizer state, metrics and the
    trajectories are all float64 (complex128 inside quantum's step: its state stays real)."""
    program, profile = program_of(definition, "float64")
    with numerics(profile, program.precision):
        p = prepare(program, profile, 1)
        state = jax.eval_shape(p.init, p.hypers)
        n = jax.ShapeDtypeStruct((), jnp.int32)
        new_state, metrics, _ = jax.eval_shape(p.chunk_fn, state, p.hypers, p.x_train, p.x_test, n)
        task = p.task_of(jnp.float64(program.levels[0]))
        x0 = p.x_test[:2] if p.data_axis is None else p.x_test[0, :2]
        theta = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), state.theta)
        trajectory = jax.eval_shape(
            lambda theta, x0: flows.rollout("R", task.controller, task.step, theta, x0, task.n_steps),
            theta,
            x0,
        )
    for name, tree in {
        "data": (p.x_train, p.x_test),
        "hypers": (p.hypers.learning_rate, p.hypers.clip_norm, p.hypers.level),
        "parameters": state.theta,
        "optimizer state": state.opt_state,
        "parameters after a chunk": new_state.theta,
        "metrics": metrics,
        "trajectory": trajectory,
    }.items():
        assert leaf_dtypes(tree) == {"float64"}, name


def test_float32_programs_stay_float32_under_a_float64_sibling():
    program, profile = program_of("cartpole", "float32")
    with numerics(profile, program.precision):
        p = prepare(program, profile, 1)
        state = jax.eval_shape(p.init, p.hypers)
    assert leaf_dtypes((p.x_train, state.theta, state.opt_state)) == {"float32"}


def test_a_float64_run_agrees_with_float32_over_the_first_epochs(tmp_path):
    """Same data, same initial weights: the two precisions differ by float32 rounding only, and
    sit side by side in one results folder."""
    from bptt_cli import runner

    exp = config.load("cartpole")
    common = {"levels": [1], "flows": ["C"], "clips": ["NORM"], "seeds": 2, "epochs": 3, "n_data": 16}
    specs = [
        config.resolve(exp, "smoke", precision=p, diagnostics=False, **common)[0]
        for p in ("float32", "float64")
    ]
    assert specs[0].run_id != specs[1].run_id
    runner.run(specs, tmp_path, profile=devices.profile("cpu"))
    frame = results.read_results(tmp_path)
    assert set(frame["precision"].fillna("float32")) == {"float32", "float64"}
    single, double = (
        frame[frame["precision"].fillna("float32") == p].sort_values(["seed", "epoch"])
        for p in ("float32", "float64")
    )
    for name in ("batch_loss", "train_loss", "test_loss", "update_sq_norm", "cos_mr"):
        np.testing.assert_allclose(single[name], double[name], rtol=2e-4, err_msg=name)
    assert not np.array_equal(single["test_loss"], double["test_loss"])  # float64 did compute


@pytest.mark.parametrize(("precision", "matmul"), [("float64", "highest"), ("float32", "default")])
def test_the_gpu_compile_sees_the_runs_numerics(precision, matmul, monkeypatch):
    """`--dry-run --target` (aot.compile_for) compiles the program users run: its matmul
    precision and, for float64, x64 (compiled here for the CPU in place of the described GPU)."""
    import dataclasses

    from bptt_cli.runner import aot

    monkeypatch.setattr(aot, "target_devices", lambda name: tuple(jax.devices("cpu")[:1]))
    program, _ = program_of("cartpole", precision, flow="R", levels=[1])
    profile = dataclasses.replace(devices.profile("gpu"), matmul_precision=matmul)
    hlo = aot.compile_for(program, "h100", profile).hlo
    assert ("f64[" in hlo) == (precision == "float64")
    assert ("operand_precision={highest,highest}" in hlo) == (matmul == "highest")
