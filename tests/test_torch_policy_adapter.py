"""TorchChunkPolicy: the runtime's ``(observation, leftover, delay, execute_horizon) -> chunk`` for PyTorch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _torch_policies import ACTION_DIM, OBS_DIM, SMALL, saved_random_policy  # noqa: E402

from rtchunk.torch import model as tm  # noqa: E402
from rtchunk.torch import sampling as ts  # noqa: E402
from rtchunk.torch.policy_adapter import TorchChunkPolicy  # noqa: E402

H = SMALL.horizon


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    _, directory = saved_random_policy(tmp_path_factory.mktemp("adapter") / "p", seed=2)
    return tm.load_policy(directory)[0]


def _direct(policy, obs, noise, method, prev=None, d=0, s=None, convention="noise_at_0", velocity_fn=None):
    velocity_fn = velocity_fn or policy.velocity_fn(torch.from_numpy(obs)[None])
    return ts.sample_chunk(velocity_fn, noise, method, prev_chunk=prev, inference_delay=d, execute_horizon=s,
                           time_convention=convention)[0].numpy()


def test_adapter_is_sample_chunk_at_the_numpy_boundary(policy):
    adapter = TorchChunkPolicy.from_flow_policy(policy, method=ts.RTC(), seed=3)
    generator = torch.Generator().manual_seed(3)  # the adapter's noise stream, replayed
    obs = np.random.RandomState(0).randn(OBS_DIM).astype(np.float32)

    first = adapter(obs, None, 2, 3)  # nothing to continue yet: Naive
    assert first.shape == (H, ACTION_DIM) and first.dtype == np.float32
    noise = torch.randn(1, H, ACTION_DIM, generator=generator)
    np.testing.assert_allclose(first, _direct(policy, obs, noise, ts.Naive()), atol=1e-6)

    leftover = first[3:]  # 5 actions left after executing s = 3
    second = adapter(obs, leftover, 2, 3)
    noise = torch.randn(1, H, ACTION_DIM, generator=generator)
    prev = torch.zeros(1, H, ACTION_DIM)
    prev[0, :5] = torch.from_numpy(leftover)
    np.testing.assert_allclose(second, _direct(policy, obs, noise, ts.RTC(), prev, 2, 3), atol=1e-6)
    unguided = _direct(policy, obs, noise, ts.Naive())
    assert np.abs(second[:2] - leftover[:2]).mean() < 0.5 * np.abs(unguided[:2] - leftover[:2]).mean()


def test_short_leftover_and_long_delay_are_clipped(policy):
    obs = np.random.RandomState(1).randn(OBS_DIM).astype(np.float32)
    leftover = np.random.RandomState(2).randn(3, ACTION_DIM).astype(np.float32)
    adapter = TorchChunkPolicy.from_flow_policy(policy, method=ts.TrainedPrefix(), seed=0)
    chunk = adapter(obs, leftover, 7, 2)  # L = 3 < H - s = 6: the prefix can be at most the leftover
    np.testing.assert_array_equal(chunk[:3], leftover)
    noise = torch.randn(1, H, ACTION_DIM, generator=torch.Generator().manual_seed(0))
    prev = torch.zeros(1, H, ACTION_DIM)
    prev[0, :3] = torch.from_numpy(leftover)
    np.testing.assert_allclose(chunk, _direct(policy, obs, noise, ts.TrainedPrefix(), prev, 3, H - 3), atol=1e-6)


def test_noise_at_1_velocity_and_batched_dict_observations(policy):
    """A LeRobot-style model (t = 1 is noise) whose observation is a dict, batched by the caller."""

    def make_velocity_fn(observation):
        features = policy.encode_obs(observation["state"])
        return lambda x, t: -policy.velocity(features, x, 1 - t)

    adapter = TorchChunkPolicy(make_velocity_fn, horizon=H, action_dim=ACTION_DIM, method=ts.JacobianFree(),
                               time_convention="noise_at_1", seed=4, batched=True)
    obs = np.random.RandomState(3).randn(2, OBS_DIM).astype(np.float32)
    leftover = np.random.RandomState(4).randn(2, 5, ACTION_DIM).astype(np.float32)
    chunk = adapter({"task": ["a", "b"], "state": obs}, leftover, 1, 3)
    assert chunk.shape == (2, H, ACTION_DIM)
    noise = torch.randn(2, H, ACTION_DIM, generator=torch.Generator().manual_seed(4))
    prev = torch.zeros(2, H, ACTION_DIM)
    prev[:, :5] = torch.from_numpy(leftover)
    want = ts.sample_chunk(policy.velocity_fn(torch.from_numpy(obs)), noise, ts.JacobianFree(), prev_chunk=prev,
                           inference_delay=1, execute_horizon=3).numpy()
    np.testing.assert_allclose(chunk, want, atol=1e-5)


def test_adapter_validation(policy):
    adapter = TorchChunkPolicy.from_flow_policy(policy, method=ts.RTC())
    obs = np.zeros(OBS_DIM, np.float32)
    with pytest.raises(ValueError, match=r"prev_chunk_leftover must have shape \[L <= 8, 3\]"):
        adapter(obs, np.zeros((H + 1, ACTION_DIM)), 1, 3)
    with pytest.raises(ValueError, match=r"prev_chunk_leftover must have shape"):
        adapter(obs, np.zeros((4, ACTION_DIM + 1)), 1, 3)
    with pytest.raises(ValueError, match=r"prev_chunk_leftover must have shape"):
        adapter(obs, np.zeros(ACTION_DIM), 1, 3)
    # An empty leftover is no leftover: Naive.
    empty = TorchChunkPolicy.from_flow_policy(policy, method=ts.RTC(), seed=5)(obs, np.zeros((0, ACTION_DIM)), 2, 3)
    naive = TorchChunkPolicy.from_flow_policy(policy, method=ts.Naive(), seed=5)(obs, None, 2, 3)
    np.testing.assert_array_equal(empty, naive)
    with pytest.raises(ValueError, match=r"execute_horizon must be an integer in \[1, horizon=8\]"):
        adapter(obs, None, 1, 0)
    with pytest.raises(ValueError, match="told_delay must be an integer >= 0"):
        adapter(obs, None, -1, 3)
    with pytest.raises(ValueError, match="method must be a rtchunk.torch method"):
        TorchChunkPolicy(policy.velocity_fn, horizon=H, action_dim=ACTION_DIM, method="rtc")
    with pytest.raises(ValueError, match="time_convention must be one of"):
        TorchChunkPolicy(policy.velocity_fn, horizon=H, action_dim=ACTION_DIM, method=ts.RTC(), time_convention="x")
