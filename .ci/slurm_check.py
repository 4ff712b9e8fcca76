"""Checks for make slurm-test (.ci/slurm_test.sh): what a SLURM array of reproduce.sbatch and the
plot job after it wrote. Reads only files (the JSON sidecars, the job logs, the figures folder)
and asks bptt-run --dry-run for the size of the grid, so it does not depend on bptt_cli internals.

    python .ci/slurm_check.py --out DIR --logs DIR --scale smoke --seeds 2 --tasks 2 --took S cartpole
"""

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

BPTT_RUN = Path(sys.executable).with_name("bptt-run")


def grid_size(experiment: str, scale: str, seeds: int, out: Path) -> tuple[int, int]:
    """(runs in the grid, runs still to train in OUT) by bptt-run --dry-run."""
    cmd = [str(BPTT_RUN), experiment, "--scale", scale, "--seeds", str(seeds), "--out", str(out)]
    done = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, check=True)
    text = done.stdout + done.stderr
    total = re.search(rf"^{re.escape(experiment)} \[{re.escape(scale)}\]: (\d+) run\(s\)", text, re.M)
    complete = re.search(r"(\d+) run\(s\) already complete", text)
    if not total or not complete:
        sys.exit(f"slurm-check: cannot read the grid size from bptt-run --dry-run:\n{text}")
    return int(total[1]), int(total[1]) - int(complete[1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiments", nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--logs", type=Path, required=True)
    ap.add_argument("--scale", required=True)
    ap.add_argument("--seeds", type=int, required=True)
    ap.add_argument("--tasks", type=int, required=True)
    ap.add_argument("--took", type=int, default=None)
    args = ap.parse_args()
    problems: list[str] = []
    runs_per_worker: Counter[str] = Counter()
    spans_per_worker: dict[str, list[datetime]] = {}  # first start, last update of each worker
    device_lists: Counter[str] = Counter()
    n_runs = 0

    for experiment in args.experiments:
        expected, left = grid_size(experiment, args.scale, args.seeds, args.out)
        if left:
            problems.append(f"{experiment}: bptt-run still sees {left} run(s) to train")
        sidecars = sorted((args.out / experiment).glob("*.json"))
        if len(sidecars) != expected:
            problems.append(f"{experiment}: {len(sidecars)} sidecars, the grid has {expected} runs")
        n_runs += len(sidecars)
        for path in sidecars:
            meta = json.loads(path.read_text())
            epochs = meta["config"]["epochs"]
            history = meta.get("history", [])
            devices = meta.get("devices", [])
            device_lists[",".join(devices)] += 1
            if meta.get("status") != "complete" or meta.get("epochs_done") != epochs:
                problems.append(
                    f"{path.name}: status {meta.get('status')}, {meta.get('epochs_done')}/{epochs} epochs"
                )
            spans = [(h.get("worker"), h.get("from_epoch"), h.get("to_epoch")) for h in history]
            if len(spans) != 1 or spans[0][1:] != (0, epochs):
                problems.append(f"{path.name}: trained by {spans}, not once from epoch 0 to {epochs}")
            for h in history:
                runs_per_worker[h.get("worker")] += 1
                times = [datetime.fromisoformat(h["started"]), datetime.fromisoformat(h["updated"])]
                span = spans_per_worker.setdefault(h.get("worker"), times)
                span[:] = [min(span[0], times[0]), max(span[1], times[1])]
            if len(devices) != 1:
                problems.append(f"{path.name}: {len(devices)} devices {devices}, expected one per task")

    if len(runs_per_worker) != args.tasks:
        problems.append(
            f"{len(runs_per_worker)} distinct workers {dict(runs_per_worker)}, expected {args.tasks}"
        )

    # With CR_CPU and one CPU per task, both tasks of the 2-core node train at the same time.
    overlap = 0.0
    if len(spans_per_worker) > 1:
        first_end = min(end for _, end in spans_per_worker.values())
        last_start = max(start for start, _ in spans_per_worker.values())
        overlap = (first_end - last_start).total_seconds()
        if overlap <= 0:
            problems.append(f"the tasks did not train side by side: {spans_per_worker}")

    # Each array task's log ends its last experiment with bptt-run's closing "done:" line.
    task_logs = sorted(p for p in args.logs.glob("*.out") if re.search(r"_\d+\.out$", p.name))
    if len(task_logs) != args.tasks:
        problems.append(f"{len(task_logs)} array task logs in {args.logs}, expected {args.tasks}")
    trained_by_logs = 0
    for log in task_logs:
        done = [line for line in log.read_text().splitlines() if line.startswith("done:")]
        if len(done) != len(args.experiments):
            problems.append(f"{log.name}: {len(done)} 'done:' line(s), expected {len(args.experiments)}")
        trained_by_logs += sum(int(m[1]) for line in done if (m := re.match(r"done: (\d+) run", line)))
    if trained_by_logs != n_runs:
        problems.append(f"the task logs say {trained_by_logs} runs trained, the sidecars {n_runs}")

    figures = sorted(p.name for p in (args.out / "figures").glob("*.png"))
    if not figures:
        problems.append(f"no PNG figures in {args.out / 'figures'} (the plot job)")

    if problems:
        print("slurm-test: FAILED:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    workers = ", ".join(f"{w} ({n} runs)" for w, n in sorted(runs_per_worker.items()))
    devices = ", ".join(f"[{d}] x{n}" for d, n in device_lists.items())
    took = f"; took {args.took} s" if args.took is not None else ""
    print(
        f"slurm-test: {n_runs} runs, each trained once; {args.tasks} tasks: {workers}, "
        f"side by side for {overlap:.0f} s; devices {devices}; figures: {', '.join(figures)}{took}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
