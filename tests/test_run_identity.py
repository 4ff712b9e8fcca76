"""Run identity across releases (issue 28 item 0): a results folder written by release 0.3.0
is complete for this release, adding a field renames no run, and a change to what a run
computes (an update rule, the precision) makes it a new run."""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from bptt_cli import config
from bptt_cli.core.spec import NOT_IDENTITY

# Written by release 0.3.0 (commit 1dd959c) with `bptt-run cartpole --scale smoke --optimizer sgd
# --flow R --clip NORM --level 1 --seeds 2 --epochs 2 --no-diagnostics` and `bptt-run lqr --scale
# smoke --optimizer sgd --flow M --clip NONE --level 1.0 --seeds 2 --epochs 2 --no-diagnostics`.
RELEASE_0_3 = Path(__file__).parent / "data" / "release-0.3.0"


def fixture_specs():
    common = {"optimizer": "sgd", "seeds": 2, "epochs": 2, "diagnostics": False}
    return [
        *config.resolve(config.load("cartpole"), "smoke", levels=[1], flows=["R"], clips=["NORM"], **common),
        *config.resolve(config.load("lqr"), "smoke", levels=[1.0], flows=["M"], clips=["NONE"], **common),
    ]


def id_of_release_0_3(spec) -> str:
    """The run id as release 0.3.0 computed it: a hash of every field but three (it had no
    fields with defaults beyond those)."""
    fields = dataclasses.asdict(spec)
    fields.pop("precision")
    identity = {k: v for k, v in fields.items() if k not in NOT_IDENTITY}
    identity["seeds"], identity["options"] = list(spec.seeds), dict(spec.options)
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{spec.problem}-{spec.level_key}{spec.level}-{spec.flow}-{spec.clip}-{digest}"


def test_a_results_folder_of_release_0_3_is_complete_for_this_release(tmp_path):
    from bptt_cli import runner

    out = tmp_path / "results"
    shutil.copytree(RELEASE_0_3, out)
    specs = fixture_specs()
    for spec in specs:
        meta = json.loads((out / spec.experiment / f"{spec.run_id}.json").read_text())
        assert meta["run_id"] == spec.run_id and meta["status"] == "complete"
    assert runner.pending_work(specs, out) == []
    report = runner.run(specs, out)
    assert report.trained == [] and sorted(report.found_complete) == sorted(s.run_id for s in specs)


def test_new_fields_at_their_default_keep_the_id_and_what_is_computed_changes_it():
    spec = fixture_specs()[0]
    assert spec.run_id == id_of_release_0_3(spec)
    assert dataclasses.replace(spec, precision="float32").run_id == spec.run_id
    wide = dataclasses.replace(spec, precision="float64")
    assert wide.run_id != spec.run_id and wide.run_id.startswith(spec.run_id[:-10])
    # 0.3.0's "adam" was optax's rule: this release's Keras Adam is another run, and so is
    # the old rule under its new name.
    adam, old_rule = (dataclasses.replace(spec, optimizer=name) for name in ("adam", "adam-optax"))
    assert len({adam.run_id, old_rule.run_id, id_of_release_0_3(adam)}) == 3
    # Fields that do not change the numbers stay out.
    assert dataclasses.replace(spec, threshold=9.0, diagnostics=(0, 1), problem_ref="x").run_id == spec.run_id
