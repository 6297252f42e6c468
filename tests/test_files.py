"""Atomic writes and JSON helpers: a crash or a bad value never leaves a half-written file."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from rtchunk.files import atomic_write_bytes, atomic_write_text, read_json, to_jsonable, write_json


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # fails inside the write
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


@dataclasses.dataclass(frozen=True)
class _Config:
    path: Path = Path("a/b")
    sizes: tuple = (1, 2)
    value: np.float32 = np.float32(0.5)


def test_json_round_trip_of_configs(tmp_path):
    assert to_jsonable(_Config()) == {"path": "a/b", "sizes": [1, 2], "value": 0.5}
    write_json(tmp_path / "c.json", {"config": _Config(), 3: np.int64(4)})
    assert read_json(tmp_path / "c.json") == {"config": {"path": "a/b", "sizes": [1, 2], "value": 0.5}, "3": 4}


def test_read_json_names_the_missing_or_corrupt_file(tmp_path):
    with pytest.raises(ValueError, match="run file .*missing.json does not exist"):
        read_json(tmp_path / "missing.json", "run file")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is corrupt"):
        read_json(tmp_path / "bad.json")
    json.loads((tmp_path / "bad.json").read_text().replace("{not json", "{}"))
