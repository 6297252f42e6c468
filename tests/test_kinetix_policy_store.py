"""The one checkpoint lookup: a checkpoint, per-level checkpoints, or a train-policy run (last or given epoch)."""

import flax.nnx as nnx
import pytest

from kinetix_helpers import TINY_MODEL
from rtchunk import FlowPolicy, checkpoints
from rtchunk.kinetix import policy_store


@pytest.fixture(scope="module")
def policy():
    return FlowPolicy(5, 3, TINY_MODEL, rngs=nnx.Rngs(0))


def test_layouts(tmp_path, policy):
    checkpoints.save_policy(tmp_path / "one", policy)
    assert policy_store.find_checkpoint(tmp_path / "one", "any_level") == tmp_path / "one"
    checkpoints.save_policy(tmp_path / "per_level" / "a", policy)
    assert policy_store.find_checkpoint(tmp_path / "per_level", "a") == tmp_path / "per_level" / "a"
    for epoch in (2, 10, 100):  # numbers, not names, order the epochs
        checkpoints.save_policy(policy_store.epoch_dir(tmp_path / "run", "a", epoch), policy, {"epoch": epoch})
    assert policy_store.last_epoch(tmp_path / "run", "a") == 100
    assert policy_store.find_checkpoint(tmp_path / "run", "a").name == "epoch_100"
    assert policy_store.find_checkpoint(tmp_path / "run").name == "epoch_100"  # the only level
    assert policy_store.find_checkpoint(tmp_path / "run", "a", epoch=10).name == "epoch_010"
    info = policy_store.describe(policy_store.find_checkpoint(tmp_path / "run", "a"))
    assert (info.obs_dim, info.action_dim, info.model, info.meta["epoch"]) == (5, 3, TINY_MODEL, 100)
    assert info.trained_max_delay is None
    loaded, meta = policy_store.load_policy(info.path)
    assert loaded.config == TINY_MODEL and meta["epoch"] == 100


def test_what_is_missing_is_named(tmp_path, policy):
    with pytest.raises(policy_store.NoCheckpoint, match="rtchunk demo"):
        policy_store.find_checkpoint(tmp_path / "nothing")
    checkpoints.save_policy(tmp_path / "run" / "a" / "epoch_000", policy)
    with pytest.raises(policy_store.NoCheckpoint, match="no policy checkpoint for level 'b'"):
        policy_store.find_checkpoint(tmp_path / "run", "b")
    with pytest.raises(policy_store.NoCheckpoint, match="epoch 3"):
        policy_store.find_checkpoint(tmp_path / "run", "a", epoch=3)
    checkpoints.save_policy(tmp_path / "run" / "b" / "epoch_000", policy)
    with pytest.raises(ValueError, match="several levels"):
        policy_store.find_checkpoint(tmp_path / "run")
    path = tmp_path / "run" / "a" / "epoch_000"
    (path / checkpoints.ARRAYS).write_bytes((path / checkpoints.ARRAYS).read_bytes()[:50])
    with pytest.raises(checkpoints.CheckpointError, match="corrupt or truncated"):
        policy_store.describe(path)
    (path / checkpoints.META).write_text("{")
    with pytest.raises(checkpoints.CheckpointError, match="not valid JSON"):
        policy_store.describe(path)
