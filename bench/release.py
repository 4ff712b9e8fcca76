"""Section r of `make bench`: this checkout against a previous release, side by side in one run.

The release is installed from its pinned commit of this repository's history (``git archive``,
then ``pip install --no-deps --target``) into ``.bench/release-<version>/`` on first use, and
its ``bptt-run`` runs with the same interpreter and the same jax as this checkout's, so that
only the project's code and its device policy differ. Each case is a whole ``bptt-run``
command; its steady seconds per epoch are the wall-time difference of a short and a long run
over their epoch difference (start-up and compile times cancel). The two versions alternate,
each case ``repeats`` times, so that a slow spell of a shared machine hits both alike.

Run alone: ``python bench/release.py [--release 0.2.0] [--repeats 2] [--case quantum]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Landed releases, by the commit that carried the version. 0.2.0 is the last release whose
# processes had one jax CPU device: the reference for one-row programs (issue 33).
RELEASES = {
    "0.2.0": "55a11a9a97a231b95a9f21890335cff8a374207e",
    "0.3.0": "1dd959c95de90e0140441d52171a9fe172f1e433",
}
DEFAULT_RELEASE = "0.2.0"

# name -> (bptt-run arguments, (short, long) epochs). One seed, clip NONE and default options,
# as a user's first command; one many-row grid to check that the every-core speed-ups stay.
CASES = {
    "quantum n=3 R, 1 row": ("quantum -l 3 -f R -c NONE --seeds 1", (2, 24)),
    "quantum n=3 C, 1 row": ("quantum -l 3 -f C -c NONE --seeds 1", (2, 20)),
    "cartpole 2 poles R, 1 row": ("cartpole -l 2 -f R -c NONE --seeds 1", (2, 60)),
    "cartpole 2 poles C, 1 row": ("cartpole -l 2 -f C -c NONE --seeds 1", (2, 50)),
    "guidance rc=0.1 C, 1 row": ("guidance -l 0.1 -f C -c NONE --seeds 1", (2, 40)),
    "cartpole R, 9 rows (grid)": ("cartpole -l 2 -f R -c NORM -c NONE -c VALUE --seeds 3", (2, 30)),
}


def install(version: str) -> Path:
    """The folder to put on PYTHONPATH for release ``version`` (installed on first use)."""
    if version not in RELEASES:
        raise SystemExit(f"bench: unknown release {version!r}; allowed: {', '.join(RELEASES)}")
    site = ROOT / ".bench" / f"release-{version}" / "site"
    if (site / "bptt_cli" / "__init__.py").exists():
        return site
    commit = RELEASES[version]
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"]).returncode:
        raise SystemExit(
            f"bench: release {version} (commit {commit[:10]}) is not in this clone's history; "
            "fetch it (git fetch --unshallow) or pick another with --release"
        )
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        staging = site.with_name("site.partial")
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(staging),
                tmp,
            ],
            check=True,
        )
        staging.rename(site)
    return site


def _wall(command: list[str], env: dict[str, str]) -> float:
    # cwd: the temporary folder, so that `python -c` does not import this checkout's bptt_cli
    out = tempfile.mkdtemp(prefix="bptt-bench-")
    try:
        t0 = time.perf_counter()
        done = subprocess.run([*command, "--out", out], env=env, cwd=out, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if done.returncode:
        raise SystemExit(f"bench: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return wall


def steady(site: Path | None, args: str, short: int, long: int) -> float:
    """Steady seconds per epoch of ``bptt-run args`` (this checkout where ``site`` is None)."""
    # No persistent compilation cache (the release has none): the short and the long run must
    # both compile, so that compiling cancels in their difference.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "BPTT_COMPILE_CACHE": "off"}
    env["PYTHONPATH"] = str(site or ROOT)
    base = [
        sys.executable,
        "-c",
        "from bptt_cli.cli import run_main; run_main()",
        *args.split(),
        "--no-diagnostics",
    ]
    walls = [_wall([*base, "--epochs", str(epochs)], env) for epochs in (short, long)]
    return (walls[1] - walls[0]) / (long - short)


def compare(version: str = DEFAULT_RELEASE, repeats: int = 2, only: str | None = None) -> None:
    import bptt_cli

    site = install(version)
    print(
        f"\n== r. this checkout ({bptt_cli.__version__}) against release {version} "
        f"({RELEASES[version][:10]}): steady s/epoch of whole bptt-run commands, {repeats} repeats "
        "alternating; ratio = release / this (above 1: this checkout is faster)",
        flush=True,
    )
    print(f"{'case':28s} {'release s/epoch':>22s} {'this s/epoch':>22s} {'ratio':>12s}")
    for case, (args, (short, long)) in CASES.items():
        if only and only not in case:
            continue
        old, new = [], []
        for _ in range(repeats):
            old.append(steady(site, args, short, long))
            new.append(steady(None, args, short, long))
        ratios = [o / n for o, n in zip(old, new, strict=True)]
        fmt = lambda xs, w: " ".join(f"{x:{w}.3f}" for x in xs)  # noqa: E731
        print(
            f"{case:28s} {fmt(old, 10):>22s} {fmt(new, 10):>22s} {fmt(ratios, 5):>12s}"
            f"   median {statistics.median(ratios):.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default=DEFAULT_RELEASE, help=f"one of {', '.join(RELEASES)}")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--case", help="only the cases whose name contains this")
    args = parser.parse_args()
    compare(args.release, args.repeats, args.case)


if __name__ == "__main__":
    main()
