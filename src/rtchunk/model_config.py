"""The sizes of the papers' MLP-Mixer flow policy, backend-free (the Flax model and the PyTorch port share it)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the MLP-Mixer flow policy (defaults: the papers' Kinetix policy)."""

    channel_dim: int = 256
    channel_hidden_dim: int = 512
    token_hidden_dim: int = 64
    num_layers: int = 4
    horizon: int = 8
    """Action chunk length H."""

    def __post_init__(self):
        for name in ("channel_dim", "channel_hidden_dim", "token_hidden_dim", "num_layers", "horizon"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.channel_dim % 2:
            raise ValueError(f"channel_dim must be even (sin-cos time embedding), got {self.channel_dim}")
