"""The JAX backend: a ``FlowPolicy`` sampled for a batch of requests in one compiled call.

The sampler for one request (batch 1, its own leftover, delay, execute horizon and noise key) is
vmapped over the batch axis, so a request's chunk does not depend on what it is batched with. Batches
are padded to a bucket size (powers of two up to ``max_batch``): each method compiles once per bucket,
whatever the requests hold. The weights are an argument of the compiled function, not constants in it.

Request noise: ``fold_in(key(seed), noise_index)`` split into the noise key and BID's key, as in
``rtchunk.policy_adapter.FlowChunkPolicy``; a request with ``rtc/seed = n`` (``noise_index`` 0) therefore
gets the chunk that ``FlowChunkPolicy(policy, method, seed=n)`` returns on its first call.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from rtchunk.methods import BID, DEFAULT_NUM_STEPS, Method, MethodSettings, check_num_steps, make_method
from rtchunk.serving.backends import SampleBatch, bucket_for, bucket_sizes, served_method_names


class JaxBackend:
    """Serve ``policy`` (an ``rtchunk.model.FlowPolicy``) with the named methods of ``rtchunk.methods``.

    ``method_names`` defaults to every method a server can sample (``trained_prefix`` only when
    ``max_trained_delay`` is given, i.e. for a model trained with prefix conditioning).
    """

    def __init__(self, policy, *, method_names: Sequence[str] | None = None, settings: MethodSettings = MethodSettings(),
                 num_steps: int = DEFAULT_NUM_STEPS, max_batch: int = 8, max_trained_delay: int | None = None,
                 description: str = ""):
        import flax.nnx as nnx
        import jax

        check_num_steps(num_steps)
        if method_names is None:
            method_names = served_method_names(include_trained_prefix=max_trained_delay is not None)
        self.obs_dim = int(policy.obs_dim)
        self.horizon = int(policy.config.horizon)
        self.action_dim = int(policy.action_dim)
        self.num_steps = int(num_steps)
        self.max_trained_delay = None if max_trained_delay is None else int(max_trained_delay)
        self.buckets = bucket_sizes(max_batch)
        self.description = description or f"flow policy (obs {self.obs_dim}, chunk {self.horizon}x{self.action_dim})"
        # BID draws its extra candidates from a key; each request gets its own inside the compiled call.
        self.methods: Mapping[str, Method] = {
            name: make_method(name, settings, rng=jax.random.key(0)) for name in method_names
        }
        graphdef, state = nnx.split(policy)
        self._weights, self._treedef = jax.tree_util.tree_flatten(state)
        self._graphdef = graphdef
        self._compiled = {name: jax.jit(self._make_sampler(method)) for name, method in self.methods.items()}

    def _make_sampler(self, method: Method):
        import flax.nnx as nnx
        import jax

        from rtchunk.sampling import sample_chunk

        graphdef, treedef, num_steps, shape = self._graphdef, self._treedef, self.num_steps, (1, self.horizon, self.action_dim)

        def one(weight_leaves, obs, prev, delay, execute_horizon, seed, index):
            model = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, weight_leaves))
            noise_key, bid_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), index))
            noise = jax.random.normal(noise_key, shape, prev.dtype)
            m = method
            if isinstance(m, BID):
                m = dataclasses.replace(m, rng=bid_key if m.num_samples > 1 else None)
            chunk = sample_chunk(model.velocity_fn(obs[None]), noise, m, prev_chunk=prev[None], inference_delay=delay,
                                 execute_horizon=execute_horizon, num_steps=num_steps)
            return chunk[0]

        return jax.vmap(one, in_axes=(None, 0, 0, 0, 0, 0, 0))

    @property
    def compiled_variants(self) -> int:
        """Compilations so far, over every method and bucket (at most methods x buckets, ever)."""
        return sum(fn._cache_size() for fn in self._compiled.values())

    def sample(self, method: str, batch: SampleBatch) -> np.ndarray:
        n = len(batch)
        padded = batch.padded(bucket_for(n, self.buckets))
        chunks = self._compiled[method](
            self._weights, padded.observation, padded.prev_chunk, padded.inference_delay, padded.execute_horizon,
            padded.seed, padded.noise_index,
        )
        return np.asarray(chunks)[:n]

    def warmup(self, method_names: Sequence[str] | None = None, buckets: Sequence[int] | None = None) -> None:
        """Compile ``method_names`` (default: all served) for ``buckets`` (default: all) now."""
        h, a = self.horizon, self.action_dim
        for name in method_names or tuple(self.methods):
            for size in buckets or self.buckets:
                self.sample(name, SampleBatch(
                    np.zeros((size, self.obs_dim), np.float32), np.zeros((size, h, a), np.float32),
                    np.zeros(size, np.int32), np.full(size, h, np.int32), np.zeros(size, np.uint32),
                    np.zeros(size, np.uint32)))
