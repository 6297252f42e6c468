"""The asynchronous runtime runs a PyTorch policy unchanged: the port of a JAX-trained checkpoint."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import tiny_policy  # noqa: E402

from rtchunk import RTC, Naive, TrainedPrefix, checkpoints  # noqa: E402
from rtchunk.runtime import Paper, Runtime, RuntimeConfig, SimulatedClock  # noqa: E402
from rtchunk.torch import TorchChunkPolicy, load_policy  # noqa: E402

OBS, ACT = 6, 3


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "policy"
    checkpoints.save_policy(directory, tiny_policy(OBS, ACT))
    policy, _ = load_policy(directory)
    return policy


class _Robot:
    def __init__(self):
        self.acted = []

    def observe(self):
        return np.linspace(-1, 1, OBS).astype(np.float32)

    def act(self, action):
        self.acted.append(np.array(action))


def _run(policy, ticks=40):
    calls = []

    def spy(obs, left, d, s):
        chunk = policy(obs, left, d, s)
        calls.append((left, d, chunk))
        return chunk

    robot = _Robot()
    tel = Runtime(spy, RuntimeConfig(replan=Paper(s_min=3), initial_delay=2), robot=robot,
                  clock=SimulatedClock(2)).run(ticks=ticks)
    return tel, calls, robot


def test_trained_prefix_port_through_the_runtime(port):
    policy = TorchChunkPolicy.from_flow_policy(port, method=TrainedPrefix(), num_steps=3)
    tel, calls, robot = _run(policy)
    events = tel.inferences
    assert len(events) >= 10 and all(e.status == "ok" and e.actual_delay == e.told_delay == 2 for e in events)
    for (left, d, chunk), event in zip(calls[1:], events):
        np.testing.assert_array_equal(chunk[:d], left[:d])
        during = (tel.tick > event.start_tick) & (tel.tick <= event.end_tick)
        np.testing.assert_allclose(tel.actions[during], chunk[:d])
    assert not tel.starved.any() and len(robot.acted) == 40


def test_rtc_port_through_the_runtime(port):
    policy = TorchChunkPolicy.from_flow_policy(port, method=RTC(), num_steps=3)
    tel, calls, _ = _run(policy)
    assert all(e.status == "ok" for e in tel.inferences) and not tel.starved.any()
    assert np.isfinite(tel.actions).all()
    # Guidance pulls the frozen prefix towards the leftover it was given, unlike naive sampling.
    _, naive_calls, _ = _run(TorchChunkPolicy.from_flow_policy(port, method=Naive(), num_steps=3))

    def mean_gap(calls):
        return np.mean([np.abs(chunk[:d] - left[:d]).mean() for left, d, chunk in calls[1:] if d])

    assert mean_gap(calls) < 0.5 * mean_gap(naive_calls)
