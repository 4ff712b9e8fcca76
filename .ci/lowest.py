"""The lowest versions pyproject.toml allows for the direct dependencies, as pip constraints.

`python .ci/lowest.py` prints `name==version` for every `>=` bound in [project] dependencies, so
raising a bound in pyproject.toml is the only edit ever needed; `--check` (run by the venv's
python after the install) prints the installed versions and fails unless each equals its pin.
"""

import importlib.metadata
import re
import sys
import tomllib


def pins() -> dict[str, str]:
    with open("pyproject.toml", "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    found = {}
    for requirement in dependencies:
        match = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*>=\s*([0-9][^,;\s]*)\s*", requirement)
        if not match:
            sys.exit(f"lowest.py: no single '>=' lower bound in {requirement!r}")
        found[match[1]] = match[2]
    return found


def release(version: str) -> str:
    return re.sub(r"(\.0)+$", "", version)  # 2.0 == 2.0.0


if sys.argv[1:] == ["--check"]:
    installed = {name: importlib.metadata.version(name) for name in pins()}
    print("lowest:", " ".join(f"{name}=={version}" for name, version in installed.items()))
    wrong = [name for name, version in pins().items() if release(installed[name]) != release(version)]
    sys.exit(f"lowest.py: not at the lower bound: {', '.join(wrong)}" if wrong else 0)
for name, version in pins().items():
    print(f"{name}=={version}")
