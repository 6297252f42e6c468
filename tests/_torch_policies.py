"""Small flow policies with randomised weights shared by the PyTorch backend's tests.

The default initialisation zeroes every adaLN modulation kernel, which makes each mixer block the
identity and would hide a mistake inside the blocks; here every parameter is random (Flax's LeCun scale
for kernels, std 0.1 for biases) so each part of the network shapes the output. Weights are drawn with
numpy into an abstract (eval_shape) policy: no JAX computation, so building one costs milliseconds.
"""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from rtchunk.checkpoints import save_policy
from rtchunk.model import FlowPolicy, ModelConfig

SMALL = ModelConfig(channel_dim=32, channel_hidden_dim=48, token_hidden_dim=16, num_layers=2, horizon=8)
OBS_DIM = 10
ACTION_DIM = 3


def randomized_jax_policy(seed: int, config: ModelConfig = SMALL, obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM):
    policy = nnx.eval_shape(lambda: FlowPolicy(obs_dim, action_dim, config, rngs=nnx.Rngs(0)))
    state = nnx.state(policy, nnx.Param)
    rs = np.random.RandomState(seed)

    def draw(leaf):
        if len(leaf.shape) == 2:
            return jnp.asarray(rs.randn(*leaf.shape) / np.sqrt(leaf.shape[0]), jnp.float32)
        return jnp.asarray(0.1 * rs.randn(*leaf.shape), jnp.float32)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(draw, nnx.to_pure_dict(state)))
    nnx.update(policy, state)
    return policy


def saved_random_policy(directory, seed: int, **kwargs):
    """(JAX policy, checkpoint directory written by rtchunk.checkpoints.save_policy)."""
    policy = randomized_jax_policy(seed, **kwargs)
    return policy, save_policy(directory, policy)
