"""A PyTorch flow policy as the asynchronous runtime's policy: numpy in, numpy out.

The runtime calls ``policy(observation, prev_chunk_leftover, told_delay, execute_horizon) -> chunk``
from its inference thread. ``TorchChunkPolicy`` turns that call into ``rtchunk.torch.sample_chunk``:

- ``observation``: an array or a (nested) dict/list/tuple of arrays; numpy arrays and tensors become
  tensors on ``device`` (floating ones in ``dtype``) and, unless ``batched=True``, gain a leading batch
  axis of 1; anything else (a task string) is passed through as is. It is handed to
  ``make_velocity_fn(observation) -> velocity_fn`` (e.g. ``FlowPolicy.velocity_fn``), which is called
  under ``torch.no_grad()``.
- ``prev_chunk_leftover``: ``None`` for the first chunk, else the not-yet-executed actions of the current
  chunk, already shifted (index 0 executes at the new chunk's first step), shape [L, A] ([B, L, A] if
  batched), L <= H. It is zero-padded to H; the guidance ends at min(H - execute_horizon, L).
- ``told_delay``: d >= 0, clipped to ``rtchunk.methods.told_delay_bound(method, H, s)`` with s raised to
  H - L for a short leftover, i.e. to that end for a method that freezes a prefix (a longer delay has no
  previous actions to freeze).
- Returns the new chunk as float32 numpy [H, A] ([B, H, A] if batched).

Without a leftover, every method samples like ``Naive`` (there is nothing to continue).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from rtchunk.methods import told_delay_bound
from rtchunk.torch.sampling import (
    BID,
    GUIDED,
    TIME_CONVENTIONS,
    Method,
    Naive,
    TimeConvention,
    TrainedPrefix,
    VelocityFn,
    sample_chunk,
)


def _batch_size(tree) -> int:
    """Leading size of the first tensor in a batched observation."""
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        for value in tree:
            size = _batch_size(value)
            if size:
                return size
        return 0
    return int(tree.shape[0]) if isinstance(tree, torch.Tensor) and tree.ndim else 0


class TorchChunkPolicy:
    """``(observation, prev_chunk_leftover, told_delay, execute_horizon) -> chunk`` for a PyTorch policy."""

    def __init__(
        self,
        make_velocity_fn: Callable[[Any], VelocityFn],
        *,
        horizon: int,
        action_dim: int,
        method: Method,
        num_steps: int = 5,
        time_convention: TimeConvention = "noise_at_0",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        batched: bool = False,
    ):
        for name, value in (("horizon", horizon), ("action_dim", action_dim), ("num_steps", num_steps)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if time_convention not in TIME_CONVENTIONS:
            raise ValueError(f"time_convention must be one of {TIME_CONVENTIONS}, got {time_convention!r}")
        if not isinstance(method, (Naive, TrainedPrefix, BID) + GUIDED):
            raise ValueError(f"method must be a rtchunk.torch method (Naive(), RTC(), ..., BID()), got {method!r}")
        self.make_velocity_fn = make_velocity_fn
        self.horizon = int(horizon)
        self.action_dim = int(action_dim)
        self.method = method
        self.num_steps = int(num_steps)
        self.time_convention = time_convention
        self.device = torch.device(device)
        self.dtype = dtype
        self.batched = batched
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))

    @classmethod
    def from_flow_policy(cls, policy, *, method: Method, **kwargs) -> "TorchChunkPolicy":
        """Wrap an ``rtchunk.torch.model.FlowPolicy`` (put in eval mode, on its own device and dtype)."""
        param = next(policy.parameters())
        kwargs.setdefault("device", param.device)
        kwargs.setdefault("dtype", param.dtype)
        return cls(
            policy.eval().velocity_fn, horizon=policy.config.horizon, action_dim=policy.action_dim, method=method, **kwargs
        )

    # -- conversion at the numpy boundary -----------------------------------------------------------
    def _to_torch(self, value):
        if isinstance(value, dict):
            return {k: self._to_torch(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._to_torch(v) for v in value)
        if not isinstance(value, (np.ndarray, torch.Tensor)):
            return value  # strings (task prompts), numbers, anything else the model takes as is
        tensor = torch.as_tensor(value, device=self.device)
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        return tensor if self.batched else tensor[None]

    def _leftover(self, leftover, batch: int) -> tuple[torch.Tensor, int]:
        """(previous chunk padded to [B, H, A], number of valid leading entries L)."""
        prev = torch.as_tensor(np.asarray(leftover), dtype=self.dtype, device=self.device)
        if not self.batched:
            prev = prev[None]
        if prev.ndim != 3 or prev.shape[0] != batch or prev.shape[2] != self.action_dim or prev.shape[1] > self.horizon:
            expected = f"[L <= {self.horizon}, {self.action_dim}]" if not self.batched else f"[{batch}, L <= {self.horizon}, {self.action_dim}]"
            raise ValueError(f"prev_chunk_leftover must have shape {expected}, got {tuple(np.shape(leftover))}")
        length = prev.shape[1]
        padded = torch.zeros((batch, self.horizon, self.action_dim), dtype=self.dtype, device=self.device)
        padded[:, :length] = prev
        return padded, length

    def __call__(self, observation, prev_chunk_leftover, told_delay, execute_horizon) -> np.ndarray:
        h = self.horizon
        if execute_horizon is None and prev_chunk_leftover is None:
            execute_horizon = h  # the runtime's first call: nothing executed yet, nothing to continue
        if not isinstance(execute_horizon, (int, np.integer)) or not 1 <= execute_horizon <= h:
            raise ValueError(f"execute_horizon must be an integer in [1, horizon={h}], got {execute_horizon!r}")
        if not isinstance(told_delay, (int, np.integer)) or told_delay < 0:
            raise ValueError(f"told_delay must be an integer >= 0, got {told_delay!r}")
        observation = self._to_torch(observation)
        batch = _batch_size(observation) if self.batched else 1
        if batch < 1:
            raise ValueError("a batched observation must contain at least one array with a leading batch axis")
        method, prev, delay, s = self.method, None, 0, int(execute_horizon)
        if prev_chunk_leftover is not None:
            prev, length = self._leftover(prev_chunk_leftover, batch)
            # Guidance ends where the leftover does if that comes first: end = H - s  ->  s' = max(s, H - L).
            s = max(s, h - length)
            delay = min(int(told_delay), told_delay_bound(method, h, s))
        if prev is None or length == 0:
            method, prev = Naive(), None
        noise = torch.randn((batch, h, self.action_dim), generator=self.generator, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            velocity_fn = self.make_velocity_fn(observation)
            chunk = sample_chunk(
                velocity_fn, noise, method, prev_chunk=prev, inference_delay=delay, execute_horizon=s,
                num_steps=self.num_steps, time_convention=self.time_convention,
            )
        chunk = chunk.to(torch.float32).cpu().numpy()
        return chunk if self.batched else chunk[0]
