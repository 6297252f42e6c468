"""The papers' MLP-Mixer flow policy with per-token flow time, and its flow-matching loss.

Conventions: flow time tau is 0 at noise and 1 at data; the network predicts the velocity
``action - noise``. Time is given per token (shape [B, H]) so that a clean prefix can carry tau = 1
while the rest is being denoised (training-time RTC); a scalar or per-sample time broadcasts and gives
identical results.
"""

from __future__ import annotations

from typing import Callable

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from rtchunk.delays import TrainingDelays
from rtchunk.model_config import ModelConfig
from rtchunk.sampling import TimeTable

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


def sincos_embedding(tau: jax.Array, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> jax.Array:
    """Sin-cos embedding of flow times: [...] -> [..., dim], periods spaced geometrically."""
    fraction = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    angle = tau[..., None].astype(jnp.float32) * (2 * jnp.pi / period)
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def _zeros_linear(features_in: int, features_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    # adaLN-zero: modulation starts at zero so every block starts as the identity.
    return nnx.Linear(features_in, features_out, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)


def _plain_norm(features: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, use_scale=False, use_bias=False, rngs=rngs)


def _modulation(linear: nnx.Linear, time: tuple[jax.Array, jax.Array | None]) -> jax.Array:
    """The modulation for every token: computed on the time features, then looked up by index if tabled."""
    features, index = time
    out = linear(features)
    if index is None:
        return out
    # A one-hot product rather than a gather: K is tiny, and XLA:CPU runs the small matmul faster.
    return jax.nn.one_hot(index, out.shape[0], dtype=out.dtype) @ out


class MixerBlock(nnx.Module):
    """Token mixing then channel mixing, each modulated (scale, shift, gate) per token by the time embedding."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c = config.channel_dim
        self.token_norm = _plain_norm(c, rngs)
        self.token_modulation = _zeros_linear(c, 3 * c, rngs)
        self.token_in = nnx.Linear(config.horizon, config.token_hidden_dim, use_bias=False, rngs=rngs)
        self.token_out = nnx.Linear(config.token_hidden_dim, config.horizon, use_bias=False, rngs=rngs)
        self.channel_norm = _plain_norm(c, rngs)
        self.channel_modulation = _zeros_linear(c, 3 * c, rngs)
        self.channel_in = nnx.Linear(c, config.channel_hidden_dim, use_bias=False, rngs=rngs)
        self.channel_out = nnx.Linear(config.channel_hidden_dim, c, use_bias=False, rngs=rngs)

    def __call__(self, h: jax.Array, time: tuple[jax.Array, jax.Array | None]) -> jax.Array:
        # h: [B, H, C]; time: see FlowPolicy._time_features.
        scale, shift, gate = jnp.split(_modulation(self.token_modulation, time), 3, axis=-1)
        y = self.token_norm(h) * (1 + scale) + shift
        y = jnp.swapaxes(self.token_out(nnx.gelu(self.token_in(jnp.swapaxes(y, 1, 2)))), 1, 2)
        h = h + gate * y

        scale, shift, gate = jnp.split(_modulation(self.channel_modulation, time), 3, axis=-1)
        y = self.channel_norm(h) * (1 + scale) + shift
        y = self.channel_out(nnx.gelu(self.channel_in(y)))
        return h + gate * y


class FlowPolicy(nnx.Module):
    """velocity = policy(obs [B, O], x_t [B, H, A], tau) with tau of shape [], [B] or [B, H] (or a TimeTable)."""

    def __init__(self, obs_dim: int, action_dim: int, config: ModelConfig = ModelConfig(), *, rngs: nnx.Rngs):
        if obs_dim < 1 or action_dim < 1:
            raise ValueError(f"obs_dim and action_dim must be >= 1, got {obs_dim} and {action_dim}")
        self.config = config
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        c = config.channel_dim
        # One projection of [action, observation] per token, as in the paper; it is applied in two parts
        # so the observation part can be computed once per chunk instead of once per flow step.
        self.in_proj = nnx.Linear(action_dim + obs_dim, c, rngs=rngs)
        self.time_mlp_1 = nnx.Linear(c, c, rngs=rngs)
        self.time_mlp_2 = nnx.Linear(c, c, rngs=rngs)
        self.blocks = nnx.List([MixerBlock(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = _plain_norm(c, rngs)
        self.final_modulation = _zeros_linear(c, 2 * c, rngs)
        self.out_proj = nnx.Linear(c, action_dim, rngs=rngs)

    # -- input projection -------------------------------------------------------------------------
    def encode_obs(self, obs: jax.Array) -> jax.Array:
        """The observation's share of the input projection (bias included): [B, O] -> [B, C]."""
        if obs.ndim != 2 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must have shape [batch, {self.obs_dim}], got {obs.shape}")
        kernel = self.in_proj.kernel[...]
        return obs @ kernel[self.action_dim :] + self.in_proj.bias[...]

    def _time_features(self, tau, batch: int) -> tuple[jax.Array, jax.Array | None]:
        """(features, index): features [b, h, C] broadcastable to the tokens and index None, or, for a
        ``TimeTable``, features [K, C] of its K distinct times and the per-token index [b, h]."""
        if isinstance(tau, TimeTable):
            values, index = jnp.asarray(tau.values, jnp.float32), tau.index
            if values.ndim != 1 or index.ndim != 2 or index.shape[0] not in (1, batch) or \
                    index.shape[1] != self.config.horizon:
                raise ValueError(f"TimeTable must hold values [K] and index [1 or {batch}, {self.config.horizon}], "
                                 f"got {values.shape} and {index.shape}")
        else:
            values = jnp.asarray(tau, jnp.float32)
            if values.ndim == 0:
                values = values.reshape(1, 1)
            elif values.ndim == 1:  # one time per sample
                values = values[:, None]
            if values.ndim != 2 or values.shape[0] not in (1, batch) or values.shape[1] not in (1, self.config.horizon):
                raise ValueError(
                    f"tau must have shape [], [batch] or [batch, horizon] = [{batch}, {self.config.horizon}], "
                    f"got {values.shape}"
                )
            index = None
        # Computed at tau's own shape and broadcast later: a shared time costs one embedding, not B*H.
        emb = sincos_embedding(values, self.config.channel_dim)
        return nnx.swish(self.time_mlp_2(nnx.swish(self.time_mlp_1(emb)))), index

    def _trunk(self, h: jax.Array, tau: jax.Array) -> jax.Array:
        time = self._time_features(tau, h.shape[0])
        for block in self.blocks:
            h = block(h, time)
        scale, shift = jnp.split(_modulation(self.final_modulation, time), 2, axis=-1)
        return self.out_proj(self.final_norm(h) * (1 + scale) + shift)

    def _check_chunk(self, x_t: jax.Array, batch: int):
        expected = (batch, self.config.horizon, self.action_dim)
        if x_t.shape != expected:
            raise ValueError(f"x_t must have shape [batch, horizon, action_dim] = {list(expected)}, got {x_t.shape}")

    def velocity(self, obs_features: jax.Array, x_t: jax.Array, tau: jax.Array) -> jax.Array:
        """Velocity given the precomputed ``encode_obs(obs)``."""
        self._check_chunk(x_t, obs_features.shape[0])
        h = x_t @ self.in_proj.kernel[...][: self.action_dim] + obs_features[:, None, :]
        return self._trunk(h, tau)

    def __call__(self, obs: jax.Array, x_t: jax.Array, tau: jax.Array) -> jax.Array:
        return self.velocity(self.encode_obs(obs), x_t, tau)

    def velocity_unsplit(self, obs: jax.Array, x_t: jax.Array, tau: jax.Array) -> jax.Array:
        """The same function computed as in the paper's code (observation concatenated to every token and
        projected at every call); kept as the reference for tests and the speed-up benchmark."""
        self._check_chunk(x_t, obs.shape[0])
        tokens = jnp.concatenate([x_t, jnp.broadcast_to(obs[:, None, :], (*x_t.shape[:2], obs.shape[-1]))], -1)
        return self._trunk(self.in_proj(tokens), tau)

    def velocity_fn(self, obs: jax.Array) -> VelocityFn:
        """A sampler's ``velocity_fn(x_t, tau)`` for this observation; the observation is projected once."""
        features = self.encode_obs(obs)

        def velocity_fn(x_t, tau):
            return self.velocity(features, x_t, tau)

        # tau may come at its smallest broadcastable shape, or as a TimeTable (see rtchunk.sampling): one
        # time embedding per distinct time instead of one per token (the default model's time conditioning
        # costs more than its token and channel mixing).
        velocity_fn.accepts_broadcast_time = True
        velocity_fn.accepts_time_table = True
        return velocity_fn


# -- training ----------------------------------------------------------------------------------------

def flow_matching_loss(
    policy: FlowPolicy,
    rng: jax.Array,
    obs: jax.Array,
    actions: jax.Array,
    delays: TrainingDelays | None = None,
) -> jax.Array:
    """Flow-matching loss: x_tau = (1 - tau) noise + tau action, target action - noise.

    With ``delays`` (training-time RTC) the first d tokens of each sample are the clean actions with
    tau = 1, and the mean runs over the remaining tokens only.
    """
    batch, horizon, _ = actions.shape
    if delays is not None and delays.max_delay >= horizon:
        raise ValueError(f"max_delay must be < horizon ({horizon}) so a postfix remains, got {delays.max_delay}")
    noise_rng, time_rng, delay_rng = jax.random.split(rng, 3)
    noise = jax.random.normal(noise_rng, actions.shape, actions.dtype)
    # One time per sample, [B, 1]: the model then embeds and modulates per sample, not per token (the time
    # conditioning is most of a small model's cost); with delays the prefix's tau = 1 makes it per token.
    tau = jax.random.uniform(time_rng, (batch, 1))
    if delays is None:
        postfix = jnp.ones((batch, horizon), bool)
    else:
        postfix = jnp.arange(horizon)[None, :] >= delays.sample(delay_rng, batch)[:, None]
        tau = jnp.where(postfix, tau, 1.0)
    x_t = (1 - tau[..., None]) * noise + tau[..., None] * actions
    error = jnp.square(policy(obs, x_t, tau) - (actions - noise))
    weight = postfix[..., None].astype(error.dtype)
    return jnp.sum(error * weight) / (jnp.sum(weight) * actions.shape[-1])
