"""A regular (non-editable) install ships every subpackage and the experiment definitions."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "bptt_cli").rglob("__init__.py")
    }
    assert found <= listed, f"missing from pyproject.toml: {sorted(found - listed)}"
    assert project["tool"]["setuptools"]["package-dir"]["bptt_cli.experiments"] == "experiments"


def test_builtin_definitions_are_shipped():
    from bptt_cli import config

    shipped = {p.stem for p in (ROOT / "experiments").glob("*.toml")}
    assert (
        shipped
        == set(config.builtin_names())
        == {"cartpole", "guidance", "quantum", "toy", "lqr", "pendulum"}
    )
