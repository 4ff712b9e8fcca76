"""Reading results back: one reader per file kind, each tolerant of a folder being written, and
each saying what it could not read (``warning:`` lines on stderr, one per file)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bptt_cli.results.files import CONFIG_COLUMNS, FIGURES_DIR, DamagedFile, reason

# Columns holding text; "diverged" holds True/False; every other column holds numbers.
TEXT_COLUMNS = frozenset(
    {"experiment", "run_id", "problem", "level_key", "level", "flow", "clip", "optimizer", "precision"}
)
FLAG_COLUMNS = frozenset({"diverged"})
# A run's own columns: one value in every row of its CSVs.
CONSTANT_COLUMNS = frozenset(CONFIG_COLUMNS[:-2]) | {"precision"}
INTEGER = re.compile(r"-?\d+")


@dataclass
class CsvScan:
    """A run CSV read line by line: its valid rows, and what was wrong with the others.

    Attributes:
      frame: the valid rows in file order, each key (seed, epoch[, t]) once (the first).
      lines: the line number of each row of ``frame``.
      keys: the key columns (``t`` in a diagnostics CSV).
      bad_lines: line numbers (1-based, the header is line 1) of lines that are not a valid
        row of the run, the torn last line included.
      torn_line: the number of the last line when the file ends inside it (an append cut
        short), else None.
      duplicates: rows dropped because an earlier row has the same key.
      unusable: why no row at all could be read (empty, no header), else None.
    """

    frame: pd.DataFrame
    lines: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    keys: tuple[str, ...] = ("seed", "epoch")
    bad_lines: list[int] = field(default_factory=list)
    torn_line: int | None = None
    duplicates: int = 0
    unusable: str | None = None

    @property
    def damaged(self) -> bool:
        return bool(self.bad_lines or self.duplicates or self.unusable)

    def problems(self) -> str:
        """What is wrong, as a phrase (empty when nothing is)."""
        if self.unusable:
            return self.unusable
        parts = []
        malformed = [n for n in self.bad_lines if n != self.torn_line]
        if malformed:
            parts.append(f"{_count(len(malformed), 'malformed line')} ({_numbers(malformed)})")
        if self.torn_line is not None:
            parts.append(f"last line ({self.torn_line}) torn")
        if self.duplicates:
            parts.append(_count(self.duplicates, "duplicated row"))
        return ", ".join(parts)


def scan_csv(path: Path, run_id: str | None = None, **kwargs) -> CsvScan:
    """Read a run's CSV, keeping only lines that are whole rows of the run: as many fields as
    the header, numbers where numbers belong, and the run's own columns (its id among them)
    equal in every row. ``kwargs`` go to ``pandas.read_csv`` for the kept lines. A ``.gz``
    file (published data) is read decompressed. Raises ``FileNotFoundError`` when there is no
    file."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            return CsvScan(pd.DataFrame(), unusable=f"does not decompress ({reason(err)})")
    whole = _read_whole(data, run_id, kwargs)
    if whole is not None:
        return whole
    lines = data.split(b"\n")
    if not data.strip(b"\0 \n"):
        return CsvScan(pd.DataFrame(), unusable="empty")
    try:
        header = next(csv.reader([lines[0].decode()])) if len(lines) > 1 else []
    except (UnicodeDecodeError, csv.Error, StopIteration):
        header = []
    if not {"run_id", "seed", "epoch"} <= set(header) or len(set(header)) != len(header):
        return CsvScan(pd.DataFrame(), unusable="no header of a bptt-run CSV")
    keys = ("seed", "epoch", "t") if "t" in header else ("seed", "epoch")
    bad, good, texts = [], [], []
    for number, raw in enumerate(lines[1:-1], start=2):
        text = _line_text(raw, len(header))
        if text is None:
            bad.append(number)
        else:
            good.append(number)
            texts.append(text)
    torn_line = len(lines) if lines[-1] else None
    if torn_line is not None:
        bad.append(torn_line)
    lines_text = "\n".join([lines[0].decode(), *texts]) + "\n"
    strings = pd.read_csv(io.StringIO(lines_text), dtype=str, keep_default_na=False, na_filter=False)
    if len(strings) != len(texts):  # not expected once every line was checked alone
        return CsvScan(pd.DataFrame(), keys=keys, unusable="lines that pandas reads otherwise than csv")
    invalid = _invalid_rows(strings, run_id)
    numbers = np.asarray(good, int)
    if invalid.any():
        bad += numbers[invalid].tolist()
        numbers = numbers[~invalid]
        kept = [text for text, wrong in zip(texts, invalid, strict=True) if not wrong]
        lines_text = "\n".join([lines[0].decode(), *kept]) + "\n"
    frame = pd.read_csv(io.StringIO(lines_text), **kwargs)
    duplicated = frame.duplicated(list(keys)).to_numpy(bool)
    frame = frame[~duplicated].reset_index(drop=True)
    return CsvScan(frame, numbers[~duplicated], keys, sorted(bad), torn_line, int(duplicated.sum()))


def _read_whole(data: bytes, run_id: str | None, kwargs) -> CsvScan | None:
    """The common case at the cost of one ``read_csv``: a file whose every line has the header's
    number of fields and whose columns all parse as they should. None when anything is off (then
    the lines are checked one by one)."""
    if not data.endswith(b"\n") or b"\0" in data or b'"' in data:
        return None
    raw = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    per_line = np.diff(np.searchsorted(np.flatnonzero(raw == ord(",")), ends), prepend=0)
    if np.any(per_line != per_line[0]) or np.any(np.diff(ends, prepend=-1) < 2):
        return None
    try:
        frame = pd.read_csv(io.BytesIO(data), **kwargs)
    except (pd.errors.ParserError, ValueError):
        return None
    columns = set(frame.columns)
    if not {"run_id", "seed", "epoch"} <= columns or len(columns) != len(frame.columns):
        return None
    keys = ("seed", "epoch", "t") if "t" in columns else ("seed", "epoch")
    for name in frame.columns:
        values = frame[name]
        if name in keys:
            ok = pd.api.types.is_integer_dtype(values)
        elif name in FLAG_COLUMNS:
            ok = pd.api.types.is_bool_dtype(values)
        elif name in TEXT_COLUMNS:
            ok = not values.isna().any()
        else:
            ok = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if not ok or (name in CONSTANT_COLUMNS and values.nunique(dropna=False) > 1):
            return None
    if run_id is not None and len(frame) and frame["run_id"].iloc[0] != run_id:
        return None
    if frame.duplicated(list(keys)).any():
        return None
    return CsvScan(frame, np.arange(2, len(frame) + 2), keys)


def _line_text(raw: bytes, n_fields: int) -> str | None:
    """A line as text when it has ``n_fields`` fields (else None: torn, merged or garbage)."""
    if not raw or b"\0" in raw or raw.count(b'"') % 2:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    count = len(next(csv.reader([text]))) if '"' in text else text.count(",") + 1
    return text if count == n_fields else None


def _invalid_rows(strings: pd.DataFrame, run_id: str | None) -> np.ndarray:
    """Rows (of a frame of strings) that cannot be a row of the run."""
    invalid = np.zeros(len(strings), bool)
    for name in strings.columns:
        values = strings[name]
        if name in ("seed", "epoch", "t"):
            ok = values.str.fullmatch(INTEGER)
        elif name in FLAG_COLUMNS:
            ok = values.isin(["True", "False"])
        elif name in TEXT_COLUMNS:
            ok = values != ""
        else:
            numbers = pd.to_numeric(values, errors="coerce")
            ok = numbers.notna() | values.str.lower().isin(["", "nan", "-nan"])
        invalid |= ~ok.to_numpy(bool)
    for name in CONSTANT_COLUMNS & set(strings.columns):
        values = strings[name][~invalid]
        expected = run_id if name == "run_id" and run_id is not None else _most_common(values)
        invalid |= (strings[name] != expected).to_numpy(bool)
    return invalid


def _most_common(values: pd.Series) -> str | None:
    counts = values.value_counts()
    return str(counts.index[0]) if len(counts) else None


def read_run_csv(path: Path, epochs_done: int | None = None, **kwargs) -> pd.DataFrame:
    """A run CSV as committed: its valid rows (``scan_csv``), without rows of epochs beyond
    ``epochs_done`` (appended, but not yet committed by a checkpoint)."""
    frame = scan_csv(path, **kwargs).frame
    if epochs_done is not None and "epoch" in frame.columns:
        frame = frame[frame["epoch"] <= epochs_done].reset_index(drop=True)
    return frame


def load_rows(path: Path, epochs_done: int) -> pd.DataFrame | None:
    """The run's committed CSV rows up to ``epochs_done`` (None when there are none)."""
    try:
        return read_run_csv(path, epochs_done)
    except FileNotFoundError:
        return None


def read_trajectories(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``(xs, us, seeds, meta)`` of a trajectories file; ``DamagedFile`` (a ``ValueError``) when
    it does not load whole, ``FileNotFoundError`` without one."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            xs, us, seeds, meta = data["xs"], data["us"], data["seeds"], json.loads(str(data["meta"]))
    except FileNotFoundError:
        raise
    except Exception as err:  # a damaged zip fails in many ways (BadZipFile, EOFError, zlib.error, ...)
        raise DamagedFile(f"does not load ({reason(err)})") from None
    if not isinstance(meta, dict) or xs.shape[:1] != seeds.shape or us.shape[:1] != seeds.shape:
        raise DamagedFile("holds arrays that do not fit together (seeds, xs, us)")
    return xs, us, seeds, meta


def read_results(root: Path, kind: str = "metrics") -> pd.DataFrame:
    """Every run CSV of a kind (``"metrics"`` or ``"diagnostics"``) below ``root`` in one long
    frame (empty frame when there is none), published ones (``.csv.gz``) included. Rows that cannot be read, or that a run has not
    committed yet, are left out, and each file that loses any says so in one warning line."""
    root = Path(root)
    metas = read_metas(root)
    frames = []
    for path in sorted([*root.rglob("*.csv"), *root.rglob("*.csv.gz")]):
        name = path.name.removesuffix(".gz")
        if not _is_run_csv(path, root) or name.endswith(".diagnostics.csv") != (kind == "diagnostics"):
            continue
        run_id = name.removesuffix(".csv").removesuffix(".diagnostics")
        # Levels stay text ("2", "0.01"): integer and float levels of different problems would
        # otherwise be merged into one float column.
        try:
            scan = scan_csv(path, run_id, dtype={"level": str})
        except (OSError, pd.errors.ParserError, ValueError) as err:
            warn_once(f"skipping {path}: not a readable CSV ({reason(err)})")
            continue
        if scan.unusable:
            warn_once(f"skipping {path}: {scan.unusable}")
            continue
        frame, problems = scan.frame, [f"{scan.problems()}, left out"] if scan.damaged else []
        meta = metas.get(run_id, {})
        done = meta.get("epochs_done")
        if isinstance(done, int) and not frame.empty:
            beyond = frame["epoch"] > done
            if beyond.any():
                problems.append(
                    f"{_count(int(beyond.sum()), 'row')} of epochs past the {done} committed left out"
                )
                frame = frame[~beyond].reset_index(drop=True)
            run_config = meta.get("config")
            seeds = run_config.get("seeds") if isinstance(run_config, dict) else None
            if kind == "metrics" and isinstance(seeds, list) and len(frame) < len(seeds) * done:
                problems.append(f"holds {len(frame)} of the {len(seeds) * done} rows its sidecar commits")
        if problems:
            warn_once(f"{path}: {'; '.join(problems)}")
        if not frame.empty:
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_metas(root: Path) -> dict[str, dict[str, Any]]:
    """Run id -> sidecar JSON for every run below ``root``. A run's sidecar that cannot be read
    is left out with a warning line (only a run's: other JSON files are not ours to judge)."""
    metas = {}
    for path in sorted(Path(root).rglob("*.json")):
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            if any(path.with_name(path.stem + suffix).exists() for suffix in (".csv", ".ckpt.npz")):
                warn_once(f"skipping {path}: not a readable sidecar ({reason(err)})")
            continue
        if isinstance(meta, dict) and "run_id" in meta:
            metas[meta["run_id"]] = meta
    return metas


def warn(message: str) -> None:
    """One line on stderr, ``warning: ...`` (line breaks in ``message`` become spaces)."""
    print(f"warning: {' '.join(message.splitlines())}", file=sys.stderr)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """``warn``, once per message in this process (readers run more than once per command)."""
    if message not in _warned:
        _warned.add(message)
        warn(message)


# Tables bptt-plot writes beside the runs: not runs.
PLOT_TABLES = ("summary.csv", "paired.csv", "against.csv")


def _is_run_csv(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return FIGURES_DIR not in parts and not path.name.startswith(".") and path.name not in PLOT_TABLES


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _numbers(numbers: list[int], at_most: int = 5) -> str:
    shown = ", ".join(map(str, numbers[:at_most]))
    return shown + (f", ... ({len(numbers) - at_most} more)" if len(numbers) > at_most else "")
