"""How multimodal a flow policy's chunks are, and how much a guided method changes them.

The papers' argument for RTC rests on multimodal policies: when chunks sampled from different noise for the
same observation differ (several modes), naive chunking switches between modes at every seam and inpainting
can keep the mode the robot is already in. When they hardly differ there is nothing for guidance to choose,
and the methods cannot separate. Two numbers say which regime a policy is in:

- ``chunk_spread``: for each observation, the mean L2 distance (over the whole [H, A] chunk) between chunks
  sampled from independent noise, averaged over all pairs of ``num_samples`` samples;
- ``guidance_change``: for each observation, the L2 distance between the chunk a method samples (given a
  previous chunk) and the naive chunk from the same noise.

Both are per observation ([N] numpy arrays); report their means over observations from the data.
"""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from rtchunk.methods import DEFAULT_NUM_STEPS, Naive, check_sample_arguments
from rtchunk.sampling import sample_chunk


def _spread(graphdef, params, obs, rng, num_samples: int, num_steps: int):
    model = nnx.merge(graphdef, params)
    n, h, a = obs.shape[0], model.config.horizon, model.action_dim
    noise = jax.random.normal(rng, (num_samples, n, h, a))
    chunks = jax.vmap(lambda z: sample_chunk(model.velocity_fn(obs), z, Naive(), num_steps=num_steps))(noise)
    diff = chunks[:, None] - chunks[None]  # [K, K, N, H, A]
    dist = jnp.sqrt(jnp.sum(diff**2, axis=(-2, -1)))  # [K, K, N]
    pairs = num_samples * (num_samples - 1)
    return jnp.sum(dist, axis=(0, 1)) / pairs  # the diagonal is zero


_spread_jit = jax.jit(_spread, static_argnums=(0, 4, 5))


def chunk_spread(policy, obs, rng, *, num_samples: int = 8, num_steps: int = DEFAULT_NUM_STEPS) -> np.ndarray:
    """[N]: mean pairwise distance between ``num_samples`` naive chunks per observation ``obs`` [N, O]."""
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2 (pairs of samples), got {num_samples!r}")
    graphdef, params = nnx.split(policy)
    return np.asarray(_spread_jit(graphdef, params, jnp.asarray(obs, jnp.float32), rng, num_samples, num_steps))


def _change(graphdef, params, obs, prev, rng, method, delay, execute_horizon, num_steps: int):
    model = nnx.merge(graphdef, params)
    fn = model.velocity_fn(obs)
    noise = jax.random.normal(rng, prev.shape)
    guided = sample_chunk(fn, noise, method, prev_chunk=prev, inference_delay=delay,
                          execute_horizon=execute_horizon, num_steps=num_steps)
    naive = sample_chunk(fn, noise, Naive(), num_steps=num_steps)
    return jnp.sqrt(jnp.sum((guided - naive) ** 2, axis=(-2, -1)))


_change_jit = jax.jit(_change, static_argnums=(0, 5, 8))


def guidance_change(policy, obs, prev_chunk, rng, method, *, inference_delay: int, execute_horizon: int,
                    num_steps: int = DEFAULT_NUM_STEPS) -> np.ndarray:
    """[N]: ||method's chunk - naive chunk|| from the same noise, given ``prev_chunk`` [N, H, A] (already
    shifted: index 0 executes at the new chunk's first step) for observations ``obs`` [N, O]."""
    graphdef, params = nnx.split(policy)
    obs = jnp.asarray(obs, jnp.float32)
    prev = jnp.asarray(prev_chunk, jnp.float32)
    # Checked here, on concrete values: inside jit the delay and the execute horizon are traced.
    check_sample_arguments(method, noise_shape=prev.shape, prev_shape=prev.shape, delay_shape=(),
                           delay=np.asarray(inference_delay), has_execute_horizon=True,
                           execute_horizon=np.asarray(execute_horizon), num_steps=num_steps)
    return np.asarray(_change_jit(graphdef, params, obs, prev, rng, method, np.int32(inference_delay),
                                  np.int32(execute_horizon), num_steps))
