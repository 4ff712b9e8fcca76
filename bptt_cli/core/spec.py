"""One run: a configuration of the grid trained for each of its seeds (docs/model.md §4, §9).

The unit of work that definitions expand into (``config``), programs group (``plan``) and
results are stored under (``results``), identified by a hash of what it computes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from bptt_cli.core.optim import optimizer_identity

# RunSpec fields that do not change what is computed, so they stay out of the run id.
NOT_IDENTITY = ("threshold", "problem_ref", "diagnostics")
# The fields every run id of release 0.3.0 hashed, whatever their value. A field added since
# enters the hash only when it differs from its default, so that adding one renames no run
# (and results folders of earlier releases stay valid).
HASHED_SINCE_0_3 = (
    "experiment",
    "problem",
    "level_key",
    "level",
    "flow",
    "clip",
    "epochs",
    "seeds",
    "data_seed",
    "n_data",
    "batch_size",
    "optimizer",
    "learning_rate",
    "clip_value",
    "clip_norm",
    "options",
)
PRECISIONS = ("float32", "float64")


@dataclass(frozen=True)
class RunSpec:
    """One configuration trained for every seed in ``seeds`` (docs/model.md §4, §9)."""

    experiment: str
    problem: str
    level_key: str
    level: int | float
    flow: str
    clip: str
    epochs: int
    seeds: tuple[int, ...]
    data_seed: int
    n_data: int
    batch_size: int
    optimizer: str
    learning_rate: float
    clip_value: float
    clip_norm: float
    options: tuple[tuple[str, Any], ...] = ()
    threshold: float | None = None
    problem_ref: str = ""  # how to load the problem: a built-in name, module path or absolute file
    diagnostics: tuple[int, ...] = ()  # epochs whose gradient diagnostics are recorded (docs/model.md §14)
    precision: str = "float32"  # float64: the whole run in double precision (jax's x64)

    @property
    def problem_source(self) -> str:
        """Where the problem is loaded from: ``problem_ref``, else the built-in name."""
        return self.problem_ref or self.problem

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["options"] = dict(self.options)
        d["diagnostics"] = list(self.diagnostics)
        return d

    def identity(self) -> dict[str, Any]:
        """What the run id hashes: what the run computes. The summary threshold, where the
        problem is loaded from and which epochs are diagnosed stay out; fields added after
        release 0.3.0 enter only when they differ from their default; the optimizer enters as
        its update rule's name (``optimizer_identity``), so a run of a changed rule is a new
        run."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        identity = {
            key: value
            for key, value in self.as_dict().items()
            if key not in NOT_IDENTITY and (key in HASHED_SINCE_0_3 or value != defaults[key])
        }
        identity["optimizer"] = optimizer_identity(self.optimizer)
        return identity

    @property
    def run_id(self) -> str:
        """Readable prefix plus a hash of :meth:`identity`: equal ids, equal runs."""
        payload = json.dumps(self.identity(), sort_keys=True, default=str)
        digest = hashlib.sha1(payload.encode()).hexdigest()[:10]
        return f"{self.problem}-{self.level_key}{self.level}-{self.flow}-{self.clip}-{digest}"
