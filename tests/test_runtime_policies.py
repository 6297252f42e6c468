"""The FlowPolicy adapter: one compilation for every leftover length, the sampler's semantics, and a run
of the runtime with a real (tiny, untrained) flow policy."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from rtchunk import BID, RTC, FlowPolicy, ModelConfig, Naive, TrainedPrefix
from rtchunk.runtime import Paper, Runtime, RuntimeConfig, SimulatedClock, WithExtraLatency, flow_policy_fn

H, OBS, ACT = 8, 3, 2
TINY = ModelConfig(channel_dim=32, channel_hidden_dim=32, token_hidden_dim=8, num_layers=1, horizon=H)


@pytest.fixture(scope="module")
def flow_policy():
    return FlowPolicy(OBS, ACT, TINY, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def trained_prefix(flow_policy):
    return flow_policy_fn(flow_policy, TrainedPrefix(), num_steps=3)


def leftover_of(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, ACT)).astype(np.float32)


def test_compiles_once_for_every_leftover_length_and_keeps_the_prefix(trained_prefix):
    obs = np.ones(OBS, np.float32)
    first = trained_prefix(obs, None, 0, None)
    assert first.shape == (H, ACT) and first.dtype == np.float32 and np.isfinite(first).all()
    for n, d in [(7, 3), (5, 5), (3, 0), (1, 1), (0, 0)]:
        left = leftover_of(n, seed=n)
        chunk = trained_prefix(obs, left, d, H - n)
        assert chunk.shape == (H, ACT) and np.isfinite(chunk).all()
        np.testing.assert_array_equal(chunk[:d], left[:d])  # training-time RTC keeps the prefix exactly
    assert trained_prefix.compiled_variants == 1


def test_noise_differs_per_call_and_is_reproducible_from_the_seed(flow_policy):
    a = flow_policy_fn(flow_policy, Naive(), num_steps=2, seed=3)
    b = flow_policy_fn(flow_policy, Naive(), num_steps=2, seed=3)
    obs = np.zeros(OBS, np.float32)
    a1, a2 = a(obs, None, 0, None), a(obs, None, 0, None)
    b1 = b(obs, None, 0, None)
    np.testing.assert_array_equal(a1, b1)
    assert not np.allclose(a1, a2)


def test_rtc_pulls_the_frozen_prefix_towards_the_leftover(flow_policy):
    obs = np.full(OBS, 0.5, np.float32)
    left = leftover_of(5, seed=1)
    d = 3
    rtc = flow_policy_fn(flow_policy, RTC(), num_steps=3, seed=0)(obs, left, d, H - 5)
    naive = flow_policy_fn(flow_policy, Naive(), num_steps=3, seed=0)(obs, left, d, H - 5)
    err = lambda chunk: np.abs(chunk[:d] - left[:d]).mean()  # noqa: E731
    assert err(rtc) < 0.5 * err(naive)


def test_bid_gets_a_fresh_key_per_call(flow_policy):
    bid = flow_policy_fn(flow_policy, BID(rng=jax.random.key(0), num_samples=2), num_steps=2)
    obs = np.zeros(OBS, np.float32)
    left = leftover_of(4)
    c1, c2 = bid(obs, left, 2, H - 4), bid(obs, left, 2, H - 4)
    assert c1.shape == (H, ACT) and not np.allclose(c1, c2) and bid.compiled_variants == 1


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros(OBS + 1), None, 0, None), "observation"),
        ((np.zeros(OBS), leftover_of(H), 0, 0), "prev_chunk_leftover"),
        ((np.zeros(OBS), leftover_of(4)[:, :1], 0, 4), "prev_chunk_leftover"),
        ((np.zeros(OBS), leftover_of(4), 0, 3), "execute_horizon"),
        ((np.zeros(OBS), leftover_of(4), 5, 4), "told_delay"),
    ],
)
def test_bad_inputs_are_rejected(trained_prefix, args, match):
    with pytest.raises(ValueError, match=match):
        trained_prefix(*args)


def test_told_delay_is_checked_against_the_methods_bound(flow_policy):
    """rtchunk.methods.told_delay_bound: H - s for a method that freezes a prefix (above), H for Naive."""
    naive = flow_policy_fn(flow_policy, Naive(), num_steps=2, seed=3)
    obs = np.zeros(OBS, np.float32)
    assert naive(obs, leftover_of(4), H, H - 4).shape == (H, ACT)
    with pytest.raises(ValueError, match=r"told_delay must be in \[0, .*= 8\], got 9"):
        naive(obs, leftover_of(4), H + 1, H - 4)
    assert naive.compiled_variants == 1


def test_runtime_with_a_real_flow_policy(trained_prefix):
    """Every swapped-in chunk begins with exactly the d actions that executed while it was computed."""
    calls = []

    def spy(obs, left, d, s):
        chunk = trained_prefix(obs, left, d, s)
        calls.append((left, d, chunk))
        return chunk

    class Robot:
        def observe(self):
            return np.linspace(-1, 1, OBS).astype(np.float32)

        def act(self, action):
            pass

    config = RuntimeConfig(replan=Paper(s_min=3), initial_delay=2)
    tel = Runtime(spy, config, robot=Robot(), clock=SimulatedClock(2)).run(ticks=40)
    events = tel.inferences
    assert len(events) >= 10 and all(e.status == "ok" and e.actual_delay == e.told_delay == 2 for e in events)
    for (left, d, chunk), event in zip(calls[1:], events):
        np.testing.assert_array_equal(chunk[:d], left[:d])
        # The actions executed during that inference came from the old chunk and equal the new one's prefix.
        during = (tel.tick > event.start_tick) & (tel.tick <= event.end_tick)
        np.testing.assert_allclose(tel.actions[during], chunk[:d])
    assert not tel.starved.any() and trained_prefix.compiled_variants == 1


def test_extra_latency_wraps_any_policy():
    inner = lambda *args: np.zeros((H, ACT), np.float32)  # noqa: E731
    wrapped = WithExtraLatency(inner, 0.001)
    np.testing.assert_array_equal(wrapped(None, None, 0, None), np.zeros((H, ACT)))
    assert wrapped.last_call_timing is None  # the inner policy reports none
    with pytest.raises(ValueError, match="extra_s"):
        WithExtraLatency(inner, -0.1)
