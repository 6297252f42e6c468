"""A JAX/Flax ``FlowPolicy`` as the asynchronous runtime's chunk policy: numpy in, numpy out.

The twin of ``rtchunk.torch.TorchChunkPolicy``; the call contract is ``rtchunk.runtime.policies.ChunkPolicy``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rtchunk.methods import BID, DEFAULT_NUM_STEPS, Method, check_num_steps, told_delay_bound


class FlowChunkPolicy:
    """A ``FlowPolicy`` sampled with a method of ``rtchunk.sampling``, as a chunk policy.

    Compiled once: A_prev is right-padded to H (the sampler ignores entries at and beyond H - s) and the
    delay, the execute horizon and the noise counter are traced integers, so no call recompiles. The noise
    of call k is ``fold_in(key(seed), k)``: a run is reproducible from ``seed``. The observation is a
    vector [obs_dim]. ``weak_policy`` is BID's weak policy (only with ``BID``).
    """

    def __init__(self, policy, method: Method, *, num_steps: int = DEFAULT_NUM_STEPS, seed: int = 0, weak_policy=None):
        import flax.nnx as nnx
        import jax

        check_num_steps(num_steps)
        if weak_policy is not None and not isinstance(method, BID):
            raise ValueError("weak_policy is only used by BID")
        if isinstance(method, BID) and method.weak_velocity_fn is not None:
            raise ValueError("give BID's weak policy as weak_policy=FlowPolicy(...) here, not as weak_velocity_fn")
        self.method = method
        self.num_steps = int(num_steps)
        self.horizon = policy.config.horizon
        self.action_dim = policy.action_dim
        self.obs_dim = policy.obs_dim
        self._calls = 0
        graphdef, state = nnx.split(policy)
        weak = None if weak_policy is None else nnx.split(weak_policy)
        # The weights go in as a flat list of arrays (an argument, not a closure): flattening an nnx.State
        # on every call would cost the inference thread Python time, i.e. GIL time the controller needs.
        self._weights, treedef = jax.tree_util.tree_flatten((state, None if weak is None else weak[1]))
        self._sample = jax.jit(self._make_sampler(treedef, graphdef, None if weak is None else weak[0], int(seed)))

    def _make_sampler(self, treedef, graphdef, weak_graphdef, seed: int):
        import flax.nnx as nnx
        import jax

        from rtchunk.sampling import sample_chunk

        method, num_steps = self.method, self.num_steps

        def sample(weight_leaves, obs, prev, delay, execute_horizon, call_index):
            weights = jax.tree_util.tree_unflatten(treedef, weight_leaves)
            model = nnx.merge(graphdef, weights[0])
            noise_key, bid_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), call_index))
            noise = jax.random.normal(noise_key, prev.shape, prev.dtype)
            m = method
            if isinstance(m, BID):
                weak_fn = None if weak_graphdef is None else nnx.merge(weak_graphdef, weights[1]).velocity_fn(obs)
                m = dataclasses.replace(m, rng=bid_key if m.num_samples > 1 else None, weak_velocity_fn=weak_fn)
            chunk = sample_chunk(model.velocity_fn(obs), noise, m, prev_chunk=prev, inference_delay=delay,
                                 execute_horizon=execute_horizon, num_steps=num_steps)
            return chunk[0]

        return sample

    @property
    def compiled_variants(self) -> int:
        """How many times the sampler was compiled (1 after the first call, whatever the inputs)."""
        return self._sample._cache_size()

    def __call__(self, observation, prev_chunk_leftover, told_delay, execute_horizon) -> np.ndarray:
        h, a = self.horizon, self.action_dim
        obs = np.asarray(observation, np.float32)
        if obs.shape != (self.obs_dim,):
            raise ValueError(f"observation must have shape [{self.obs_dim}], got {obs.shape}")
        prev = np.zeros((1, h, a), np.float32)
        if prev_chunk_leftover is None:  # first chunk: nothing to continue, so no guidance at all
            delay, execute_horizon = 0, h
        else:
            left = np.asarray(prev_chunk_leftover, np.float32)
            if left.ndim != 2 or left.shape[1] != a or left.shape[0] > h - 1:
                raise ValueError(f"prev_chunk_leftover must have shape [n <= {h - 1}, {a}], got {left.shape}")
            if execute_horizon != h - left.shape[0]:
                raise ValueError(f"execute_horizon must be H - len(prev_chunk_leftover) = {h - left.shape[0]}, "
                                 f"got {execute_horizon}")
            bound = told_delay_bound(self.method, h, execute_horizon)
            if not 0 <= told_delay <= bound:
                raise ValueError(f"told_delay must be in [0, told_delay_bound({type(self.method).__name__}, H={h}, "
                                 f"s={execute_horizon}) = {bound}], got {told_delay}")
            prev[0, : left.shape[0]] = left
            delay = told_delay
        index = self._calls
        self._calls += 1
        chunk = self._sample(self._weights, obs[None], prev, np.int32(delay), np.int32(execute_horizon), np.int32(index))
        return np.asarray(chunk)


def flow_policy_fn(policy, method: Method, *, num_steps: int = DEFAULT_NUM_STEPS, seed: int = 0, weak_policy=None) -> FlowChunkPolicy:
    """``FlowChunkPolicy(policy, method, ...)``: e.g. ``flow_policy_fn(policy, RTC())`` for real-time chunking."""
    return FlowChunkPolicy(policy, method, num_steps=num_steps, seed=seed, weak_policy=weak_policy)
