"""The runtime's schedule in virtual time (SimulatedClock): exact, reproducible sequences.

Action values name their origin (see runtime_fakes.InpaintingFake): 0..9 are a0..a9 of the first chunk,
x.5 is an inpainted (primed) action, 100 k + i is a fresh action of the k-th background chunk.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from runtime_fakes import H, InpaintingFake, Scripted

from rtchunk import prefix_weights
from rtchunk.delays import FixedEstimator, MaxEstimator, MixtureDelay, QuantileEstimator
from rtchunk.methods import RTC, Naive, TrainedPrefix, told_delay_bound
from rtchunk.runtime import Paper, Queue, Runtime, RuntimeConfig, SimulatedClock, SinceSwap


def obs_at(tick: int) -> np.ndarray:
    return np.array([tick, 0.0], np.float32)  # the observation remembers when it was taken


def drive(policy, replan, ticks, *, latency=3, initial_delay=3, fallback=None, observations=obs_at, seed=0, **config):
    config = {"control_period_s": 1.0, **config}
    rt = Runtime(policy, RuntimeConfig(replan=replan, initial_delay=initial_delay, **config),
                 clock=SimulatedClock(latency, seed=seed), fallback=fallback)
    rt.start(obs_at(0))
    executed = [float(rt.get_action(observations(t))[0]) for t in range(1, ticks + 1)]
    assert rt.stop()
    return executed, rt.telemetry()


def leftovers(policy):
    return [c[1][:, 0].tolist() for c in policy.background_calls]


# -- the worked example ------------------------------------------------------------------------------


def test_worked_example_since_swap():
    """H = 10, s_min = 4, inference takes 3 ticks, `since_swap` (LeRobot's RTC doc, as in issue 5)."""
    policy = InpaintingFake()
    executed, tel = drive(policy, SinceSwap(s_min=4), 15)

    # a0..a6, then a7' a8' a9' b6 b7 b8 b9 with no pause, then the third chunk from its index 3.
    assert executed == [0, 1, 2, 3, 4, 5, 6, 7.5, 8.5, 9.5, 106, 107, 108, 109, 203]
    assert not tel.starved.any()

    first, second = policy.background_calls
    # T=4: a3 executed, inference starts on that tick's observation with A_prev = [a4..a9], d = 3, s = 4.
    assert first[0].tolist() == [4, 0]
    assert first[1][:, 0].tolist() == [4, 5, 6, 7, 8, 9]
    assert (first[2], first[3]) == (3, 4)
    # T=11: a7' a8' a9' b6 executed since the swap, next inference with A_prev = [b7, b8, b9].
    assert second[0].tolist() == [11, 0]
    assert second[1][:, 0].tolist() == [107, 108, 109]
    assert (second[2], second[3]) == (3, 7)

    # T=7: the new chunk swapped in at index 3 (3 ticks elapsed); a7' is executed at T=8.
    events = tel.inferences
    assert [(e.start_tick, e.end_tick, e.actual_delay, e.status) for e in events] == [(4, 7, 3, "ok"), (11, 14, 3, "ok")]
    t8 = int(np.flatnonzero(tel.tick == 8)[0])
    assert (tel.chunk_id[t8], tel.chunk_index[t8], tel.switched[t8]) == (1, 3, True)

    # The weights the sampler gets for (d = 3, s = 4): frozen [0:3], the paper's Eq. 5 over [3:6), 0 after.
    w = np.asarray(prefix_weights(first[2], H - first[3], H, "exp"))
    np.testing.assert_allclose(w[:3], 1.0)
    np.testing.assert_allclose(w[3:6], [0.49, 0.19, 0.04], atol=5e-3)
    np.testing.assert_allclose(w[6:], 0.0)
    # The doc's c * e^(c-1) / (e-1) gives other soft weights; we use the paper's.
    c = np.array([3, 2, 1]) / 4
    doc = c * np.exp(c - 1) / (math.e - 1)
    np.testing.assert_allclose(doc, [0.34, 0.18, 0.07], atol=5e-3)
    assert not np.allclose(w[3:6], doc, atol=0.05)


def test_paper_condition_on_the_worked_example():
    """Algorithm 1 counts from the chunk's start (index 0 = the tick after the inference began), so after
    the swap at index 3 it replans one tick later, every 4 ticks, with s = 4 each time."""
    policy = InpaintingFake()
    executed, tel = drive(policy, Paper(s_min=4), 16)
    assert executed == [0, 1, 2, 3, 4, 5, 6, 7.5, 8.5, 9.5, 106, 107.5, 108.5, 109.5, 206, 207.5]
    assert [(e.start_tick, e.end_tick, e.actual_delay) for e in tel.inferences] == [(4, 7, 3), (8, 11, 3), (12, 15, 3)]
    assert [c[3] for c in policy.background_calls[:3]] == [4, 4, 4]
    assert leftovers(policy)[:3] == [[4, 5, 6, 7, 8, 9], [8.5, 9.5, 106, 107, 108, 109], [108.5, 109.5, 206, 207, 208, 209]]
    assert not tel.starved.any()


def test_queue_condition():
    """LeRobot's queue rule: replan when at most `threshold` actions are left in the chunk."""
    policy = InpaintingFake()
    executed, tel = drive(policy, Queue(threshold=5), 18)
    assert executed == [0, 1, 2, 3, 4, 5, 6, 7, 8.5, 9.5, 105, 106, 107, 108.5, 109.5, 205, 206, 207]
    assert [(e.start_tick, e.end_tick) for e in tel.inferences] == [(5, 8), (10, 13), (15, 18)]
    assert leftovers(policy) == [[5, 6, 7, 8, 9], [105, 106, 107, 108, 109], [205, 206, 207, 208, 209]]
    assert [(c[2], c[3]) for c in policy.background_calls] == [(3, 5)] * 3


def test_zero_latency_is_synchronous():
    """An inference of 0 ticks swaps in before the next action: the new chunk is entered at index 0."""
    policy = InpaintingFake()
    executed, tel = drive(policy, Paper(s_min=4), 9, latency=0, initial_delay=0)
    assert executed == [0, 1, 2, 3, 4.5, 5.5, 6.5, 7.5, 9.0]
    assert [(e.start_tick, e.end_tick, e.actual_delay, e.told_delay) for e in tel.inferences] == [(4, 4, 0, 0), (8, 8, 0, 0)]


# -- delay estimation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "estimator, expected",
    [
        (MaxEstimator(window=2), [0, 1, 4, 4, 2, 2]),
        (QuantileEstimator(q=0.5, window=3), [0, 1, 1, 2, 2, 2]),
        (FixedEstimator(delay=2), [2, 2, 2, 2, 2, 2]),
    ],
)
def test_estimate_follows_observed_delays(estimator, expected):
    latencies = [1, 4, 2, 2, 2, 2]
    policy = InpaintingFake()
    _, tel = drive(policy, Paper(s_min=3), 30, latency=lambda k: latencies[min(k, 5)], initial_delay=0, estimator=estimator)
    events = tel.inferences[:6]
    assert [e.actual_delay for e in events] == latencies
    assert [e.estimate for e in events] == expected
    assert [e.told_delay for e in events] == [c[2] for c in policy.background_calls[:6]] == expected
    if isinstance(estimator, MaxEstimator):  # the paper's rule, as a property: max of the last b delays
        history = [0] + latencies
        assert all(e.estimate == max(history[max(0, k + 1 - 2) : k + 1]) for k, e in enumerate(events))


def test_delay_profile_latency_is_reproducible():
    profile = MixtureDelay(delays=(1, 2, 3), probs=(0.3, 0.4, 0.3), spike_delay=6, spike_prob=0.1)
    run = lambda: drive(InpaintingFake(), Paper(s_min=2), 60, latency=profile, seed=7)  # noqa: E731
    (a1, t1), (a2, t2) = run(), run()
    assert a1 == a2
    assert [(e.start_tick, e.end_tick) for e in t1.inferences] == [(e.start_tick, e.end_tick) for e in t2.inferences]
    assert {e.actual_delay for e in t1.inferences} <= {1, 2, 3, 6}
    assert len({e.actual_delay for e in t1.inferences}) > 1


# -- faults ------------------------------------------------------------------------------------------


def test_slow_inference_holds_last_action_and_aligns_late_chunk():
    """Inference (9 ticks) outlives the chunk: hold a9, count starvation, enter the late chunk at index 9."""
    policy = InpaintingFake()
    executed, tel = drive(policy, SinceSwap(s_min=4), 18, latency=lambda k: [9, 1][k])
    assert executed == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 109, 109, 109, 109, 109]
    assert tel.starved.tolist() == [False] * 10 + [True] * 3 + [False] + [True] * 4
    first = tel.inferences[0]
    assert (first.start_tick, first.end_tick, first.actual_delay) == (4, 13, 9)
    assert tel.chunk_index[13] == 9 and tel.chunk_id[13] == 1  # T=14: index 9 of the late chunk
    summary = tel.summary()
    assert summary["starvation_ticks"] == 7
    assert summary["late_chunks"] == 2  # the second one too: it continued an empty leftover
    # The next inference starts past the chunk's end: nothing left to continue, so no frozen prefix.
    _, leftover, delay, s = policy.background_calls[1]
    assert (leftover.shape, delay, s) == ((0, 1), 0, H)
    assert tel.inferences[1].estimate == 9  # max(3, 9); told 0, all that is left


def test_chunk_arriving_past_its_end_holds_the_old_chunks_last_action():
    """Inference takes 12 ticks >= H: the chunk is entered at index 12, past its end (rtchunk.execution).
    The controller keeps holding a9, the last action it executed, never the new chunk's last entry (109),
    counts those ticks as starved, and resumes with the chunk after it at its own elapsed delay."""
    policy = InpaintingFake()
    executed, tel = drive(policy, SinceSwap(s_min=4), 24, latency=lambda k: [12, 1][min(k, 1)])
    assert executed == list(range(10)) + [9] * 11 + [201, 202, 203]
    assert 109 not in executed
    assert tel.starved.tolist() == [False] * 10 + [True] * 11 + [False] * 3
    late, next_ = tel.inferences[:2]
    assert (late.start_tick, late.end_tick, late.actual_delay, late.told_delay) == (4, 16, 12, 3)
    # T=17..20: the late chunk is current (swapped in after T=16) but already used up.
    t17 = int(np.flatnonzero(tel.tick == 17)[0])
    assert (tel.chunk_id[t17], tel.chunk_index[t17]) == (-1, 12)
    # The next inference had nothing left to continue; it swaps in after T=21, entered at index 1.
    _, leftover, delay, s = policy.background_calls[1]
    assert (leftover.shape, delay, s) == ((0, 1), 0, H)
    assert (next_.start_tick, next_.end_tick, next_.actual_delay, next_.estimate) == (20, 21, 1, 12)
    t22 = int(np.flatnonzero(tel.tick == 22)[0])
    assert (tel.chunk_id[t22], tel.chunk_index[t22], tel.switched[t22]) == (2, 1, True)
    summary = tel.summary()
    assert (summary["starvation_ticks"], summary["late_chunks"], summary["swaps"]) == (11, 2, 2)


class FreshChunks:
    """A policy that ignores the previous chunk (so any told delay is fine) and says which method it samples."""

    horizon = H

    def __init__(self, method):
        if method is not None:
            self.method = method
        self.calls = []

    def __call__(self, observation, leftover, delay, execute_horizon):
        self.calls.append((None if leftover is None else len(leftover), delay, execute_horizon))
        return (100.0 * len(self.calls) + np.arange(H, dtype=np.float32))[:, None]


@pytest.mark.parametrize("method", [None, RTC(), TrainedPrefix(), Naive()])
def test_told_delay_is_bounded_by_the_policys_method(method):
    """The estimate (8) is bounded by rtchunk.methods.told_delay_bound: H - s = len(A_prev) for a method that
    freezes a prefix or a policy without .method, H for one that does not."""
    policy = FreshChunks(method)
    _, tel = drive(policy, Paper(s_min=4), 30, latency=1, estimator=FixedEstimator(delay=8))
    calls = policy.calls[1:]
    assert len(calls) >= 5 and [c[2] for c in calls] == [4] * len(calls)
    expected = 8 if isinstance(method, Naive) else 6
    assert [c[1] for c in calls] == [e.told_delay for e in tel.inferences] == [expected] * len(calls)
    assert all(e.told_delay == min(e.estimate, told_delay_bound(method, H, e.execute_horizon)) for e in tel.inferences)


def test_fallback_replaces_holding():
    executed, tel = drive(InpaintingFake(), SinceSwap(s_min=4), 16, latency=9,
                          fallback=lambda last: np.full_like(last, -1.0))
    assert executed == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -1, -1, -1, 109, -1, -1]
    assert tel.summary()["starvation_ticks"] == 5


def test_inference_error_is_logged_and_retried_with_backoff(caplog):
    policy = Scripted(["raise", "raise", "ok"])
    with caplog.at_level(logging.WARNING, logger="rtchunk.runtime"):
        executed, tel = drive(policy, SinceSwap(s_min=4), 22, retry_backoff_s=2.0, max_retry_backoff_s=8.0)
    assert sum("simulated inference failure" in r.getMessage() for r in caplog.records) == 2
    # Fails at T=7 -> retry at 7 + 2 = T9; fails at T=12 -> retry at 12 + 4 = T16; swaps at T=19.
    assert [(e.status, e.start_tick, e.end_tick) for e in tel.inferences] == [
        ("error", 4, 7), ("error", 9, 12), ("ok", 16, 19)]
    assert "simulated inference failure" in tel.inferences[0].error
    # The controller kept executing what it had (a0..a9, then held a9) and never stopped ticking.
    assert executed[:19] == list(range(10)) + [9] * 9
    assert executed[19] == 300 + 3  # third background chunk, entered 3 ticks in
    summary = tel.summary()
    assert (summary["inference_errors"], summary["swaps"], summary["ticks"]) == (2, 1, 22)


def test_invalid_policy_output_is_rejected_and_previous_chunk_kept(caplog):
    policy = Scripted(["nan", "shape", "type", "ok"])
    with caplog.at_level(logging.WARNING, logger="rtchunk.runtime"):
        executed, tel = drive(policy, SinceSwap(s_min=4), 24, retry_backoff_s=1.0, max_retry_backoff_s=2.0)
    # Backoff 1, 2, then capped at 2 ticks (1 s per tick here).
    assert [(e.status, e.start_tick) for e in tel.inferences] == [
        ("invalid_output", 4), ("invalid_output", 8), ("invalid_output", 13), ("ok", 18)]
    assert "NaN" in tel.inferences[0].error and "shape" in tel.inferences[1].error and "list" in tel.inferences[2].error
    assert executed[:21] == list(range(10)) + [9] * 11  # nothing from a rejected chunk was ever executed
    assert executed[21] == 403
    assert tel.summary()["invalid_outputs"] == 3


def test_invalid_observations_are_rejected_and_never_reach_the_policy():
    bad = {4: np.array([np.nan, 0.0], np.float32), 5: np.zeros(3, np.float32), 6: {"x": np.zeros(2)}}
    policy = InpaintingFake()
    executed, tel = drive(policy, SinceSwap(s_min=4), 12, observations=lambda t: bad.get(t, obs_at(t)))
    assert [t for t, _ in tel.rejected_observations] == [4, 5, 6]
    reasons = [r for _, r in tel.rejected_observations]
    assert "NaN" in reasons[0] and "shape" in reasons[1] and "mapping" not in reasons[1]
    assert len(policy.background_calls) == 1
    first = policy.background_calls[0]
    assert first[0].tolist() == [7, 0] and first[1][:, 0].tolist() == [7, 8, 9] and first[3] == 7
    assert executed == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 103, 104]  # swapped in at T=10, entered at index 3
    assert tel.summary()["rejected_observations"] == 3


def test_runs_are_exactly_reproducible():
    a = drive(Scripted(["ok", "raise", "nan"]), Paper(s_min=2), 40, latency=lambda k: 1 + k % 4)
    b = drive(Scripted(["ok", "raise", "nan"]), Paper(s_min=2), 40, latency=lambda k: 1 + k % 4)
    assert a[0] == b[0]
    strip = lambda t: [(e.status, e.start_tick, e.end_tick, e.told_delay, e.actual_delay) for e in t.inferences]  # noqa: E731
    assert strip(a[1]) == strip(b[1])


# -- configuration errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Paper(s_min=0), "s_min"),
        (lambda: SinceSwap(s_min=1.5), "s_min"),
        (lambda: Queue(threshold=-1), "threshold"),
        (lambda: RuntimeConfig(replan=Paper(2), control_period_s=0.0), "control_period_s"),
        (lambda: RuntimeConfig(replan=Paper(2), initial_delay=-1), "initial_delay"),
        (lambda: RuntimeConfig(replan=Paper(2), retry_backoff_s=math.inf), "retry_backoff_s"),
        (lambda: SimulatedClock(-1), "inference_ticks"),
        (lambda: Runtime("not a policy", RuntimeConfig(replan=Paper(2))), "policy"),
    ],
)
def test_bad_configuration_is_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("replan, match", [(Paper(s_min=11), "s_min"), (Queue(threshold=10), "threshold")])
def test_condition_must_fit_the_horizon(replan, match):
    rt = Runtime(InpaintingFake(), RuntimeConfig(replan=replan), clock=SimulatedClock(1))
    with pytest.raises(ValueError, match=match):
        rt.start(obs_at(0))


def test_unusable_first_chunk_is_an_error():
    rt = Runtime(lambda *a: np.full((H, 1), np.nan), RuntimeConfig(replan=Paper(2)), clock=SimulatedClock(1))
    with pytest.raises(ValueError, match="first policy call"):
        rt.start(obs_at(0))
    rt = Runtime(InpaintingFake(), RuntimeConfig(replan=Paper(2)), clock=SimulatedClock(1))
    with pytest.raises(ValueError, match="initial observation"):
        rt.start(np.array([np.inf, 0.0]))


def test_first_call_has_no_previous_chunk():
    policy = InpaintingFake()  # has .horizon, like FlowChunkPolicy and rtchunk.torch.TorchChunkPolicy
    Runtime(policy, RuntimeConfig(replan=Paper(2)), clock=SimulatedClock(1)).start(obs_at(0)).stop()
    assert policy.calls[0][1:] == (None, 0, H)
    seen = []

    def plain(observation, leftover, delay, execute_horizon):
        seen.append((leftover, delay, execute_horizon))
        return np.zeros((H, 1))

    Runtime(plain, RuntimeConfig(replan=Paper(2)), clock=SimulatedClock(1)).start(obs_at(0)).stop()
    assert seen == [(None, 0, None)]


def test_fallback_of_the_wrong_shape_is_an_error():
    rt = Runtime(InpaintingFake(), RuntimeConfig(replan=SinceSwap(4)), clock=SimulatedClock(20),
                 fallback=lambda last: np.zeros(3))
    rt.start(obs_at(0))
    for t in range(1, 11):
        rt.get_action(obs_at(t))
    with pytest.raises(ValueError, match="fallback returned shape"):
        rt.get_action(obs_at(11))
    rt.stop()
