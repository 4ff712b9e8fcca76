"""One run: a configuration of the grid trained for each of its seeds (SPEC §4, §9).

The unit of work that definitions expand into (``config``), programs group (``plan``) and
results are stored under (``results``), identified by a hash of what it computes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

# RunSpec fields that do not change what is computed, so they stay out of the run id.
NOT_IDENTITY = ("threshold", "problem_ref", "diagnostics")


@dataclass(frozen=True)
class RunSpec:
    """One configuration trained for every seed in ``seeds`` (SPEC §4, §9)."""

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
    diagnostics: tuple[int, ...] = ()  # epochs whose gradient diagnostics are recorded (SPEC §14)

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

    @property
    def run_id(self) -> str:
        """Readable prefix plus a hash of the configuration: equal ids, equal runs. The summary
        threshold, where the problem is loaded from and which epochs are diagnosed do not
        change the results and stay out of the hash."""
        identity = {k: v for k, v in self.as_dict().items() if k not in NOT_IDENTITY}
        payload = json.dumps(identity, sort_keys=True, default=str)
        digest = hashlib.sha1(payload.encode()).hexdigest()[:10]
        return f"{self.problem}-{self.level_key}{self.level}-{self.flow}-{self.clip}-{digest}"
