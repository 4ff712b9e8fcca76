"""A user's own problem module: every broken contract is one line naming the problem, the
function and what was expected, exit code 2, and nothing written."""

import os
import sys
from unittest import mock

import pytest

from bptt_cli import cli, problems

GOOD = """
import jax
import jax.numpy as jnp
from bptt_cli import ProblemDef, Task


def step(x, u, gain):
    return jnp.stack([x[0] + 0.1 * x[1], x[1] + 0.1 * gain * u])


def controller(theta, x):
    return jnp.dot(theta["k"], x)


def loss(xs, us):
    return jnp.mean(xs[:, -1] ** 2), {}


def sample_data(key, n):
    x = jax.random.normal(key, (2 * n, 2))
    return x[:n], x[n:]


def make_task(gain, options):
    return Task(
        step=lambda x, u: step(x, u, gain),
        controller=controller,
        init_controller=lambda key: {"k": jnp.zeros(2)},
        loss=loss,
        sample_data=sample_data,
        n_steps=5,
    )


PROBLEM = ProblemDef(name="spring", level_key="gain", level_type=float, level_is_static=False, make_task=make_task)
"""

BROKEN = {
    "no descriptor": (
        GOOD.replace("PROBLEM = ProblemDef", "SOMETHING = ProblemDef"),
        "defines no PROBLEM descriptor",
    ),
    "missing function": (
        GOOD.replace("step=lambda x, u: step(x, u, gain)", "step=None"),
        "Task.step is missing or not callable",
    ),
    "step changes the shape": (
        GOOD.replace("return jnp.stack([x[0] + 0.1 * x[1], x[1] + 0.1 * gain * u])", "return x[:1] + u"),
        "step returned (1,) float32 for a state (2,) float32; expected the state's shape and dtype",
    ),
    "controller of the wrong shape": (
        GOOD.replace('return jnp.dot(theta["k"], x)', 'return theta["k"] * x'),
        "controller returned shape (2,) for one state (2,); expected control_shape ()",
    ),
    "non-scalar loss": (
        GOOD.replace("return jnp.mean(xs[:, -1] ** 2), {}", "return jnp.mean(xs[:, -1] ** 2, axis=0), {}"),
        "loss returned a total of shape (2,); expected a scalar",
    ),
    "loss without aux": (
        GOOD.replace("return jnp.mean(xs[:, -1] ** 2), {}", "return jnp.mean(xs[:, -1] ** 2)"),
        "loss must return (total, aux)",
    ),
    "branching on a traced level": (
        GOOD.replace(
            "def make_task(gain, options):\n", "def make_task(gain, options):\n    assert gain > 0\n"
        ),
        "make_task failed with a traced level",
    ),
    "import error": (GOOD + "\nimport not_a_module_anyone_has\n", "failed to import: ModuleNotFoundError"),
}

DEFINITION = """
problem = "{ref}"
[grid]
levels = [0.5, 2.0]
flows = ["R", "C"]
[train]
epochs = 2
n_data = 16
"""


def bptt_run(monkeypatch, capsys, *args) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["bptt-run", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info, mock.patch.dict(os.environ):  # what it sets for jax
        cli.run_main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_contract_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys):
    text, message = BROKEN[case]
    folder = tmp_path / case.replace(" ", "_")
    folder.mkdir()
    (folder / "spring.py").write_text(text)
    (folder / "spring.toml").write_text(DEFINITION.format(ref="./spring.py"))
    problems._load.cache_clear()
    code, err = bptt_run(monkeypatch, capsys, folder / "spring.toml", "--out", tmp_path / "out")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("bptt-run: error:"), err
    assert message in err, err
    if case != "no descriptor" and case != "import error":
        assert "problem 'spring'" in err
    assert str(folder / "spring.py") in err or "problem 'spring'" in err
    assert not (tmp_path / "out").exists()


def test_good_problem_passes_check_and_plans(tmp_path, monkeypatch, capsys):
    (tmp_path / "spring.py").write_text(GOOD)
    (tmp_path / "spring.toml").write_text(DEFINITION.format(ref="./spring.py"))
    problems._load.cache_clear()
    code, err = bptt_run(
        monkeypatch, capsys, tmp_path / "spring.toml", "--dry-run", "--out", tmp_path / "out"
    )
    assert code == 0, err
    out = capsys.readouterr().out + err
    # The [train] keys the file leaves out take the paper's defaults.
    assert "spring [paper]: 4 run(s) × 3 seed(s); gain [0.5, 2.0]" in err
    assert "seeds 42..44" in err and "256" not in err  # n_data from the file, seeds from the defaults
    assert not (tmp_path / "out").exists(), out


def test_unknown_module_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "x.toml").write_text(DEFINITION.format(ref="nobody.has.this_module"))
    code, err = bptt_run(monkeypatch, capsys, tmp_path / "x.toml", "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1
    assert (
        "unknown problem 'nobody.has.this_module'" in err and "an importable module path or a .py file" in err
    )
