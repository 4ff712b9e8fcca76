"""Experiment definitions: load a TOML file, apply a scale and overrides, validate, and expand
into one frozen ``RunSpec`` per configuration (every seed of a configuration is one run).

Every check a user can trip lives here and raises ``UserError`` with a one-line message that
names the bad value and what is allowed.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bptt_cli import problems
from bptt_cli.core.flow_names import canonical_flow
from bptt_cli.core.optim import OPTIMIZERS, Clip
from bptt_cli.core.spec import PRECISIONS, RunSpec

BUILTIN_PACKAGE = "bptt_cli.experiments"


# Keys of the [train] and [grid] tables, with the type their values must have.
TRAIN_KEYS: dict[str, type] = {
    "epochs": int,
    "seeds": int,
    "seed": int,
    "data_seed": int,
    "n_data": int,
    "batch_size": int,
    "optimizer": str,
    "precision": str,
    "learning_rate": float,
    "clip_value": float,
    "clip_norm": float,
}
# What a definition's [train] table may leave out: the paper's protocol (docs/model.md §3, §4, §9).
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 1000,
    "seeds": 3,
    "seed": 42,
    "data_seed": 42,
    "n_data": 256,
    "batch_size": 8,
    "optimizer": "adam",
    "precision": "float32",
    "learning_rate": 1e-3,
    "clip_value": 1.0,
    "clip_norm": 1.0,
}
GRID_KEYS = ("levels", "flows", "clips")
TOP_KEYS = {"problem", "description", "grid", "train", "options", "summary", "scales", "diagnostics"}
DIAGNOSTICS_KEYS = ("enabled", "epochs")
DIAGNOSED_EPOCHS = (0, 1, 10, 100, 1000)  # docs/model.md §14: those within the run
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # an experiment's name: its results folder


class UserError(Exception):
    """Bad input: the CLI prints the message on one line and exits with code 2."""


@dataclass(frozen=True)
class Experiment:
    """A parsed definition file (before a scale and overrides are applied)."""

    name: str
    path: str
    problem: str
    description: str
    grid: dict[str, list]
    train: dict[str, Any]
    problem_options: dict[str, Any]
    summary: dict[str, Any]
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    problem_ref: str = ""  # the problem as the runner loads it (files made absolute)

    @property
    def problem_source(self) -> str:
        """Where the problem is loaded from: ``problem_ref``, else the built-in name."""
        return self.problem_ref or self.problem


# --- finding and reading definitions ----------------------------------------------------


def builtin_names() -> list[str]:
    """Names of the definitions shipped with the package."""
    folder = resources.files(BUILTIN_PACKAGE)
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load(name_or_path: str) -> Experiment:
    """A built-in definition by name (any case), or a user's TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"definition file {name_or_path!r} not found")
        text, name, origin, base = path.read_text(), path.stem, str(path), path.resolve().parent
    else:
        name = name_or_path.lower()
        if name not in builtin_names():
            raise UserError(
                f"unknown experiment {name_or_path!r}; allowed: {', '.join(builtin_names())} or a path to a .toml file"
            )
        text = resources.files(BUILTIN_PACKAGE).joinpath(f"{name}.toml").read_text()
        origin, base = f"{BUILTIN_PACKAGE}/{name}.toml", None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"malformed definition file {origin}: {err}") from None
    return _parse(name, origin, raw, base)


def from_mapping(raw: Mapping[str, Any], name: str = "experiment") -> Experiment:
    """A definition given as a mapping, as its TOML file would parse (``{"problem": "cartpole",
    "grid": {...}, "train": {...}}``), named ``name`` (its results folder); a problem file is
    named relative to the working folder."""
    if not isinstance(raw, Mapping):
        raise UserError(f"invalid definition {raw!r}; allowed: a mapping, a built-in name or a .toml path")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"invalid experiment name {name!r}; allowed: letters, digits, '_', '-' and '.'")
    return _parse(name, f"definition {name!r}", dict(raw), Path.cwd())


def _parse(name: str, origin: str, raw: dict[str, Any], base: Path | None = None) -> Experiment:
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise UserError(
            f"unknown key {sorted(unknown)[0]!r} in {origin}; allowed: {', '.join(sorted(TOP_KEYS))}"
        )
    problem = raw.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        raise UserError(
            f"{origin} names no problem; allowed: {', '.join((*problems.NAMES, 'toy'))}, "
            "a module path or a .py file"
        )
    ref = problem if problem == "toy" else problems.canonical_ref(problem, base)
    if problem != "toy" and problem not in problems.NAMES:
        try:
            problem = problems.get(ref).name  # a user's problem: load it now, fail early
        except problems.ProblemError as err:
            raise UserError(f"{err} (in {origin})") from None
    tables = {}
    for key in ("grid", "train", "options", "summary", "scales", "diagnostics"):
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise UserError(f"key {key!r} in {origin} must be a table")
        tables[key] = value
    _check_keys(tables["grid"], GRID_KEYS, f"[grid] of {origin}")
    _check_keys(tables["train"], TRAIN_KEYS, f"[train] of {origin}")
    _check_keys(tables["summary"], ("threshold",), f"[summary] of {origin}")
    _check_keys(tables["diagnostics"], DIAGNOSTICS_KEYS, f"[diagnostics] of {origin}")
    for scale, overrides in tables["scales"].items():
        if not isinstance(overrides, dict):
            raise UserError(f"scale {scale!r} in {origin} must be a table")
        _check_keys(overrides, (*GRID_KEYS, *TRAIN_KEYS), f"[scales.{scale}] of {origin}")
    return Experiment(
        name=name,
        path=origin,
        problem=problem,
        description=str(raw.get("description", "")),
        grid=tables["grid"],
        train=tables["train"],
        problem_options=tables["options"],
        summary=tables["summary"],
        scales={k.lower(): v for k, v in tables["scales"].items()},
        diagnostics=tables["diagnostics"],
        problem_ref=ref,
    )


def _check_keys(table: dict, allowed, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise UserError(f"unknown key {key!r} in {where}; allowed: {', '.join(allowed)}")


# --- resolving a definition into runs ---------------------------------------------------


def scale_names(exp: Experiment) -> list[str]:
    return sorted({"paper", *exp.scales})


def resolve(
    exp: Experiment,
    scale: str = "paper",
    diagnostics: bool | None = None,
    option_overrides: dict[str, Any] | None = None,
    **overrides: Any,
) -> list[RunSpec]:
    """Apply a scale and command-line overrides, validate everything, expand the grid.

    ``overrides`` may hold ``levels``, ``flows``, ``clips`` (lists) and any ``[train]`` key;
    ``None`` values are ignored. ``option_overrides`` replace entries of the ``[options]``
    table. ``diagnostics`` switches the gradient diagnostics on or off (``None``: as the
    definition says, on by default).
    """
    scale_key = scale.lower()
    if scale_key not in scale_names(exp):
        raise UserError(f"unknown scale {scale!r} for {exp.name}; allowed: {', '.join(scale_names(exp))}")
    values: dict[str, Any] = {**TRAIN_DEFAULTS, **exp.grid, **exp.train, **exp.scales.get(scale_key, {})}
    values.update({k: v for k, v in overrides.items() if v is not None})

    problem = _problem(exp)
    train = {key: _typed(key, values.get(key), kind, exp) for key, kind in TRAIN_KEYS.items()}
    for key in ("epochs", "seeds", "n_data", "batch_size"):
        if train[key] <= 0:
            raise UserError(f"{key.replace('_', '-')} must be a positive integer, got {train[key]}")
    if not train["learning_rate"] > 0 or not math.isfinite(train["learning_rate"]):
        raise UserError(f"learning-rate must be a positive number, got {train['learning_rate']}")
    for key in ("clip_value", "clip_norm"):
        if not train[key] > 0:
            raise UserError(f"{key.replace('_', '-')} must be a positive number, got {train[key]}")
    if train["n_data"] % train["batch_size"]:
        raise UserError(
            f"batch size {train['batch_size']} does not divide the {train['n_data']} training states; "
            f"allowed: a divisor of {train['n_data']}"
        )
    optimizer = train["optimizer"].lower()
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {train['optimizer']!r}; allowed: {', '.join(OPTIMIZERS)}")
    precision = train["precision"].lower()
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {train['precision']!r}; allowed: {', '.join(PRECISIONS)}")

    flows = [_flow(f) for f in _as_list(values.get("flows", ["R", "M", "C", "S"]), "flows")]
    clips = [_clip(c) for c in _as_list(values.get("clips", ["NORM"]), "clips")]
    grid_levels = [_level(lv, problem, None) for lv in _as_list(exp.grid.get("levels"), "levels")]
    levels = [_level(lv, problem, grid_levels) for lv in _as_list(values.get("levels"), "levels")]

    options = {**problem.default_options}
    for key, value in {**exp.problem_options, **(option_overrides or {})}.items():
        options[key] = _option(key, value, problem)
    diagnosed = _diagnosed_epochs(exp, train["epochs"], diagnostics)
    threshold = exp.summary.get("threshold")
    if threshold is not None and not isinstance(threshold, int | float):
        raise UserError(f"[summary] threshold must be a number, got {threshold!r}")

    seeds = tuple(range(train["seed"], train["seed"] + train["seeds"]))
    return [
        RunSpec(
            experiment=exp.name,
            problem=problem.name,
            level_key=problem.level_key,
            level=level,
            flow=flow,
            clip=clip,
            epochs=train["epochs"],
            seeds=seeds,
            data_seed=train["data_seed"],
            n_data=train["n_data"],
            batch_size=train["batch_size"],
            optimizer=optimizer,
            learning_rate=train["learning_rate"],
            clip_value=train["clip_value"],
            clip_norm=train["clip_norm"],
            options=tuple(sorted(options.items())),
            threshold=None if threshold is None else float(threshold),
            problem_ref=exp.problem_source,
            diagnostics=diagnosed,
            precision=precision,
        )
        for level in _unique(levels)
        for flow in _unique(flows)
        for clip in _unique(clips)
    ]


def _typed(key: str, value: Any, kind: type, exp: Experiment) -> Any:
    if value is None:
        raise UserError(f"{exp.path} sets no {key!r} in [train]")
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise UserError(
        f"{key} must be {'an integer' if kind is int else 'a number' if kind is float else 'a string'}, got {value!r}"
    )


def parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs from the command line; a VALUE is read as in TOML (``0.1``, ``true``,
    ``"mlp"``), else taken as text (``mlp``)."""
    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"invalid option {item!r}; allowed: KEY=VALUE, e.g. controller=mlp")
        try:
            value = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        options[key.strip()] = value
    return options


def _option(key: str, value: Any, problem) -> Any:
    """A problem option's value, checked against its default's type, its choices or its check."""
    if key not in problem.default_options:
        allowed = ", ".join(problem.default_options) or "none"
        raise UserError(f"unknown problem option {key!r} for {problem.name}; allowed: {allowed}")
    default = problem.default_options[key]
    choices = problem.option_choices.get(key)
    if choices:
        match = next((c for c in choices if str(c).upper() == str(value).upper()), None)
        if match is None:
            allowed = ", ".join(map(str, choices))
            raise UserError(f"invalid {key} {value!r} for {problem.name}; allowed: {allowed}")
        return match
    if isinstance(default, int | float) and not isinstance(default, bool):
        kind = type(default)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or (kind is int and value != int(value)):
            what = "an integer" if kind is int else "a finite number"
            raise UserError(f"invalid {key} {value!r} for {problem.name}; allowed: {what}")
        value = kind(value)
    check = problem.option_checks.get(key)
    if check is not None and not check[0](value):
        raise UserError(f"invalid {key} {value!r} for {problem.name}; allowed: {check[1]}")
    return value


def _as_list(value: Any, key: str) -> list:
    if value is None:
        raise UserError(f"the grid sets no {key!r}")
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise UserError(f"the grid's {key!r} is empty")
    return list(items)


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def _flow(value: Any) -> str:
    try:
        return canonical_flow(str(value))
    except ValueError as err:
        raise UserError(str(err)) from None


def _clip(value: Any) -> str:
    name = str(value).strip().upper()
    if name not in Clip.__members__:
        raise UserError(f"unknown clip {value!r}; allowed: {', '.join(Clip.__members__)}")
    return name


def _level(value: Any, problem, grid: list | None) -> int | float:
    allowed = _fmt(grid) if grid is not None else problem.valid_level_text
    try:
        level = problem.level_type(value)
        if problem.level_type is int and float(value) != level:
            raise ValueError
        if isinstance(value, bool) or not math.isfinite(level):
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"invalid {problem.level_key} {value!r}; allowed: {allowed}") from None
    if grid is None and not problem.valid_level(level):
        raise UserError(f"invalid {problem.level_key} {value!r} for {problem.name}; allowed: {allowed}")
    if grid is not None and level not in grid:
        raise UserError(f"{problem.level_key} {value} is outside the grid; allowed: {allowed}")
    return level


def _problem(exp: Experiment):
    try:
        return problems.get(exp.problem_source)
    except problems.ProblemError as err:
        raise UserError(str(err)) from None


def _diagnosed_epochs(exp: Experiment, epochs: int, switch: bool | None) -> tuple[int, ...]:
    table = exp.diagnostics
    enabled = table.get("enabled", True) if switch is None else switch
    if not isinstance(enabled, bool):
        raise UserError(f"[diagnostics] enabled must be true or false, got {enabled!r}")
    if not enabled:
        return ()
    if "epochs" not in table:
        return tuple(e for e in DIAGNOSED_EPOCHS if e <= epochs)
    chosen = table["epochs"]
    if not isinstance(chosen, list) or not all(
        isinstance(e, int) and not isinstance(e, bool) for e in chosen
    ):
        raise UserError(f"[diagnostics] epochs must be a list of integers, got {chosen!r}")
    for epoch in chosen:
        if not 0 <= epoch <= epochs:
            raise UserError(f"diagnosed epoch {epoch} is outside the run; allowed: 0 ... {epochs}")
    return tuple(sorted(set(chosen)))


def _fmt(levels: list | None) -> str:
    return "a number" if levels is None else ", ".join(str(v) for v in levels)
