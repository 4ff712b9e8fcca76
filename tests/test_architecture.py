"""Imports only look down: each part of the package imports only the parts on floors below it
(and its own), read from the source, so a violation fails however it would be imported."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bptt_cli"

# floor -> parts on it. A module may import its own part and the parts of lower floors.
FLOORS = [
    {"bptt_cli.core", "bptt_cli.nn", "bptt_cli.targets"},  # targets: GPU descriptions, data only
    {"bptt_cli.problems", "bptt_cli.results"},
    {"bptt_cli.config", "bptt_cli.estimate", "bptt_cli.summary", "bptt_cli.toy"},
    {"bptt_cli.runner", "bptt_cli.plotting"},
    {"bptt_cli.workers"},  # a pool of processes, each running the runner
    {"bptt_cli.api"},  # the Python API: grids and results; the command line is a layer over it
    {"bptt_cli.cli"},
]
FLOOR = {part: i for i, parts in enumerate(FLOORS) for part in parts}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str | None:
    """The part a module belongs to (its longest listed prefix), None for the package itself."""
    candidates = [p for p in FLOOR if module == p or module.startswith(p + ".")]
    return max(candidates, key=len) if candidates else None


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()


def imported(path: Path) -> set[str]:
    """Every bptt_cli module ``path`` imports, at any depth of its code (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("bptt_cli")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bptt_cli"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if is_module(name) else node.module)
    return found


def test_every_module_has_a_floor():
    unplaced = [module_name(p) for p in PACKAGE.rglob("*.py") if part_of(module_name(p)) is None]
    assert unplaced == ["bptt_cli"], unplaced  # only the package's own __init__ (the public API)


def test_imports_only_look_down():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        here = part_of(module_name(path))
        if here is None:
            continue
        for target in imported(path):
            there = part_of(target)
            if there is not None and there != here and FLOOR[there] >= FLOOR[here]:
                upward.append(f"{module_name(path)} imports {target}")
    assert not upward, upward


def test_core_imports_nothing_above_it():
    above = {"bptt_cli.config", "bptt_cli.problems", "bptt_cli.results", "bptt_cli.cli", "bptt_cli.plotting"}
    for path in (PACKAGE / "core").rglob("*.py"):
        for target in imported(path):
            assert part_of(target) not in above, f"{module_name(path)} imports {target}"


def test_the_checker_sees_a_violation(tmp_path):
    """The rule above can fail: a core module importing the results is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from bptt_cli.results import files\n    from bptt_cli import config\n")
    assert {part_of(t) for t in imported(bad)} == {"bptt_cli.results", "bptt_cli.config"}


def test_flows_load_no_parser_registry_or_results():
    """What importing the flows really loads, in a fresh interpreter."""
    code = (
        "import sys, bptt_cli.core.flows\n"
        "print(sorted(m for m in sys.modules if m in ('tomllib', 'bptt_cli.config', 'bptt_cli.problems', "
        "'bptt_cli.results', 'pandas', 'matplotlib')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
