"""jax's persistent compilation cache: compiled programs kept across runs and processes.

A program compiled once is read back by a second run of it, a resumed run, every worker of a
pool and every SLURM task that shares the folder, instead of being compiled again (XLA takes
seconds to minutes per program, a third-party simulator's programs the longest). The folder is,
in this order: ``--compile-cache DIR`` (which the command line puts into the environment, so
that its workers inherit it), ``$BPTT_COMPILE_CACHE``, jax's own ``$JAX_COMPILATION_CACHE_DIR``,
else ``<user cache>/bptt-cli/jax`` (``$XDG_CACHE_HOME`` or ``~/.cache``; ``$BPTT_CACHE_DIR``
replaces ``<user cache>/bptt-cli``). ``off`` compiles every program afresh.

jax keys an entry by the program, its compile options, the devices and jax's version, so a
changed program or an upgrade never reads a stale entry. Writers that meet (two workers
compiling the same program at once) both compile it; the first to finish writes the entry and
the other finds it there and keeps its own executable. An entry that does not load (a kill
while it was written, a damaged disk) makes jax warn and compile the program again;
:func:`repair` then removes every entry that does not decompress, so that the fresh executable
is written in its place.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

VARIABLE = "BPTT_COMPILE_CACHE"
OFF = "off"
# jax warns with this when an entry does not load (jax/_src/compiler.py), then compiles anew.
DAMAGED_ENTRY = "Error reading persistent compilation cache entry"

_lock = threading.Lock()
_applied: list[Path | None] = []  # the folder this process uses, once set (None: off)
_watching: list[Callable[[str], None]] = []  # on_damaged_entry's, once installed


def default_folder(env: Mapping[str, str] = os.environ) -> Path:
    """``<user cache>/bptt-cli/jax`` (the same base as ``make bench``'s figures)."""
    base = env.get("BPTT_CACHE_DIR") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bptt-cli"
    )
    return Path(base) / "jax"


def resolve(setting: str | None = None, env: Mapping[str, str] = os.environ) -> tuple[Path | None, str]:
    """The folder to use (None: off) and where that choice comes from."""
    if setting:
        return (None, "--compile-cache off") if setting.lower() == OFF else (Path(setting), "--compile-cache")
    if env.get(VARIABLE):
        value = env[VARIABLE]
        return (None, f"${VARIABLE}") if value.lower() == OFF else (Path(value), f"${VARIABLE}")
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(env["JAX_COMPILATION_CACHE_DIR"]), "$JAX_COMPILATION_CACHE_DIR"
    return default_folder(env), "default"


def check(folder: Path | None) -> None:
    """Raise ``PermissionError`` (saying why) unless entries can be written in ``folder``,
    creating it where it does not exist yet. Leaves nothing else behind."""
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(err.strerror or str(err)) from None


def use(folder: Path | str | None = "environment") -> Path | None:
    """Set jax's persistent cache for this process, once: later calls change nothing and return
    the folder in use (None: off). With the default, the folder comes from the environment
    (:func:`resolve`), unless the process configured jax's cache itself (a test session, a
    user's script), which is then kept. Programs of any compile time are cached: reading one
    back takes milliseconds. A damaged entry is said in one line on stderr (:func:`on_damaged_entry`,
    unless the caller chose how first)."""
    import jax

    on_damaged_entry(lambda line: print(f"bptt-run: warning: {line}", file=sys.stderr, flush=True))

    with _lock:
        if _applied:
            return _applied[0]
        if folder == "environment":
            configured = jax.config.jax_compilation_cache_dir
            explicit = os.environ.get(VARIABLE)
            folder = Path(configured) if configured and not explicit else resolve(None)[0]
        if folder is None:
            jax.config.update("jax_enable_compilation_cache", False)
        else:
            jax.config.update("jax_compilation_cache_dir", str(folder))
            if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
                jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        _applied.append(folder)
        return folder


def repair(folder: Path | None = None) -> list[Path]:
    """Remove the entries of the cache in use (or of ``folder``) that do not decompress, so that
    jax writes the program it compiles again in their place; returns them."""
    folder = folder if folder is not None else (_applied[0] if _applied else None)
    if folder is None:
        return []
    try:
        from jax._src.compilation_cache import decompress_executable
    except ImportError:  # another jax layout: leave the entries to jax
        return []
    removed = []
    for entry in sorted(Path(folder).glob("*-cache")):
        try:
            decompress_executable(entry.read_bytes())
        except OSError:
            continue
        except Exception:  # zlib.error, zstd's errors: a torn or damaged entry
            try:
                entry.unlink()
            except OSError:
                continue
            removed.append(entry)
    return removed


def on_damaged_entry(say: Callable[[str], None]) -> None:
    """From now on in this process, jax's warning about an entry that does not load becomes
    ``say(one line)``, once the damaged entries are removed (:func:`repair`); other warnings
    show as before."""
    if _watching:
        return
    _watching.append(say)
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if not text.startswith(DAMAGED_ENTRY):
            return previous(message, category, filename, lineno, file, line)
        removed = repair()
        program = text.split("'")[1] if text.count("'") >= 2 else "a program"
        say(
            f"a damaged entry of the compilation cache ({program}) was compiled again"
            + (
                f"; {len(removed)} damaged entr{'y' if len(removed) == 1 else 'ies'} removed"
                if removed
                else ""
            )
        )

    warnings.showwarning = show
