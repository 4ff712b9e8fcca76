"""A regular (non-editable) install ships every module, the experiment definitions and both
commands.

The suite runs on an editable install, which reads the source tree and so cannot miss a file:
here a real wheel is built from a copy of the sources (no stale ``build/`` folder can fill in
for a package pyproject.toml forgets) and its file list is read.
"""

import configparser
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "bptt_cli", "experiments")
SCRIPTS = {"bptt-run": "bptt_cli.cli:run_main", "bptt-plot": "bptt_cli.cli:plot_main"}


def has_build_backend() -> bool:
    """Whether this environment holds what pyproject.toml's build-system requires (then the wheel
    is built offline); otherwise pip fetches it into an isolated build environment."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for text in requires:
        requirement = Requirement(text)
        try:
            if not requirement.specifier.contains(version(requirement.name), prereleases=True):
                return False
        except PackageNotFoundError:
            return False
    return True


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The names in a wheel built from a copy of the sources, and the wheel itself (open)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    offline = has_build_backend()
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check"]
    command += ["--no-build-isolation"] if offline else []
    result = subprocess.run(
        [*command, "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    if result.returncode and not offline and "No matching distribution found" in output:
        pytest.skip("the build backend is not installed here and no package index answers")
    assert result.returncode == 0, output
    (path,) = (tmp / "dist").glob("bptt_cli-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_every_module_is_shipped(wheel):
    names = set(wheel.namelist())
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "bptt_cli").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert {"bptt_cli/cli/__init__.py", "bptt_cli/plotting/__init__.py"} <= modules
    assert modules <= names, f"missing from the wheel (pyproject.toml packages?): {sorted(modules - names)}"


def test_every_experiment_definition_is_shipped_inside_the_package(wheel):
    definitions = sorted((ROOT / "experiments").glob("*.toml"))
    assert definitions
    for path in definitions:
        assert wheel.read(f"bptt_cli/experiments/{path.name}") == path.read_bytes(), path.name


def test_nothing_lands_outside_the_package(wheel):
    outside = [
        name
        for name in wheel.namelist()
        if not name.startswith("bptt_cli/") and not name.split("/")[0].endswith(".dist-info")
    ]
    assert not outside


def test_both_commands_are_installed(wheel):
    (entry_points,) = (name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt"))
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == SCRIPTS
