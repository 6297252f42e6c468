"""Execution semantics of the delay harness, checked exactly with a scripted policy on a counter environment.

The scripted policy writes (chunk id, index, told delay) into every action, so each executed action says
which chunk and index it came from; a plain-Python controller replays the papers' Algorithm 1 from the
delays the harness recorded and must agree step for step. The counter environment has no physics, so
these tests compile in seconds.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from rtchunk import delays, metrics
from rtchunk.methods import RTC, told_delay_bound
from rtchunk.kinetix import chunk_fns
from rtchunk.kinetix import harness as ev

H = 4
T = 40
WINDOW = 3


@struct.dataclass
class CounterState:
    t: jax.Array
    ret: jax.Array


class CounterEnv:
    """obs = [steps into the episode]; an episode lasts ``level`` steps and is solved if the summed first
    action dimension (the scripted chunk ids) is odd."""

    obs_dim = 1
    action_dim = 4

    def reset(self, rng, level):
        return jnp.zeros(1), CounterState(jnp.int32(0), jnp.float32(0))

    def step(self, rng, state, action, level):
        t = state.t + 1
        ret = state.ret + action[0]
        done = t >= level
        info = {"returned_episode": done, "returned_episode_returns": ret, "returned_episode_lengths": t,
                "returned_episode_solved": done & (jnp.mod(ret, 2) == 1)}
        nxt = CounterState(jnp.where(done, 0, t), jnp.where(done, 0.0, ret))
        return jnp.asarray([nxt.t], jnp.float32), nxt, action[0], done, info


ENV = CounterEnv()
BASE = ev.HarnessConfig(num_envs=8, horizon=H, rollout_steps=T, estimator=delays.MaxEstimator(WINDOW))


def run(profile, s, config=BASE, level=T, initial_estimate=None, seed=0, told_max=None):
    spec = ev.delay_spec(profile, s, config.horizon, initial_estimate, told_max)
    return ev.rollout(ENV, jnp.int32(level), chunk_fns.scripted_chunk_fn, None, spec, jax.random.key(seed), config)


def reference(delays_seq, s, horizon, told_max, initial, execution="latest", decay=0.01, steps=T):
    """Algorithm 1 in plain Python: per step (id, index or averaged id, starved, cycle start, told delay).

    Chunks are ordered by ``seq`` (launch order); ``id`` is what the scripted policy writes: one more than
    the id at index 0 of the previous chunk it was given."""
    chunks = [{"seq": 1, "id": 1, "origin": 0, "arrival": 0}]
    history = [initial] * WINDOW
    next_start, k, last, out = 0, 0, None, []
    for t in range(steps):
        told = None
        if t == next_start:
            d = delays_seq[k]
            k += 1
            told = min(max(history[-WINDOW:]), told_max)
            history.append(d)
            newest = max(chunks, key=lambda c: c["seq"])
            offset = t - newest["origin"]
            # Past its end the previous chunk is what the controller will hold: that chunk's last entry, or,
            # when it ran out already (or arrived stale), the action executed last.
            chunks.append({"seq": len(chunks) + 1, "id": (newest["id"] if offset < horizon else last[0]) + 1,
                           "origin": t, "arrival": t + d, "told": told, "prev_offset": offset,
                           "held_index": last[1] if last is not None and len(last) > 1 else None})
            next_start = t + max(s, d)
        arrived = [c for c in chunks if c["arrival"] <= t]
        if execution == "latest":
            c = max(arrived, key=lambda c: c["seq"])
            index = t - c["origin"]
            starved = index >= horizon
            if "prev_offset" not in c:
                prev_index = -1
            elif c["prev_offset"] + index < horizon:
                prev_index = c["prev_offset"] + index
            else:
                prev_index = horizon - 1 if c["prev_offset"] < horizon else c["held_index"]
            # A chunk that has run out (or arrived past its end) is not executed: the last action is held.
            value = last if starved else (c["id"], index, prev_index)
        else:
            covering = [c for c in arrived if t - c["origin"] < horizon]
            starved = not covering
            if starved:
                value = last
            else:
                w = np.array([math.exp(-decay * c["seq"]) for c in covering])
                value = (float(np.dot(w, [c["id"] for c in covering]) / w.sum()),)
        last = value
        out.append((value, starved, told))
    return out


def check_against_reference(rec, s, told_max, initial, execution="latest"):
    action = np.asarray(rec.action)
    for b in range(action.shape[1]):
        starts = np.flatnonzero(rec.cycle_start[:, b])
        ref = reference(list(rec.delay[starts, b]), s, H, told_max, initial, execution)
        ref_starts = [t for t, r in enumerate(ref) if r[2] is not None]
        assert list(starts) == ref_starts, f"env {b}: inference start steps differ"
        assert [r[2] for r in ref if r[2] is not None] == list(rec.told_delay[starts, b]), f"env {b}: told delays"
        for t, (value, starved, _) in enumerate(ref):
            if execution == "latest":
                # (chunk id, index in it, index of the previous chunk the sampler saw at that position)
                assert tuple(action[t, b, [0, 1, 3]]) == value, f"env {b} step {t}"
            else:
                np.testing.assert_allclose(action[t, b, 0], value[0], rtol=1e-6, err_msg=f"env {b} step {t}")
            assert bool(rec.starved[t, b]) == starved, f"env {b} step {t}: starvation"


@pytest.mark.parametrize("d,s", [(0, 1), (1, 1), (2, 3), (1, 4), (2, 1), (3, 2), (5, 2), (6, 1)])
def test_fixed_delays_execute_exactly_algorithm_1(d, s):
    # d > s stretches the cycle to d steps; when d + max(s, d) > H the executing chunk runs out first.
    rec = run(delays.FixedDelay(d), s)
    check_against_reference(rec, s, told_max=H, initial=d)
    if d <= s:  # the papers' case: cycles of exactly s steps, the first d from the previous chunk
        starts = np.flatnonzero(rec.cycle_start[:, 0])
        assert list(starts) == list(range(0, T, s))
        action = np.asarray(rec.action)[:, 0]
        for k, t0 in enumerate(starts):
            # Cycle k launches chunk k + 2 and executes d more actions of chunk k + 1 first.
            stop = min(t0 + s, T)
            assert list(action[t0 : min(t0 + d, stop), 0]) == [k + 1] * (min(t0 + d, stop) - t0)
            assert list(action[t0 + d : stop, 0]) == [k + 2] * max(stop - t0 - d, 0)
            assert list(action[t0 + d : stop, 1]) == list(range(d, d + max(stop - t0 - d, 0)))
    assert rec.starved.any() == (d + max(s, d) > H)


def test_stochastic_delays_per_environment_per_chunk():
    profile = delays.MixtureDelay((0, 1, 2), (0.3, 0.4, 0.3), spike_delay=6, spike_prob=0.2)
    rec = run(profile, 2)
    check_against_reference(rec, 2, told_max=H, initial=delays.quantile(profile, 0.5))
    first = rec.delay[0]  # every environment starts an inference at step 0
    assert len(set(first.tolist())) > 1, "delays must differ between environments"
    per_env = [rec.delay[rec.cycle_start[:, b], b] for b in range(8)]
    assert all(len(set(d.tolist())) > 1 for d in per_env), "delays must differ between chunks"
    assert rec.starved.any() and (rec.delay[rec.cycle_start] == 6).any()
    # Stretched cycles desynchronise the environments; every one still follows its own delays (above).
    assert not (rec.cycle_start == rec.cycle_start[:, :1]).all()


def test_told_delay_is_clipped_for_methods_that_freeze_the_overlap():
    profile = delays.MixtureDelay((1, 3), (0.5, 0.5))
    rec = run(profile, 2, initial_estimate=3, told_max=told_delay_bound(RTC(), H, 2))
    check_against_reference(rec, 2, told_max=H - 2, initial=3)
    told = rec.told_delay[rec.cycle_start]
    assert told.max() == H - 2
    m = ev.summarize(rec, H, 2)
    d = rec.delay[rec.cycle_start & ev.first_episode_mask(rec.done)]
    assert m["p_violate"] == pytest.approx(np.mean(d > H - 2)) and m["p_violate"] > 0


def test_a_chunk_arriving_past_its_end_holds_the_last_executed_action():
    """The stale-chunk rule (rtchunk.execution): with actual delays >= H every chunk arrives when its own
    last index has already passed, so the controller keeps the action it executed last (the end of the
    chunk before) and every such step counts as starved."""
    for d, s in ((H, 1), (H + 2, 2)):
        rec = run(delays.FixedDelay(d), s)
        action, starved = np.asarray(rec.action), np.asarray(rec.starved)
        check_against_reference(rec, s, told_max=H, initial=d)
        # The first chunk runs 0 .. H-1; from then on no chunk ever has an index left when it arrives.
        assert not starved[:H].any() and starved[H:].all()
        held = action[H:, :, :2]
        np.testing.assert_array_equal(held, np.broadcast_to(action[H - 1, :, :2], held.shape))
        assert (action[H - 1, :, 0] == 1).all() and (action[H - 1, :, 1] == H - 1).all()  # chunk 1, index H-1
        assert not rec.switched[H:].any()  # a held action still comes from the chunk it was executed from
        m = ev.summarize(rec, H, s)
        assert m["starvation_steps"] == (T - H) * 8 and m["starvation_rate"] == (T - H) / T


def test_temporal_ensembling_averages_covering_chunks():
    config = dataclasses.replace(BASE, execution="ensemble", ensemble_decay=0.5)
    for profile, s in ((delays.FixedDelay(1), 1), (delays.MixtureDelay((0, 2, 5), (0.5, 0.3, 0.2)), 2)):
        rec = run(profile, s, config=config)
        action = np.asarray(rec.action)
        for b in range(action.shape[1]):
            starts = np.flatnonzero(rec.cycle_start[:, b])
            ref = reference(list(rec.delay[starts, b]), s, H, H, delays.quantile(profile, 0.5), "ensemble", 0.5)
            np.testing.assert_allclose(action[:, b, 0], [r[0][0] for r in ref], rtol=1e-6)
            assert list(rec.starved[:, b]) == [r[1] for r in ref]
        assert (action[..., 0] != np.round(action[..., 0])).any(), "overlapping chunks must be averaged"


def test_first_episode_statistics_and_metrics():
    level = 7
    rec = run(delays.FixedDelay(1), 2, level=level)
    assert (rec.first_length == level).all() and rec.first_done.all()
    ids = np.asarray(rec.action)[:level, :, 0]
    np.testing.assert_allclose(rec.first_return, ids.sum(0))
    np.testing.assert_array_equal(rec.first_solved, ids.sum(0) % 2 == 1)
    valid = ev.first_episode_mask(rec.done)
    assert valid.sum(0).tolist() == [level] * 8
    m = ev.summarize(rec, H, 2)
    k = int(np.sum(rec.first_solved))
    assert m["solve_rate"] == k / 8 and (m["solve_rate_low"], m["solve_rate_high"]) == metrics.wilson_interval(k, 8)
    assert m["chunks"] == int((rec.cycle_start & valid).sum()) == 8 * 4  # starts at 0, 2, 4, 6
    assert m["d_p50"] == m["d_p99"] == 1 and m["starvation_steps"] == 0
    actions = np.swapaxes(np.asarray(rec.action), 0, 1)[:, :level]
    assert m["max_delta_action"] == pytest.approx(metrics.smoothness(actions)["max_delta_action"])
    jumps = metrics.seam_jumps(actions, np.asarray(rec.switched).T[:, :level])
    assert m["seam_jump_mean"] == pytest.approx(jumps.mean())


def test_results_do_not_depend_on_the_number_of_devices():
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 JAX devices (tests/conftest.py asks XLA for 2 CPU devices)")
    profile = delays.MixtureDelay((0, 1, 3), (0.4, 0.4, 0.2))
    one = run(profile, 2, config=dataclasses.replace(BASE, max_devices=1))
    two = run(profile, 2)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_array_equal(a, b)
    assert ev.compiled_rollout(ENV, chunk_fns.scripted_chunk_fn, BASE)[1] == 2


def test_one_compile_serves_every_delay_and_execute_horizon():
    fn, _ = ev.compiled_rollout(ENV, chunk_fns.scripted_chunk_fn, BASE)
    before = fn._cache_size()
    for d, s in ((0, 1), (2, 2), (4, 3)):
        run(delays.FixedDelay(d), s)
    assert fn._cache_size() == max(before, 1)


def _reversed_chunk_fn(params, obs, noise, prev_chunk, inference_delay, execute_horizon, rng):
    """The scripted policy's chunk played backwards: a second, different policy for the switch."""
    return chunk_fns.scripted_chunk_fn(params, obs, noise, prev_chunk, inference_delay, execute_horizon, rng)[:, ::-1]


def test_a_switched_rollout_runs_exactly_the_chosen_policy():
    switched = chunk_fns.switched_chunk_fn((chunk_fns.scripted_chunk_fn, _reversed_chunk_fn))
    assert switched is chunk_fns.switched_chunk_fn((chunk_fns.scripted_chunk_fn, _reversed_chunk_fn))  # one object, one compile
    spec = ev.delay_spec(delays.MixtureDelay((0, 1, 3), (0.4, 0.4, 0.2)), 2, H, told_max=H - 2)
    fn, _ = ev.compiled_rollout(ENV, switched, BASE)
    for index, plain in enumerate((chunk_fns.scripted_chunk_fn, _reversed_chunk_fn)):
        expected = ev.rollout(ENV, jnp.int32(T), plain, None, spec, jax.random.key(5), BASE)
        got = ev.rollout(ENV, jnp.int32(T), switched, chunk_fns.switched_params(index, (None, None)), spec,
                         jax.random.key(5), BASE)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
            np.testing.assert_array_equal(a, b)
    assert fn._cache_size() == 1  # both branches from one compiled program
    with pytest.raises(ValueError, match="one entry per chunk function"):
        ev.rollout(ENV, jnp.int32(T), switched, chunk_fns.switched_params(0, (None,)), spec, jax.random.key(5), BASE)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="execute_horizon"):
        ev.delay_spec(delays.FixedDelay(1), 0, H)
    with pytest.raises(ValueError, match="execute_horizon"):
        ev.delay_spec(delays.FixedDelay(1), H + 1, H)
    with pytest.raises(ValueError, match="told_max"):
        ev.delay_spec(delays.FixedDelay(1), 1, H, told_max=H + 1)
    with pytest.raises(ValueError, match="execution"):
        ev.HarnessConfig(execution="average")
    with pytest.raises(ValueError, match="num_envs"):
        ev.HarnessConfig(num_envs=0)
