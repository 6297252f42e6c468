"""PyTorch port of the MLP-Mixer flow policy of ``rtchunk.model``; loads checkpoints of the JAX pipeline.

Same function, same conventions (tau 0 = noise, 1 = data; velocity ``action - noise``; per-token time),
same methods (``policy(obs, x_t, tau)``, ``encode_obs``, ``velocity``, ``velocity_fn``). Details that
must match Flax exactly: LayerNorm without scale/bias and epsilon 1e-6, GELU with the tanh approximation
(``flax.nnx.gelu`` is ``jax.nn.gelu(approximate=True)``), swish = SiLU, Flax kernels are [in, out]
(``nn.Linear.weight`` is their transpose).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtchunk.checkpoints import CheckpointError, check_arrays, load_arrays, load_meta
from rtchunk.model_config import ModelConfig
from rtchunk.torch.sampling import TimeTable

LAYER_NORM_EPSILON = 1e-6  # flax.nnx.LayerNorm's default


def sincos_embedding(tau: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """Sin-cos embedding of flow times: [...] -> [..., dim], as ``rtchunk.model.sincos_embedding``."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float32, device=tau.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = tau[..., None].to(torch.float32) * (2 * math.pi / period)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def _lecun_normal_(linear: nn.Linear) -> nn.Linear:
    # Flax's default kernel init (truncated normal, variance 1/fan_in) and zero bias, so a freshly built
    # port trains like the JAX policy; checkpoints overwrite it anyway.
    fan_in = linear.weight.shape[1]
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # stddev of a standard normal truncated to [-2, 2]
    nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def _linear(features_in: int, features_out: int, bias: bool = True) -> nn.Linear:
    return _lecun_normal_(nn.Linear(features_in, features_out, bias=bias))


def _zeros_linear(features_in: int, features_out: int) -> nn.Linear:
    # adaLN-zero: modulation starts at zero so every block starts as the identity.
    linear = nn.Linear(features_in, features_out)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def _norm(h: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(h, h.shape[-1:], eps=LAYER_NORM_EPSILON)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _modulation(linear: nn.Linear, time) -> torch.Tensor:
    """The modulation of every token: computed on the time features, looked up by index if tabled (an
    embedding lookup: the cheapest gather in eager PyTorch, about as costly as one small add)."""
    features, index = time
    out = linear(features)
    return out if index is None else F.embedding(index, out)


class MixerBlock(nn.Module):
    """Token mixing then channel mixing, each modulated (scale, shift, gate) per token by the time embedding."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config.channel_dim
        self.token_modulation = _zeros_linear(c, 3 * c)
        self.token_in = _linear(config.horizon, config.token_hidden_dim, bias=False)
        self.token_out = _linear(config.token_hidden_dim, config.horizon, bias=False)
        self.channel_modulation = _zeros_linear(c, 3 * c)
        self.channel_in = _linear(c, config.channel_hidden_dim, bias=False)
        self.channel_out = _linear(config.channel_hidden_dim, c, bias=False)

    def forward(self, h: torch.Tensor, time) -> torch.Tensor:
        # h: [B, H, C]; time: see FlowPolicy._time_features.
        scale, shift, gate = _modulation(self.token_modulation, time).chunk(3, dim=-1)
        y = _norm(h) * (1 + scale) + shift
        y = self.token_out(_gelu(self.token_in(y.transpose(1, 2)))).transpose(1, 2)
        h = h + gate * y

        scale, shift, gate = _modulation(self.channel_modulation, time).chunk(3, dim=-1)
        y = _norm(h) * (1 + scale) + shift
        y = self.channel_out(_gelu(self.channel_in(y)))
        return h + gate * y


class FlowPolicy(nn.Module):
    """velocity = policy(obs [B, O], x_t [B, H, A], tau) with tau of shape [], [B] or [B, H]."""

    def __init__(self, obs_dim: int, action_dim: int, config: ModelConfig = ModelConfig()):
        super().__init__()
        if obs_dim < 1 or action_dim < 1:
            raise ValueError(f"obs_dim and action_dim must be >= 1, got {obs_dim} and {action_dim}")
        self.config = config
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        c = config.channel_dim
        self.in_proj = _linear(action_dim + obs_dim, c)
        self.time_mlp_1 = _linear(c, c)
        self.time_mlp_2 = _linear(c, c)
        self.blocks = nn.ModuleList([MixerBlock(config) for _ in range(config.num_layers)])
        self.final_modulation = _zeros_linear(c, 2 * c)
        self.out_proj = _linear(c, action_dim)

    # -- input projection -------------------------------------------------------------------------
    def encode_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """The observation's share of the input projection (bias included): [B, O] -> [B, C]."""
        if obs.ndim != 2 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must have shape [batch, {self.obs_dim}], got {tuple(obs.shape)}")
        return F.linear(obs, self.in_proj.weight[:, self.action_dim :], self.in_proj.bias)

    def _time_features(self, tau, batch: int):
        """(features, index) as in the JAX model: features [b, h, C] and None, or for a ``TimeTable`` the
        features [K, C] of its distinct times and the per-token index [b, h]."""
        if isinstance(tau, TimeTable):
            values, index = torch.as_tensor(tau.values, dtype=torch.float32, device=self.in_proj.weight.device), tau.index
            if values.ndim != 1 or index.ndim != 2 or index.shape[0] not in (1, batch) or \
                    index.shape[1] != self.config.horizon:
                raise ValueError(f"TimeTable must hold values [K] and index [1 or {batch}, {self.config.horizon}], "
                                 f"got {tuple(values.shape)} and {tuple(index.shape)}")
            emb = sincos_embedding(values, self.config.channel_dim).to(self.in_proj.weight.dtype)
            return F.silu(self.time_mlp_2(F.silu(self.time_mlp_1(emb)))), index.long()
        tau = torch.as_tensor(tau, dtype=torch.float32, device=self.in_proj.weight.device)
        if tau.ndim == 0:
            tau = tau.reshape(1, 1)
        elif tau.ndim == 1:  # one time per sample
            tau = tau[:, None]
        if tau.ndim != 2 or tau.shape[0] not in (1, batch) or tau.shape[1] not in (1, self.config.horizon):
            raise ValueError(
                f"tau must have shape [], [batch] or [batch, horizon] = [{batch}, {self.config.horizon}], "
                f"got {tuple(tau.shape)}"
            )
        # Computed at tau's own shape and broadcast later: a shared time costs one embedding, not B*H.
        emb = sincos_embedding(tau, self.config.channel_dim).to(self.in_proj.weight.dtype)
        return F.silu(self.time_mlp_2(F.silu(self.time_mlp_1(emb)))), None

    def _trunk(self, h: torch.Tensor, tau) -> torch.Tensor:
        time = self._time_features(tau, h.shape[0])
        for block in self.blocks:
            h = block(h, time)
        scale, shift = _modulation(self.final_modulation, time).chunk(2, dim=-1)
        return self.out_proj(_norm(h) * (1 + scale) + shift)

    def _check_chunk(self, x_t: torch.Tensor, batch: int):
        expected = (batch, self.config.horizon, self.action_dim)
        if tuple(x_t.shape) != expected:
            raise ValueError(f"x_t must have shape [batch, horizon, action_dim] = {list(expected)}, got {tuple(x_t.shape)}")

    def velocity(self, obs_features: torch.Tensor, x_t: torch.Tensor, tau) -> torch.Tensor:
        """Velocity given the precomputed ``encode_obs(obs)``."""
        self._check_chunk(x_t, obs_features.shape[0])
        h = F.linear(x_t, self.in_proj.weight[:, : self.action_dim]) + obs_features[:, None, :]
        return self._trunk(h, tau)

    def forward(self, obs: torch.Tensor, x_t: torch.Tensor, tau) -> torch.Tensor:
        return self.velocity(self.encode_obs(obs), x_t, tau)

    def velocity_fn(self, obs: torch.Tensor):
        """A sampler's ``velocity_fn(x_t, tau)`` for this observation (``noise_at_0``); obs projected once."""
        features = self.encode_obs(obs)

        def velocity_fn(x_t, tau):
            return self.velocity(features, x_t, tau)

        velocity_fn.accepts_broadcast_time = True
        velocity_fn.accepts_time_table = True
        return velocity_fn

    # -- checkpoints ------------------------------------------------------------------------------
    def flax_names(self) -> dict[str, tuple[str, bool]]:
        """{checkpoint name: (parameter name here, transposed)} for every parameter."""
        names = {}
        for name, param in self.named_parameters():
            *path, leaf = name.split(".")
            flax_leaf = {"weight": "kernel", "bias": "bias"}[leaf]
            names["/".join([*path, flax_leaf])] = (name, param.ndim == 2)
        return names

    def load_flax_arrays(self, arrays: dict[str, np.ndarray], source: str = "checkpoint") -> None:
        """Copy Flax-named arrays (``blocks/0/channel_in/kernel`` [in, out], ...) into this module.

        Names, shapes and dtypes are checked by ``rtchunk.checkpoints.check_arrays``; a mismatch raises
        ``CheckpointError`` saying what differs.
        """
        names = self.flax_names()
        params = dict(self.named_parameters())
        like = {}
        for flax_name, (name, transposed) in names.items():
            shape = tuple(params[name].shape[::-1] if transposed else params[name].shape)
            like[flax_name] = np.zeros(shape, np.float32)
        check_arrays(dict(arrays), like, source=source)
        with torch.no_grad():
            for flax_name, (name, transposed) in names.items():
                value = torch.from_numpy(np.ascontiguousarray(arrays[flax_name]))
                params[name].copy_(value.T if transposed else value)


def load_policy(directory: Path, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
    """(FlowPolicy in eval mode, meta) from a checkpoint written by ``rtchunk.checkpoints.save_policy``."""
    meta = load_meta(directory)
    if meta.get("kind") != "flow_policy":
        raise CheckpointError(f"{directory} holds a {meta.get('kind')!r} checkpoint, not a flow policy")
    try:
        config = ModelConfig(**meta["model"])
        policy = FlowPolicy(int(meta["obs_dim"]), int(meta["action_dim"]), config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}/meta.json has an invalid model description ({e})") from None
    policy.load_flax_arrays(load_arrays(directory), source=str(directory))
    return policy.to(device=device, dtype=dtype).eval(), meta
