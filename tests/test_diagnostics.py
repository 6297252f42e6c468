"""Multimodality and guidance-change figures of a flow policy."""

import itertools

import jax
import numpy as np
import pytest
from helpers import tiny_policy

from rtchunk.diagnostics import chunk_spread, guidance_change
from rtchunk.methods import RTC, HardMask, Naive, TrainedPrefix
from rtchunk.sampling import sample_chunk

OBS, ACT, H = 6, 3, 8


@pytest.fixture(scope="module")
def policy():
    return tiny_policy(OBS, ACT)


def test_spread_is_the_mean_pairwise_distance(policy):
    obs = jax.random.normal(jax.random.key(1), (4, OBS))
    rng = jax.random.key(2)
    spread = chunk_spread(policy, obs, rng, num_samples=3, num_steps=2)
    noise = jax.random.normal(rng, (3, 4, H, ACT))
    chunks = [np.asarray(sample_chunk(policy.velocity_fn(obs), z, Naive(), num_steps=2)) for z in noise]
    expected = np.mean([np.sqrt(((chunks[i] - chunks[j]) ** 2).sum(axis=(1, 2)))
                        for i, j in itertools.permutations(range(3), 2)], axis=0)
    np.testing.assert_allclose(spread, expected, rtol=1e-5)
    assert spread.shape == (4,) and np.all(spread > 0)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2"):
        chunk_spread(policy, obs, rng, num_samples=1)


def test_guidance_change_is_zero_when_nothing_is_frozen(policy):
    obs = jax.random.normal(jax.random.key(3), (4, OBS))
    prev = jax.random.normal(jax.random.key(4), (4, H, ACT))
    rng = jax.random.key(5)
    kwargs = dict(execute_horizon=3, num_steps=2)
    for method in (HardMask(), TrainedPrefix()):  # d = 0: no frozen prefix, so exactly the naive chunk
        np.testing.assert_allclose(guidance_change(policy, obs, prev, rng, method, inference_delay=0, **kwargs), 0,
                                   atol=1e-5)  # float rounding of the differently fused program
    change = guidance_change(policy, obs, prev, rng, RTC(), inference_delay=2, **kwargs)
    assert change.shape == (4,) and np.all(change > 0.01)
    with pytest.raises(ValueError, match="inference_delay must be <= horizon - execute_horizon = 5"):
        guidance_change(policy, obs, prev, rng, RTC(), inference_delay=6, **kwargs)
