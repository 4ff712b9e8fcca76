"""The toy figures (docs/model.md §10): R/M fields against hand-derived adjoints, the Fig. 2 fields and
Adam paths against NumPy transcriptions and the shapes docs/model.md states, CSV output and plots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bptt_cli import toy
from bptt_cli.plotting import toy as toy_plot

# --- independent NumPy transcriptions (float64) ---


def fig1_reference(theta1: float, theta2: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Loss, R gradient and M gradient of ``L = ½(x4 − 2)²`` with ``x_{i+1} = x_i + θ1·x_i² + θ2·x_i``."""
    xs = [-0.3]
    for _ in range(4):
        x = xs[-1]
        xs.append(x + theta1 * x**2 + theta2 * x)
    residual = xs[4] - 2.0
    # R: adjoint recursion λ4 = x4 − 2, λ_i = λ_{i+1}·(1 + 2θ1·x_i + θ2), ∂L/∂θ = Σ λ_{i+1}·(x_i², x_i).
    grad_r = np.zeros(2)
    lam = residual
    for i in (3, 2, 1, 0):
        grad_r += lam * np.array([xs[i] ** 2, xs[i]])
        lam = lam * (1.0 + 2.0 * theta1 * xs[i] + theta2)
    # M: the network's input Jacobian is cut, so dx_{i+1}/dx_i = 1 and every λ equals x4 − 2.
    grad_m = residual * np.array([sum(x**2 for x in xs[:4]), sum(xs[:4])])
    return 0.5 * residual**2, grad_r, grad_m


def fig2_reference(name: str, theta: np.ndarray) -> np.ndarray:
    """The update fed to Adam, written out by hand."""
    t1, t2 = theta
    grad = np.array([2.0 * t1, 2.0 * t2])
    rotated = np.array([2.0 * t1 + 4.0 * t2, 2.0 * t2 - 4.0 * t1])
    if name == "divergence":
        return grad
    if name == "rotation":
        return rotated
    return np.array([r if np.sign(r) == np.sign(g) else 0.0 for r, g in zip(rotated, grad, strict=True)])


def adam_reference(
    name: str, n_steps: int, lr: float = 0.1, b1: float = 0.9, b2: float = 0.999
) -> np.ndarray:
    """Textbook Adam (bias-corrected, ε = 1e-8 outside the square root) from (2, 4); ``(n_steps + 1, 2)``."""
    theta = np.array([2.0, 4.0])
    m, v = np.zeros(2), np.zeros(2)
    out = [theta.copy()]
    for t in range(1, n_steps + 1):
        g = fig2_reference(name, theta)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        theta = theta - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-8)
        out.append(theta.copy())
    return np.array(out)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    written = toy.run(folder)
    assert sorted(p.name for p in written) == sorted(toy.FILES)
    return folder


@pytest.fixture(scope="module")
def paths() -> pd.DataFrame:
    return toy.fig2_paths()


# --- Fig. 1 ---


def test_fig1_fields_match_adjoint_closed_forms(x64):
    frame = toy.fig1_fields(n_grid=9)  # θ on the integer points of [−4, 4]²
    assert len(frame) == 2 * 81 and set(frame["field"]) == {"R", "M"}
    differ = 0
    for flow in ("R", "M"):
        rows = frame[frame["field"] == flow]
        for row in rows.itertuples():
            loss, grad_r, grad_m = fig1_reference(row.theta1, row.theta2)
            expected = -(grad_r if flow == "R" else grad_m)
            np.testing.assert_allclose(row.loss, loss, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(
                [row.descent_theta1, row.descent_theta2],
                expected,
                rtol=1e-9,
                atol=1e-10 * (1.0 + np.linalg.norm(expected)),
            )
            differ += flow == "R" and not np.allclose(grad_r, grad_m, rtol=1e-3)
    assert differ > 40  # R and M really are different fields


def test_fig1_default_grid_float32_matches_reference_at_points():
    frame = toy.fig1_fields()
    assert len(frame) == 2 * 81 * 81
    assert np.isfinite(frame[["loss", "descent_theta1", "descent_theta2"]].to_numpy()).all()
    for theta in [(0.0, 0.0), (-0.3, 0.5), (1.0, -2.0), (-2.5, 1.5), (3.0, 3.0)]:
        loss, grad_r, grad_m = fig1_reference(*theta)
        at = frame[np.isclose(frame["theta1"], theta[0]) & np.isclose(frame["theta2"], theta[1])]
        assert len(at) == 2
        for flow, grad in (("R", grad_r), ("M", grad_m)):
            row = at[at["field"] == flow].iloc[0]
            np.testing.assert_allclose(row["loss"], loss, rtol=1e-4)
            np.testing.assert_allclose(
                row[["descent_theta1", "descent_theta2"]].to_numpy(float), -grad, rtol=1e-3
            )


def test_fig1_origin_by_hand():
    # θ = 0: the network does nothing, x stays at −0.3, L = ½·2.3²; M = (x4 − 2)·4·(0.09, −0.3),
    # and R equals M because every factor 1 + 2θ1·x + θ2 is 1.
    frame = toy.fig1_fields(n_grid=9)
    origin = frame[(frame["theta1"] == 0.0) & (frame["theta2"] == 0.0)].set_index("field")
    np.testing.assert_allclose(origin["loss"], 0.5 * 2.3**2, rtol=1e-6)
    for flow in ("R", "M"):
        np.testing.assert_allclose(
            origin.loc[flow, ["descent_theta1", "descent_theta2"]].to_numpy(float),
            [2.3 * 4 * 0.09, -2.3 * 4 * 0.3],
            rtol=1e-5,
        )


# --- Fig. 2 ---


def test_fig2_fields_match_closed_forms_and_c_rule():
    frame = toy.fig2_fields(n_grid=11)
    assert set(frame["field"]) == set(toy.FIG2_FIELDS) and len(frame) == 3 * 121
    for row in frame.itertuples():
        theta = np.array([row.theta1, row.theta2])
        np.testing.assert_allclose(row.loss, theta @ theta, rtol=1e-6)
        expected = -fig2_reference(row.field, theta)
        np.testing.assert_allclose([row.descent_theta1, row.descent_theta2], expected, rtol=1e-6, atol=1e-6)
    wide = {
        name: frame[frame["field"] == name][["descent_theta1", "descent_theta2"]].to_numpy()
        for name in toy.FIG2_FIELDS
    }
    grad, rotated, combined = wide["divergence"], wide["rotation"], wide["combination"]
    # C rule entrywise: the rotated entry where its sign equals the gradient's, else exactly 0.
    np.testing.assert_array_equal(combined, np.where(np.sign(rotated) == np.sign(grad), rotated, 0.0))
    assert (np.sum(combined * grad, axis=1) >= 0).all()  # C never points against the gradient
    assert (combined == 0).any() and (combined != 0).any()


def test_fig2_adam_paths_follow_textbook_adam(x64):
    frame = toy.fig2_paths()
    for name in toy.FIG2_FIELDS:
        rows = frame[frame["field"] == name].sort_values("step")
        assert rows["step"].tolist() == list(range(201))
        thetas = rows[["theta1", "theta2"]].to_numpy()
        np.testing.assert_allclose(thetas, adam_reference(name, 200), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(rows["loss"].to_numpy(), np.sum(thetas**2, axis=1), rtol=1e-12)


def test_fig2_adam_paths_have_the_shapes_spec_states(paths):
    loss = {name: rows.set_index("step")["loss"] for name, rows in paths.groupby("field")}
    for name in toy.FIG2_FIELDS:
        assert loss[name][0] == pytest.approx(20.0)
    # Gradient: L ≈ 2e-3 by step 60, and it keeps falling.
    assert 2e-3 / 3 < loss["divergence"][60] < 2e-3 * 3
    assert loss["divergence"][200] < 1e-5
    # Rotation: circles at L ≈ 1–6 for the whole second half of the run.
    late = loss["rotation"].loc[100:]
    assert late.min() >= 1.0 and late.max() <= 7.0
    assert 1.5 < late.median() < 5.0
    # Combination: ends near 1e-1 … 1e-2, between the other two.
    assert 5e-3 < loss["combination"][200] < 0.2
    assert loss["combination"].loc[100:].max() < 1.0
    assert loss["divergence"][200] < loss["combination"][200] < loss["rotation"][200]


# --- output and plots ---


def test_run_writes_tidy_csvs_then_skips(toy_dir):
    fields1 = pd.read_csv(toy_dir / "fig1_fields.csv")
    assert list(fields1.columns) == ["field", "theta1", "theta2", "loss", "descent_theta1", "descent_theta2"]
    assert fields1[["theta1", "theta2"]].agg(["min", "max"]).to_numpy().tolist() == [[-4.0, -4.0], [4.0, 4.0]]
    fields2 = pd.read_csv(toy_dir / "fig2_fields.csv")
    assert fields2[["theta1", "theta2"]].agg(["min", "max"]).to_numpy().tolist() == [[-5.0, -5.0], [5.0, 5.0]]
    assert list(pd.read_csv(toy_dir / "fig2_paths.csv").columns) == [
        "field",
        "step",
        "theta1",
        "theta2",
        "loss",
    ]
    before = {name: (toy_dir / name).stat().st_mtime_ns for name in toy.FILES}
    assert toy.run(toy_dir) == []
    assert {name: (toy_dir / name).stat().st_mtime_ns for name in toy.FILES} == before
    assert not [p for p in toy_dir.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_run_recomputes_missing_file_and_on_force(tmp_path, monkeypatch):
    fig1_fields = toy.fig1_fields
    monkeypatch.setattr(toy, "fig1_fields", lambda: fig1_fields(n_grid=5))  # only the file logic is tested
    folder = tmp_path / "toy"
    assert len(toy.run(folder)) == 3
    (folder / "fig2_paths.csv").unlink()
    assert len(toy.run(folder)) == 3
    assert len(toy.run(folder, force=True)) == 3


def test_plot_writes_png_and_pdf(toy_dir, tmp_path):
    written = toy_plot.plot(toy_dir, tmp_path / "figures")
    assert sorted(p.name for p in written) == ["toy_fig1.pdf", "toy_fig1.png", "toy_fig2.pdf", "toy_fig2.png"]
    for path in written:
        assert path.stat().st_size > 10_000
        assert path.read_bytes()[:4] == (b"\x89PNG" if path.suffix == ".png" else b"%PDF")
    assert not [p for p in (tmp_path / "figures").iterdir() if p.name.startswith(".")]


def test_plot_without_csvs_writes_nothing(tmp_path):
    assert toy_plot.plot(tmp_path, tmp_path / "figures") == []
    assert not (tmp_path / "figures").exists()


def test_plotting_module_does_not_import_jax():
    code = (
        "import sys, bptt_cli.plotting.toy; "
        "sys.exit(any(m.split('.')[0] in ('jax', 'jaxlib') for m in sys.modules))"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0
