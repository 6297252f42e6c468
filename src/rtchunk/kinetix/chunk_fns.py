"""Chunk functions: how a policy enters the benchmark harness (``rtchunk.kinetix.harness``).

``chunk_fn(params, obs [B, O], noise [B, H, A], prev_chunk [B, H, A] | None, inference_delay [B] int32,
execute_horizon [] int32, rng) -> chunk [B, H, A]``: a hashable callable (its identity keys the compile
cache) with the weights passed as ``params``. ``prev_chunk`` is None for the synchronous first chunk.
``policy_chunk_fn`` builds one from a FlowPolicy and a sampling method; ``scripted_chunk_fn`` is a policy
whose actions say which chunk and index they came from (for tests); ``switched_chunk_fn`` puts several
chunk functions into one rollout, picked by a traced index: the physics, most of a rollout's compile
time, then compiles once for all the methods of a sweep.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from rtchunk.methods import DEFAULT_NUM_STEPS
from rtchunk.sampling import BID, Method, Naive, sample_chunk

ChunkFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class PolicyChunkFn:
    """A FlowPolicy sampled with ``method``: ``params`` is the policy's ``nnx.State`` (or, for BID with a
    weak policy, ``(strong_state, weak_state)``). The first chunk is always sampled naively. BID's
    ``rng`` and ``weak_velocity_fn`` are supplied per call."""

    graphdef: Any
    method: Method
    num_steps: int = DEFAULT_NUM_STEPS
    weak_policy: bool = False

    def __post_init__(self):
        if self.weak_policy and not isinstance(self.method, BID):
            raise ValueError("weak_policy is only used by BID")

    def __call__(self, params, obs, noise, prev_chunk, inference_delay, execute_horizon, rng):
        strong, weak = params if self.weak_policy else (params, None)
        velocity_fn = nnx.merge(self.graphdef, strong).velocity_fn(obs)
        method = self.method
        if prev_chunk is None:
            method = Naive()
        elif isinstance(method, BID):
            weak_fn = nnx.merge(self.graphdef, weak).velocity_fn(obs) if self.weak_policy else None
            method = dataclasses.replace(method, rng=rng, weak_velocity_fn=weak_fn)
        return sample_chunk(
            velocity_fn, noise, method, prev_chunk=prev_chunk, inference_delay=inference_delay,
            execute_horizon=execute_horizon, num_steps=self.num_steps,
        )


@functools.lru_cache(maxsize=64)
def _policy_chunk_fn(graphdef, method, num_steps, weak_policy):
    return PolicyChunkFn(graphdef, method, num_steps, weak_policy)


def policy_chunk_fn(graphdef, method: Method, num_steps: int = DEFAULT_NUM_STEPS, weak_policy: bool = False) -> PolicyChunkFn:
    """The chunk function of a FlowPolicy; the same arguments give the same object (one compile)."""
    return _policy_chunk_fn(graphdef, method, num_steps, weak_policy)


@dataclasses.dataclass(frozen=True, eq=False)
class SwitchedChunkFn:
    """Several chunk functions as one: ``params = (index, (params_0, ..., params_n-1))`` runs
    ``chunk_fns[index]`` with its own params (``lax.switch``: only that branch executes). The branches
    may hold different policies and methods; they must return chunks of one shape."""

    chunk_fns: tuple

    def __post_init__(self):
        if not self.chunk_fns:
            raise ValueError("switched_chunk_fn needs at least one chunk function")

    def __call__(self, params, obs, noise, prev_chunk, inference_delay, execute_horizon, rng):
        index, each = params
        if len(each) != len(self.chunk_fns):
            raise ValueError(f"params must hold one entry per chunk function ({len(self.chunk_fns)}), got {len(each)}")
        branches = [functools.partial(self._branch, i) for i in range(len(self.chunk_fns))]
        return jax.lax.switch(index, branches, each, obs, noise, prev_chunk, inference_delay, execute_horizon, rng)

    def _branch(self, i, each, obs, noise, prev_chunk, inference_delay, execute_horizon, rng):
        chunk = self.chunk_fns[i](each[i], obs, noise, prev_chunk, inference_delay, execute_horizon, rng)
        return chunk.astype(jnp.float32)


@functools.lru_cache(maxsize=64)
def switched_chunk_fn(chunk_fns: tuple) -> SwitchedChunkFn:
    """One chunk function for several (the same tuple gives the same object: one compile)."""
    return SwitchedChunkFn(tuple(chunk_fns))


def switched_params(index: int, params: tuple) -> tuple:
    """The params of branch ``index`` of a ``SwitchedChunkFn`` (strongly typed: no recompile per index)."""
    return np.int32(index), tuple(params)


def scripted_chunk_fn(params, obs, noise, prev_chunk, inference_delay, execute_horizon, rng):
    """A policy for checking execution: ``chunk[b, i] = (id, i, told delay, prev_chunk[b, i, 1], 0, ...)``.

    The id is 1 for the first chunk, then one more than the id at index 0 of the previous chunk it is given
    (the chunk being executed, or the held action once that chunk has run out), so an executed action
    says which chunk and which index it came from; the fourth entry says which index of the previous
    chunk the sampler was given at position i. Needs action_dim >= 3 (>= 4 for the fourth entry).
    """
    del params, obs, execute_horizon, rng
    batch, horizon, action_dim = noise.shape
    ids = jnp.ones(batch) if prev_chunk is None else prev_chunk[:, 0, 0] + 1
    chunk = jnp.zeros((batch, horizon, action_dim), jnp.float32)
    chunk = chunk.at[:, :, 0].set(ids[:, None])
    chunk = chunk.at[:, :, 1].set(jnp.arange(horizon, dtype=jnp.float32)[None])
    chunk = chunk.at[:, :, 2].set(jnp.asarray(inference_delay, jnp.float32)[:, None])
    if action_dim > 3:
        chunk = chunk.at[:, :, 3].set(-1.0 if prev_chunk is None else prev_chunk[:, :, 1])
    return chunk
