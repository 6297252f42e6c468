"""Small shared test utilities (not fixtures): tiny models with randomised weights."""

from __future__ import annotations

import flax.nnx as nnx
import jax

from rtchunk.model import FlowPolicy, ModelConfig

TINY = ModelConfig(channel_dim=32, channel_hidden_dim=64, token_hidden_dim=16, num_layers=2, horizon=8)


def randomise(policy: FlowPolicy, seed: int = 0, scale: float = 0.3) -> FlowPolicy:
    """Replace every weight with noise. The default init zeroes the adaLN kernels, which makes every
    block the identity and would hide bugs in token mixing and time conditioning."""
    state = nnx.state(policy, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    nnx.update(policy, jax.tree.unflatten(treedef, leaves))
    return policy


def tiny_policy(obs_dim: int = 6, action_dim: int = 3, seed: int = 0, config: ModelConfig = TINY) -> FlowPolicy:
    return randomise(FlowPolicy(obs_dim, action_dim, config, rngs=nnx.Rngs(seed)), seed)


def random_inputs(batch: int, horizon: int, action_dim: int, obs_dim: int, seed: int = 1):
    k = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(k[0], (batch, obs_dim)),
        jax.random.normal(k[1], (batch, horizon, action_dim)),
        jax.random.normal(k[2], (batch, horizon, action_dim)),
    )


def plain(fn):
    """The same velocity function without the ``accepts_broadcast_time`` hint (always gets tau [B, H])."""
    return lambda x, tau: fn(x, tau)

