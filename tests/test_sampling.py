"""Samplers: prefix weights, guidance weight, every method's defining property, validation, jit."""

import functools
import math

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import plain, random_inputs, tiny_policy

import rtchunk
from rtchunk import BID, RTC, HardMask, JacobianFree, Naive, TrainedPrefix, prefix_weights, sample_chunk

H, A, O, B = 8, 3, 6, 4


@pytest.fixture(scope="module")
def setup():
    policy = tiny_policy(O, A)
    obs, noise, prev = random_inputs(B, H, A, O)
    return policy, obs, noise, prev


@pytest.fixture(scope="module")
def sampler(setup):
    """sample_chunk for the tiny policy, jitted once per (method, execute_horizon, num_steps, hint) with the
    weights and the delay as arguments, so the many calls below share compiled code."""
    policy, obs, _, _ = setup
    graphdef, weights = nnx.split(policy)

    @functools.partial(jax.jit, static_argnames=("method", "execute_horizon", "num_steps", "hint"))
    def run(weights, noise, prev_chunk, inference_delay, method, execute_horizon, num_steps, hint):
        fn = nnx.merge(graphdef, weights).velocity_fn(obs)
        return sample_chunk(fn if hint else plain(fn), noise, method, prev_chunk=prev_chunk,
                            inference_delay=inference_delay, execute_horizon=execute_horizon, num_steps=num_steps)

    def call(noise, method, *, prev_chunk=None, inference_delay=0, execute_horizon=None, num_steps=5, hint=True):
        return run(weights, noise, prev_chunk, jnp.asarray(inference_delay, jnp.int32), method, execute_horizon,
                   num_steps, hint)

    return call


# -- prefix weights ----------------------------------------------------------------------------------


def test_prefix_weights_paper_example():
    w = prefix_weights(1, 7, 8, "exp")
    np.testing.assert_allclose(w, [1, 0.677, 0.433, 0.256, 0.133, 0.055, 0.013, 0], atol=5e-4)


def test_prefix_weights_exp_formula_and_linear():
    d, end, h = 2, 6, 10
    c = np.array([(end - i) / (end - d + 1) for i in range(h)])
    exp = np.where(np.arange(h) < d, 1, np.where(np.arange(h) < end, c * (np.exp(c) - 1) / (math.e - 1), 0))
    lin = np.where(np.arange(h) < d, 1, np.where(np.arange(h) < end, c, 0))
    np.testing.assert_allclose(prefix_weights(d, end, h, "exp"), exp, rtol=1e-6)
    np.testing.assert_allclose(prefix_weights(d, end, h, "linear"), lin, rtol=1e-6)
    # The reference docstring example: start=2, end=6, total=10 -> 1 1 4/5 3/5 2/5 1/5 0 0 0 0.
    np.testing.assert_allclose(prefix_weights(2, 6, 10, "linear"), [1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0, 0, 0], atol=1e-6)


def test_prefix_weights_ones_zeros_and_edges():
    np.testing.assert_array_equal(prefix_weights(2, 5, 8, "ones"), [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(prefix_weights(2, 5, 8, "zeros"), [1, 1, 0, 0, 0, 0, 0, 0])
    for schedule in rtchunk.SCHEDULES:
        # start >= end: the prefix is clipped to end; everything below end is frozen.
        np.testing.assert_array_equal(prefix_weights(6, 3, 8, schedule), [1, 1, 1, 0, 0, 0, 0, 0])
        # end = 0: nothing is attended to.
        np.testing.assert_array_equal(prefix_weights(3, 0, 8, schedule), np.zeros(8))
    # d = 0: no frozen prefix; the soft part starts at index 0 with c = end / (end + 1).
    np.testing.assert_allclose(prefix_weights(0, 4, 8, "linear"), [0.8, 0.6, 0.4, 0.2, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(prefix_weights(0, 4, 8, "zeros"), np.zeros(8))


def test_prefix_weights_per_sample_matches_scalar():
    d = jnp.array([0, 1, 3, 5])
    w = prefix_weights(d, 5, 8, "exp")
    assert w.shape == (4, 8)
    for row, di in zip(w, d.tolist()):
        np.testing.assert_array_equal(row, prefix_weights(di, 5, 8, "exp"))


@pytest.mark.parametrize(
    "args, match",
    [((-1, 4, 8, "exp"), "inference_delay"), ((9, 4, 8, "exp"), "inference_delay"), ((1, 9, 8, "exp"), "mask_end"),
     ((1, 4, 8, "cosine"), "schedule"), ((1, 4, 0, "exp"), "horizon")],
)
def test_prefix_weights_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        prefix_weights(*args)


def test_guidance_weight_values():
    beta = 5.0
    # (tau^2 + (1 - tau)^2) / (tau (1 - tau)), clipped at beta, beta at tau = 0.
    np.testing.assert_allclose(rtchunk.guidance_weight(0.0, beta), beta)
    np.testing.assert_allclose(rtchunk.guidance_weight(0.5, beta), 2.0, rtol=1e-6)
    np.testing.assert_allclose(rtchunk.guidance_weight(0.2, beta), (0.04 + 0.64) / 0.16, rtol=1e-6)
    np.testing.assert_allclose(rtchunk.guidance_weight(0.1, beta), beta)
    np.testing.assert_allclose(rtchunk.guidance_weight(0.2, 1.0), 1.0)


# -- methods -----------------------------------------------------------------------------------------


def test_naive_is_plain_euler(setup):
    policy, obs, noise, _ = setup
    fn = policy.velocity_fn(obs)
    x = noise
    for i in range(4):
        x = x + fn(x, jnp.full((B, H), i / 4)) / 4
    np.testing.assert_allclose(sample_chunk(fn, noise, Naive(), num_steps=4), x, atol=1e-5)


def _tiny_mixing_net(params, x, tau):
    """A small network that mixes all tokens, in whatever precision x has."""
    w1, w2, wt = params
    flat = x.reshape(x.shape[0], -1)
    h = jnp.tanh(flat @ w1 + tau.mean(axis=1, keepdims=True) * wt)
    return (h @ w2).reshape(x.shape)


def test_rtc_guidance_matches_finite_differences():
    """One RTC step from tau = 0 is x + v + beta * J^T [W (y - x1_hat)]; recover the correction and compare
    it with central finite differences of the denoiser, per sample, in float64."""
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(0), 6)
        hidden = 16
        params = (
            jax.random.normal(k[0], (H * A, hidden), jnp.float64) * 0.4,
            jax.random.normal(k[1], (hidden, H * A), jnp.float64) * 0.4,
            jax.random.normal(k[2], (hidden,), jnp.float64),
        )
        fn = lambda x, tau: _tiny_mixing_net(params, x, tau)  # noqa: E731
        x0 = jax.random.normal(k[3], (2, H, A), jnp.float64)
        y = jax.random.normal(k[4], (2, H, A), jnp.float64)
        d, s, beta = 2, 3, 5.0
        out = sample_chunk(fn, x0, RTC(max_guidance_weight=beta), prev_chunk=y, inference_delay=d,
                           execute_horizon=s, num_steps=1)
        v = fn(x0, jnp.zeros((2, H)))
        correction = (out - x0 - v) / beta

        w = np.asarray(prefix_weights(d, H - s, H, "exp"))[None, :, None]
        denoise = lambda x: x + fn(x, jnp.zeros((x.shape[0], H)))  # noqa: E731  (tau = 0: x1 = x + v)
        error = w * (np.asarray(y) - np.asarray(denoise(x0)))
        expected = np.zeros_like(np.asarray(x0))
        eps = 1e-6
        for b in range(2):
            for idx in np.ndindex(H, A):
                bump = np.zeros_like(np.asarray(x0))
                bump[(b, *idx)] = eps
                dfx = (np.asarray(denoise(x0 + bump)) - np.asarray(denoise(x0 - bump))) / (2 * eps)
                # Samples are independent: bumping sample b moves only sample b.
                assert np.abs(np.delete(dfx, b, axis=0)).max() == 0
                expected[(b, *idx)] = np.sum(dfx[b] * error[b])
        np.testing.assert_allclose(correction, expected, rtol=1e-6, atol=1e-8)


def test_rtc_uses_the_network_jacobian_per_sample(setup, sampler):
    """The batched VJP equals per-sample J^T e computed with an explicit Jacobian of the FlowPolicy."""
    policy, obs, noise, prev = setup
    fn = policy.velocity_fn(obs)
    d, s, beta = 1, 3, 5.0
    out = sampler(noise, RTC(), prev_chunk=prev, inference_delay=d, execute_horizon=s, num_steps=1)
    v = fn(noise, jnp.zeros((B, H)))
    w = prefix_weights(d, H - s, H, "exp")[None, :, None]
    error = w * (prev - (noise + v))
    for b in range(B):
        def denoise_one(x, b=b):
            return x + policy(obs[b : b + 1], x[None], jnp.zeros((1, H)))[0]

        jac = jax.jacrev(denoise_one)(noise[b])  # [H, A, H, A]
        expected = jnp.einsum("ij,ijkl->kl", error[b], jac)
        np.testing.assert_allclose((out[b] - noise[b] - v[b]) / beta, expected, atol=2e-4)
    jf = sampler(noise, JacobianFree(), prev_chunk=prev, inference_delay=d, execute_horizon=s, num_steps=1)
    assert not np.allclose(out, jf, atol=1e-3), "the VJP must not degenerate to the identity"


def test_hard_mask_is_rtc_with_zeros_schedule(setup, sampler):
    policy, obs, noise, prev = setup
    fn = policy.velocity_fn(obs)
    kw = dict(prev_chunk=prev, inference_delay=2, execute_horizon=3)
    np.testing.assert_array_equal(
        sampler(noise, HardMask(max_guidance_weight=3.0), **kw),
        sampler(noise, RTC(schedule="zeros", max_guidance_weight=3.0), **kw),
    )


def test_guidance_pulls_the_frozen_prefix_towards_prev(setup, sampler):
    policy, obs, noise, prev = setup
    fn = policy.velocity_fn(obs)
    kw = dict(prev_chunk=prev, inference_delay=3, execute_horizon=3)
    naive = sampler(noise, Naive())
    for method in (RTC(), RTC(schedule="linear"), HardMask(), JacobianFree()):
        guided = sampler(noise, method, **kw)
        assert jnp.abs(guided[:, :3] - prev[:, :3]).mean() < 0.2 * jnp.abs(naive[:, :3] - prev[:, :3]).mean()


def test_trained_prefix_is_exact_and_sees_clean_prefix(setup, sampler):
    policy, obs, noise, prev = setup
    fn = policy.velocity_fn(obs)
    for d in (0, 2, 5):
        out = sampler(noise, TrainedPrefix(), prev_chunk=prev, inference_delay=d, execute_horizon=3)
        np.testing.assert_array_equal(out[:, :d], prev[:, :d])
    np.testing.assert_allclose(
        sampler(noise, TrainedPrefix(), prev_chunk=prev, inference_delay=0), sampler(noise, Naive()), atol=1e-5
    )
    # Per-sample delays: every row gets its own exact prefix.
    delays = jnp.array([0, 1, 3, 5])
    out = sampler(noise, TrainedPrefix(), prev_chunk=prev, inference_delay=delays, execute_horizon=3)
    for b, d in enumerate(delays.tolist()):
        np.testing.assert_array_equal(out[b, :d], prev[b, :d])
        single = sampler(noise, TrainedPrefix(), prev_chunk=prev, inference_delay=d)
        np.testing.assert_allclose(out[b], single[b], atol=1e-5)

    seen = []

    def recording(x, tau):
        seen.append((x, tau))
        return jnp.zeros_like(x)

    with jax.disable_jit():  # run the Euler loop eagerly so the recorded arrays are concrete
        sample_chunk(recording, noise, TrainedPrefix(), prev_chunk=prev, inference_delay=2, num_steps=1)
    x, tau = seen[0]
    np.testing.assert_array_equal(x[:, :2], prev[:, :2])
    np.testing.assert_array_equal(x[:, 2:], noise[:, 2:])
    np.testing.assert_array_equal(tau, jnp.broadcast_to(jnp.array([1, 1, 0, 0, 0, 0, 0, 0.0]), (B, H)))


def test_ignored_prev_entries_may_hold_nan(setup, sampler):
    policy, obs, noise, prev = setup
    fn = policy.velocity_fn(obs)
    s = 3
    poisoned = prev.at[:, H - s :].set(jnp.nan)
    for method in (RTC(), HardMask(), JacobianFree(), TrainedPrefix(), BID(rng=jax.random.key(0), num_samples=3)):
        kw = dict(inference_delay=2, execute_horizon=s)
        out = sampler(noise, method, prev_chunk=poisoned, **kw)
        np.testing.assert_array_equal(out, sampler(noise, method, prev_chunk=prev, **kw))


def test_bid_single_sample_is_naive_and_picks_most_coherent():
    noise = jax.random.normal(jax.random.key(0), (B, H, A))
    still = lambda x, tau: jnp.zeros_like(x)  # noqa: E731  (every candidate is its own noise)
    np.testing.assert_array_equal(
        sample_chunk(still, noise, BID(num_samples=1), prev_chunk=noise + 1, inference_delay=1, execute_horizon=2),
        noise,
    )
    rng = jax.random.key(3)
    n, d, s = 8, 2, 3
    prev = jax.random.normal(jax.random.key(4), (B, H, A))
    out = sample_chunk(still, noise, BID(rng=rng, num_samples=n), prev_chunk=prev, inference_delay=d, execute_horizon=s)
    # BID documents where its candidates come from: candidate 0 is `noise`, the rest are drawn from rng.
    candidates = jnp.concatenate([noise[None], jax.random.normal(rng, (n - 1, B, H, A))])
    w = prefix_weights(d, H - s, H, "exp")
    loss = jnp.sum(w * jnp.linalg.norm(candidates - prev, axis=-1), axis=-1)  # [N, B]
    np.testing.assert_array_equal(out, candidates[jnp.argmin(loss, axis=0), jnp.arange(B)])
    # A weak policy identical to the strong one contributes no forward contrast.
    same = sample_chunk(still, noise, BID(rng=rng, num_samples=n, weak_velocity_fn=still, top_k=3), prev_chunk=prev,
                        inference_delay=d, execute_horizon=s)
    np.testing.assert_array_equal(same, out)


def test_bid_forward_contrast_avoids_the_weak_policy():
    """Strong candidates are their noises; the weak policy pushes everything towards +3. With no
    backward preference (end = 0), the candidate farthest from the weak samples and closest to the strong
    ones wins."""
    noise = jax.random.normal(jax.random.key(0), (1, H, A))
    still = lambda x, tau: jnp.zeros_like(x)  # noqa: E731
    drift = lambda x, tau: jnp.full_like(x, 3.0)  # noqa: E731
    rng, n, k = jax.random.key(1), 6, 2
    out = sample_chunk(still, noise, BID(rng=rng, num_samples=n, weak_velocity_fn=drift, top_k=k),
                       prev_chunk=jnp.zeros_like(noise), inference_delay=0, execute_horizon=H)
    cands = jnp.concatenate([noise[None], jax.random.normal(rng, (n - 1, 1, H, A))])[:, 0]
    weak = cands + 3.0
    # With end = 0 every backward loss is 0, so top_k picks the first k of each set.
    dist = lambda refs: jnp.sum(jnp.linalg.norm(cands[:, None] - refs[None], axis=-1), axis=(1, 2))  # noqa: E731
    best = jnp.argmin(dist(cands[:k]) - dist(weak[:k]))
    np.testing.assert_array_equal(out[0], cands[best])


# -- plumbing ----------------------------------------------------------------------------------------

ALL_METHODS = [Naive(), RTC(), RTC(schedule="linear"), HardMask(), JacobianFree(), TrainedPrefix()]


@pytest.mark.parametrize("method", [Naive(), RTC(), JacobianFree(), TrainedPrefix()], ids=lambda m: type(m).__name__)
def test_compact_time_hint_gives_the_same_chunk(setup, sampler, method):
    """The broadcast-time fast path ([] or [1, H] time) equals the contract's [B, H] time."""
    policy, obs, noise, prev = setup
    delays = (2, jnp.array([0, 1, 2, 4])) if isinstance(method, TrainedPrefix) else (2,)
    for d in delays:
        kw = dict(prev_chunk=prev, inference_delay=d, execute_horizon=3)
        np.testing.assert_allclose(sampler(noise, method, **kw), sampler(noise, method, hint=False, **kw), atol=2e-5)


def test_every_method_jits_with_traced_delays(setup):
    policy, obs, noise, prev = setup
    graphdef, weights = nnx.split(policy)
    methods = ALL_METHODS + [BID(rng=jax.random.key(0), num_samples=3)]

    @jax.jit
    def run_all(weights, obs, noise, prev, delays):
        fn = nnx.merge(graphdef, weights).velocity_fn(obs)
        return [sample_chunk(fn, noise, m, prev_chunk=prev, inference_delay=delays, execute_horizon=3) for m in methods]

    delays = jnp.array([0, 1, 2, 5], jnp.int32)
    jitted = run_all(weights, obs, noise, prev, delays)
    for method, got in zip(methods, jitted):
        eager = sample_chunk(policy.velocity_fn(obs), noise, method, prev_chunk=prev, inference_delay=delays,
                             execute_horizon=3)
        np.testing.assert_allclose(got, eager, atol=2e-5, err_msg=repr(method))


@pytest.mark.parametrize(
    "method, kwargs, match",
    [
        (RTC(), dict(inference_delay=-1), "inference_delay"),
        (Naive(), dict(inference_delay=9), "inference_delay"),
        (RTC(), dict(execute_horizon=0), "execute_horizon"),
        (RTC(), dict(execute_horizon=9), "execute_horizon"),
        (RTC(), dict(inference_delay=6, execute_horizon=3), "horizon - execute_horizon"),
        (TrainedPrefix(), dict(inference_delay=6, execute_horizon=3), "horizon - execute_horizon"),
        (RTC(), dict(prev_chunk=None), "prev_chunk"),
        (TrainedPrefix(), dict(prev_chunk=None, inference_delay=2), "prev_chunk"),
        (RTC(), dict(execute_horizon=None), "execute_horizon"),
        (RTC(), dict(prev_chunk=jnp.zeros((B, H, A + 1))), "prev_chunk"),
        (RTC(), dict(inference_delay=jnp.zeros(3, jnp.int32)), "inference_delay"),
        (RTC(), dict(num_steps=0), "num_steps"),
        ("rtc", {}, "method"),
    ],
)
def test_sample_chunk_rejects_bad_input(method, kwargs, match):
    noise = jnp.zeros((B, H, A))
    base = dict(prev_chunk=jnp.zeros((B, H, A)), inference_delay=1, execute_horizon=3)
    with pytest.raises(ValueError, match=match):
        sample_chunk(lambda x, t: x, noise, method, **{**base, **kwargs})


def test_noise_shape_and_method_parameters_are_checked():
    with pytest.raises(ValueError, match="noise"):
        sample_chunk(lambda x, t: x, jnp.zeros((H, A)), Naive())
    with pytest.raises(ValueError, match="schedule"):
        RTC(schedule="cosine")
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="max_guidance_weight"):
            RTC(max_guidance_weight=bad)
        with pytest.raises(ValueError, match="max_guidance_weight"):
            HardMask(max_guidance_weight=bad)
    with pytest.raises(ValueError, match="rng"):
        BID(num_samples=4)
    with pytest.raises(ValueError, match="top_k"):
        BID(rng=jax.random.key(0), num_samples=4, weak_velocity_fn=lambda x, t: x, top_k=5)
