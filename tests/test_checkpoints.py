"""Checkpoints: safetensors + JSON, atomic, checked on load; every problem is a CheckpointError naming it."""

import json

import numpy as np
import pytest

from rtchunk import checkpoints
from rtchunk.checkpoints import CheckpointError


def _tree():
    return {"layer": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.zeros(3, np.float32)}}


def test_round_trip_and_replace(tmp_path):
    path = tmp_path / "ckpt"
    checkpoints.save(path, _tree(), {"kind": "test", "step": 1})
    checkpoints.save(path, _tree(), {"kind": "test", "step": 2})  # over an existing one
    tree, meta = checkpoints.load(path, _tree())
    np.testing.assert_array_equal(tree["layer"]["kernel"], _tree()["layer"]["kernel"])
    assert meta["step"] == 2 and meta["format_version"] == checkpoints.FORMAT_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary or old copy left


def test_structure_mismatch_names_every_problem(tmp_path):
    checkpoints.save(tmp_path / "c", _tree(), {"kind": "test"})
    like = {"layer": {"kernel": np.zeros((3, 2), np.float32), "scale": np.zeros(3, np.float32)}}
    with pytest.raises(CheckpointError) as info:
        checkpoints.load(tmp_path / "c", like)
    message = str(info.value)
    assert "missing arrays: layer/scale" in message and "unexpected arrays: layer/bias" in message
    assert "layer/kernel: expected float32[3, 2], found float32[2, 3]" in message


def test_missing_truncated_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*meta.json is missing"):
        checkpoints.load_meta(tmp_path / "nothing")
    checkpoints.save(tmp_path / "c", _tree(), {"kind": "test"})
    arrays = tmp_path / "c" / checkpoints.ARRAYS
    arrays.write_bytes(arrays.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoints.load_arrays(tmp_path / "c")
    (tmp_path / "c" / checkpoints.META).write_text("{")
    with pytest.raises(CheckpointError, match="is corrupt"):
        checkpoints.load_meta(tmp_path / "c")
    (tmp_path / "c" / checkpoints.META).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CheckpointError, match="not an rtchunk checkpoint of format version"):
        checkpoints.load_meta(tmp_path / "c")
    assert issubclass(CheckpointError, ValueError)
