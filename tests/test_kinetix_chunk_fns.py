"""Chunk functions: a FlowPolicy with a sampling method is exactly ``sample_chunk`` (the harness side is in
test_kinetix_harness.py)."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from kinetix_helpers import FAST, TINY_MODEL
from rtchunk import BID, RTC, FlowPolicy, Naive, TrainedPrefix, sample_chunk
from rtchunk.kinetix import chunk_fns as ev
from rtchunk.methods import told_delay_bound

H = TINY_MODEL.horizon


def test_policy_chunk_fn_is_sample_chunk_with_the_policy(tmp_path):
    policy = FlowPolicy(5, 3, TINY_MODEL, rngs=nnx.Rngs(0))
    weak = FlowPolicy(5, 3, TINY_MODEL, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(policy)
    obs = jax.random.normal(jax.random.key(0), (2, 5))
    noise, prev = jax.random.normal(jax.random.key(1), (2, 2, H, 3))
    d = jnp.array([1, 2], jnp.int32)
    rng = jax.random.key(3)
    fn = ev.policy_chunk_fn(graphdef, RTC(), 3)
    assert fn is ev.policy_chunk_fn(graphdef, RTC(), 3)  # one object, one compile
    bid = ev.policy_chunk_fn(graphdef, BID(rng=jax.random.key(9), num_samples=4, top_k=2), 3, weak_policy=True)
    weak_params = nnx.split(weak)[1]

    @jax.jit(compiler_options=FAST)
    def both(params, weak_params):
        pol, wk = nnx.merge(graphdef, params), nnx.merge(graphdef, weak_params)
        v = pol.velocity_fn(obs)
        bid_method = BID(rng=rng, num_samples=4, top_k=2, weak_velocity_fn=wk.velocity_fn(obs))
        kw = dict(prev_chunk=prev, inference_delay=d, execute_horizon=3, num_steps=3)
        return (
            (fn(params, obs, noise, prev, d, 3, rng), sample_chunk(v, noise, RTC(), **kw)),
            # The first chunk of an episode has no previous chunk: every method samples it naively.
            (fn(params, obs, noise, None, d, 3, rng), sample_chunk(v, noise, Naive(), num_steps=3)),
            (bid((params, weak_params), obs, noise, prev, d, 3, rng), sample_chunk(v, noise, bid_method, **kw)),
        )

    for got, expected in both(params, weak_params):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    # The harness tells the methods that freeze a prefix at most H - s, the others at most H.
    assert told_delay_bound(RTC(), H, 3) == told_delay_bound(TrainedPrefix(), H, 3) == H - 3
    assert told_delay_bound(Naive(), H, 3) == told_delay_bound(BID(rng=rng), H, 3) == H
