"""Result files: the eval CSV schema, rows appended as they finish, reading them back, and the run file a
resumed run must match. Plain Python (no numpy, no JAX): the report and the checks before a run use it.

Every stage that writes statistics (eval, train-expert, train-policy, live) appends them with
``append_rows``, flushed to disk before the next piece of work starts, so a crash loses at most the
row being written; a line cut short by a crash is dropped when read and overwritten by the next append.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from rtchunk.files import atomic_write_text, read_json, write_json

RUN_FILE = "run.json"
"""The settings of a run that a resumed run must share (eval, train-expert, train-policy)."""

KEY_COLUMNS = ("level", "method", "d", "s", "profile")
METRIC_COLUMNS = (
    "num_envs", "solved", "solve_rate", "solve_rate_low", "solve_rate_high", "return_mean", "length_mean",
    "episodes_finished", "chunks", "d_mean", "d_p50", "d_p95", "d_p99", "told_d_mean", "p_violate",
    "starvation_steps", "starvation_rate", "max_delta_action", "max_ddelta_action", "seam_jump_mean",
    "seam_jump_p99",
)
INFO_COLUMNS = ("horizon", "num_flow_steps", "policy", "shrink", "seed", "seconds", "finished_at")
COLUMNS = KEY_COLUMNS + METRIC_COLUMNS + INFO_COLUMNS
"""The columns of an eval run's results CSV, one row per (level, method, d, s, profile)."""


# -- CSV rows ------------------------------------------------------------------------------------------


def _complete_part(data: bytes) -> bytes:
    """``data`` up to its last complete line (a last line without its newline was cut by a crash)."""
    return data if not data or data.endswith(b"\n") else data[: data.rfind(b"\n") + 1]


def read_rows(path: Path, columns: Sequence[str] | None = None) -> list[dict]:
    """The complete rows of a CSV ([] if there is none); with ``columns``, a file with another header is a
    ``ValueError``. Reading never changes the file."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = _complete_part(path.read_bytes()).decode().splitlines()
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    if columns is not None and tuple(header) != tuple(columns):
        raise ValueError(f"{path} has different columns than this version writes; use another output directory")
    return list(csv.DictReader(lines))


def append_rows(path: Path, rows: Iterable[dict], columns: Sequence[str] | None = None) -> None:
    """Append ``rows`` to a CSV, flushed to disk before returning. A new (or empty) file gets a header:
    ``columns``, or the first row's keys; an existing file keeps its own. Missing values are written
    empty, extra ones dropped; a last line cut short by a crash is removed first."""
    rows = list(rows)
    if not rows:
        return
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    complete = _complete_part(data)
    header = next(csv.reader([complete.decode().splitlines()[0]])) if complete.strip() else None
    fields = header or list(columns or rows[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", restval="")
    if header is None:
        writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "r+b" if data else "wb") as f:
        if header is None:
            f.truncate(0)
        elif len(complete) != len(data):
            f.truncate(len(complete))
        f.seek(0, os.SEEK_END)
        f.write(buf.getvalue().encode())
        f.flush()
        os.fsync(f.fileno())


def write_rows(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Write a whole CSV at once (header ``columns``, missing values empty, extra ones dropped), atomically:
    a crash leaves the previous file or the new one, never half of it."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(path), buf.getvalue())


def format_value(value):
    """How an eval row's values are written: floats with 6 significant digits, NaN as an empty cell."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


# -- the eval run's files --------------------------------------------------------------------------------


def parse_shard(spec: str) -> tuple[int, int]:
    """``'i/n'`` -> (i, n); ``''`` -> (0, 1)."""
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n, got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {spec!r}")
    return i, n


def results_path(out: Path, shard: str = "") -> Path:
    """``<out>/results.csv``, or ``results.shard-i-of-n.csv`` for one shard of a sweep."""
    i, n = parse_shard(shard)
    return Path(out) / ("results.csv" if n == 1 else f"results.shard-{i}-of-{n}.csv")


def iter_result_files(directory: Path) -> list[Path]:
    """Every results CSV of an eval run (all shards)."""
    return sorted(Path(directory).glob("results*.csv"))


# -- resuming --------------------------------------------------------------------------------------------


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _without_later_defaults(new, old):
    """``new`` less the entries ``old`` lacks whose value is False or None: settings added to the project after
    ``old`` was written, at their off value (which is what runs did before the setting existed)."""
    if not (isinstance(new, dict) and isinstance(old, dict)):
        return new
    return {k: _without_later_defaults(v, old.get(k)) for k, v in new.items()
            if k in old or v not in (False, None)}


def check_run_file(path: Path, resume_key: dict) -> None:
    """A run file at ``path`` (if any) must hold ``resume_key``: the settings that shape the results.
    Otherwise a ``ValueError`` names every setting that differs. A setting the run file lacks matches when it
    is off (False or None): runs started before it existed resume. Writes nothing."""
    path = Path(path)
    if not path.is_file():
        return
    stored = read_json(path, "run file")
    old = stored.get("resume_key") if isinstance(stored, dict) else None
    if old == _without_later_defaults(resume_key, old):
        return
    old = old if isinstance(old, dict) else {}
    diff = sorted(k for k in set(old) | set(resume_key) if old.get(k) != resume_key.get(k))
    details = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(resume_key.get(k))}" for k in diff)
    raise ValueError(f"{path.parent} holds a run with different settings ({details}); use another output "
                     f"directory or the same settings")


def write_run_file(path: Path, resume_key: dict, **info) -> None:
    """Write the run file: the resume key and any other ``info`` about the run (atomically)."""
    write_json(path, {"resume_key": resume_key, **info})
