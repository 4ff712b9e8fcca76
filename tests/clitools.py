"""Running the installed command-line tools in subprocesses, as a user would."""

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def env_for(cache: Path, **extra) -> dict:
    """CPU only, a shared persistent compilation cache, unbuffered output, wide lines."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    env.update(extra)
    return env


def cli(tool: str, *args, cache: Path, cwd: Path, timeout=300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / tool), *map(str, args)],
        cwd=cwd,
        env=env_for(cache, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(tool: str, *args, cache: Path, cwd: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / tool), *map(str, args)],
        cwd=cwd,
        env=env_for(cache, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
