"""Small flow policies with randomised weights shared by the PyTorch backend's tests.

The default initialisation zeroes every adaLN modulation kernel, which makes each mixer block the
identity and would hide a mistake inside the blocks; here every parameter is random (Flax's LeCun scale
for kernels, std 0.1 for biases) so each part of the network shapes the output.
"""

from __future__ import annotations

import flax.nnx as nnx
import jax
import numpy as np

from rtchunk.checkpoints import save_policy
from rtchunk.model import FlowPolicy, ModelConfig

SMALL = ModelConfig(channel_dim=32, channel_hidden_dim=48, token_hidden_dim=16, num_layers=2, horizon=8)
OBS_DIM = 10
ACTION_DIM = 3


def randomized_jax_policy(seed: int, config: ModelConfig = SMALL, obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM):
    policy = FlowPolicy(obs_dim, action_dim, config, rngs=nnx.Rngs(seed))
    state = nnx.state(policy, nnx.Param)
    weights = nnx.to_pure_dict(state)
    leaves, treedef = jax.tree_util.tree_flatten(weights)
    keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))

    def draw(key, leaf):
        if leaf.ndim == 2:
            return jax.random.normal(key, leaf.shape) / np.sqrt(leaf.shape[0])
        return 0.1 * jax.random.normal(key, leaf.shape)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, [draw(k, l) for k, l in zip(keys, leaves)]))
    nnx.update(policy, state)
    return policy


def saved_random_policy(directory, seed: int, **kwargs):
    """(JAX policy, checkpoint directory written by rtchunk.checkpoints.save_policy)."""
    policy = randomized_jax_policy(seed, **kwargs)
    return policy, save_policy(directory, policy)
