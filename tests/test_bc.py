"""Expert datasets and behaviour cloning: chunking, checkpoints, resume, training-time RTC, init-from."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from rtchunk import checkpoints
from rtchunk.kinetix import bc, policy_store
from rtchunk.kinetix import dataset as dataset_lib
from rtchunk.model import ModelConfig

SMALL = ModelConfig(channel_dim=16, channel_hidden_dim=32, token_hidden_dim=8, num_layers=1, horizon=4)


def test_steps_left_and_chunks_respect_episode_ends():
    done = np.array([[0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]], bool)
    left = dataset_lib.steps_left(done)
    np.testing.assert_array_equal(left, [[2, 1, 3, 2, 1, 1], [6, 5, 4, 3, 2, 1]])
    action = np.arange(1, 13, dtype=np.float32).reshape(2, 6, 1)
    chunks = dataset_lib.chunk_actions(jnp.asarray(action), jnp.asarray(left), jnp.array([0, 0, 1, 1]),
                                       jnp.array([0, 2, 1, 4]), horizon=4)
    np.testing.assert_array_equal(chunks[..., 0], [[1, 2, 0, 0], [3, 4, 5, 0], [8, 9, 10, 11], [11, 12, 0, 0]])


def _synthetic(seed: int, envs=4, steps=64, obs_dim=5, action_dim=2, episode=16):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(envs, steps, obs_dim)).astype(np.float32)
    w = rng.normal(size=(obs_dim, action_dim)).astype(np.float32)
    action = np.tanh(obs @ w).astype(np.float32)
    done = np.zeros((envs, steps), bool)
    done[:, episode - 1 :: episode] = True
    solved = done & (rng.random((envs, steps)) < 0.7)
    ret = np.where(done, rng.normal(size=(envs, steps)), 0).astype(np.float32)
    length = np.where(done, episode, 0).astype(np.int32)
    return dataset_lib.Dataset(obs, action, done, solved, ret, length)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for i, name in enumerate(["lvl_a", "lvl_b"]):
        dataset_lib.save(root / name, _synthetic(i), {"level": name})
    return root


def test_dataset_round_trip_and_corruption(data_dir, tmp_path):
    data, meta = dataset_lib.load(data_dir / "lvl_a")
    np.testing.assert_array_equal(data.action, _synthetic(0).action)
    assert meta["summary"]["episodes"] == 16 and meta["level"] == "lvl_a"
    broken = tmp_path / "broken"
    dataset_lib.save(broken, _synthetic(0), {})
    path = broken / checkpoints.ARRAYS
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(checkpoints.CheckpointError, match="corrupt or truncated"):
        dataset_lib.load(broken)
    (broken / checkpoints.META).write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match="not valid JSON"):
        dataset_lib.load(broken)


def _config(data_dir, out, **kw):
    base = dict(data_dir=data_dir, out_dir=out, model=SMALL, batch_size=16, num_epochs=2, warmup_steps=5,
                learning_rate=3e-3, max_steps_per_epoch=12, progress=False)
    return bc.BCConfig(**{**base, **kw})


def _weights(run, level, epoch):
    return checkpoints.load_arrays(run / level / f"epoch_{epoch:03d}")


def test_train_resume_is_exact_and_writes_checkpoints(data_dir, tmp_path):
    logged = []
    straight = bc.train_policy(_config(data_dir, tmp_path / "straight", num_epochs=3), log=logged.append)
    assert [[r["epoch"] for r in rows] for rows in logged] == [[0, 0], [1, 1], [2, 2]]  # what tracking receives
    resumed = tmp_path / "resumed"
    bc.train_policy(_config(data_dir, resumed, num_epochs=2))
    assert policy_store.last_epoch(resumed, "lvl_a") == 1
    bc.train_policy(_config(data_dir, resumed, num_epochs=3))  # picks up at epoch 2
    for level in ("lvl_a", "lvl_b"):
        for name, array in _weights(straight, level, 2).items():
            np.testing.assert_array_equal(array, _weights(resumed, level, 2)[name], err_msg=name)
    stats = (resumed / "stats.csv").read_text().splitlines()
    assert len(stats) == 1 + 3 * 2  # header + 3 epochs x 2 levels, no epoch trained twice
    losses = [float(line.split(",")[2]) for line in stats[1:]]
    assert losses[-1] < losses[0]
    policy, meta = checkpoints.load_policy(resumed / "lvl_b" / "epoch_002")
    assert (policy.obs_dim, policy.action_dim) == (5, 2) and meta["training_delays"] is None
    with pytest.raises(ValueError, match="different settings"):
        bc.train_policy(_config(data_dir, resumed, num_epochs=4, learning_rate=1e-3))


def test_prefix_training_fine_tune_from_checkpoint(data_dir, tmp_path):
    base = bc.train_policy(_config(data_dir, tmp_path / "base", levels=("lvl_a",), num_epochs=1))
    tuned = bc.train_policy(_config(data_dir, tmp_path / "tuned", levels=("lvl_a",), num_epochs=1,
                                    simulated_delay=3, init_from=base, model=dataclasses.replace(SMALL, channel_dim=8)))
    policy, meta = checkpoints.load_policy(tuned / "lvl_a" / "epoch_000")
    # The model comes from the checkpoint it was initialised from, whatever --model says.
    assert policy.config == SMALL
    assert meta["training_delays"] == {"min_delay": 0, "max_delay": 2, "distribution": "exp", "decay": 1.0}
    for bad, match in [(dict(simulated_delay=0), "simulated_delay"), (dict(simulated_delay=9), "simulated_delay"),
                       (dict(simulated_delay=3, delay_distribution="normal"), "distribution"),
                       (dict(batch_size=0), "batch_size")]:
        with pytest.raises(ValueError, match=match):
            _config(data_dir, tmp_path / "x", **bad)
    with pytest.raises(ValueError, match="no dataset"):
        bc.train_policy(_config(data_dir, tmp_path / "y", levels=("missing",)))


def test_one_level_splits_its_batch_over_the_devices_to_the_same_weights(data_dir, tmp_path, monkeypatch):
    import jax

    from rtchunk.kinetix import parallel

    assert jax.device_count() == 2  # conftest: both CPU cores as devices
    assert parallel.batch_sharding(1, 16) is not None  # one level on two devices: the batch splits
    assert parallel.batch_sharding(2, 16) is None and parallel.batch_sharding(1, 15) is None  # levels split / odd
    split = bc.train_policy(_config(data_dir, tmp_path / "split", levels=("lvl_a",), num_epochs=1))
    monkeypatch.setattr(parallel, "batch_sharding", lambda *_: None)
    whole = bc.train_policy(_config(data_dir, tmp_path / "whole", levels=("lvl_a",), num_epochs=1))
    for name, array in _weights(whole, "lvl_a", 0).items():  # the same training, up to float summation order
        np.testing.assert_allclose(_weights(split, "lvl_a", 0)[name], array, rtol=1e-4, atol=1e-5, err_msg=name)


def test_ema_saves_the_debiased_average_and_resumes_exactly(data_dir, tmp_path):
    one = dict(levels=("lvl_a",), num_epochs=2)
    plain = bc.train_policy(_config(data_dir, tmp_path / "plain", **one))
    # A vanishing decay averages over the last update only: the saved policy is the last weights.
    last = bc.train_policy(_config(data_dir, tmp_path / "last", ema_decay=1e-6, **one))
    for name, array in _weights(plain, "lvl_a", 1).items():
        np.testing.assert_allclose(_weights(last, "lvl_a", 1)[name], array, rtol=1e-4, atol=1e-6, err_msg=name)
    straight = bc.train_policy(_config(data_dir, tmp_path / "straight", ema_decay=0.9, **one))
    averaged = _weights(straight, "lvl_a", 1)
    assert any(not np.allclose(averaged[k], v) for k, v in _weights(plain, "lvl_a", 1).items())
    # Training itself is unchanged: the optimiser's weights equal the plain run's.
    like = checkpoints.load_arrays(plain / "train_state")
    for name, array in checkpoints.load_arrays(straight / "train_state").items():
        if name in like:
            np.testing.assert_array_equal(array, like[name], err_msg=name)
    resumed = tmp_path / "resumed"
    bc.train_policy(_config(data_dir, resumed, ema_decay=0.9, levels=("lvl_a",), num_epochs=1))
    bc.train_policy(_config(data_dir, resumed, ema_decay=0.9, **one))
    for name, array in averaged.items():
        np.testing.assert_array_equal(_weights(resumed, "lvl_a", 1)[name], array, err_msg=name)
    with pytest.raises(ValueError, match="ema_decay"):
        _config(data_dir, tmp_path / "x", ema_decay=1.0)
