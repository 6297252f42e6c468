"""The policy interface of the runtime, and a wrapper that adds latency to one.

A chunk policy is any callable

    policy(observation, prev_chunk_leftover, told_delay, execute_horizon) -> chunk

with numpy at the boundary (JAX, PyTorch or anything inside):

- ``observation``: what the robot's ``observe()`` returned (a numpy array or a dict of them), a private copy.
- ``prev_chunk_leftover``: A_prev, the actions of the current chunk not yet executed when the inference
  started, shape [H - s, A] (possibly [0, A] when the chunk ran out); ``None`` on the very first call,
  when there is no previous chunk.
- ``told_delay``: d, how many actions will execute before the new chunk arrives: the estimate, bounded to
  [0, ``rtchunk.methods.told_delay_bound(policy.method, H, s)``] (H - s, i.e. len(prev_chunk_leftover),
  for a method that freezes a prefix or a policy without a ``method`` attribute; H for the others);
  0 on the first call.
- ``execute_horizon``: s in [1, H], the actions of the current chunk already executed (so guidance ends
  at H - s). On the first call: the policy's ``horizon`` attribute if it has one, else ``None``.
- returns ``chunk``: a floating-point numpy array [H, A]. Its index 0 is the action for the first tick
  after the inference started, i.e. it is aligned with ``prev_chunk_leftover[0]``; a guided sampler
  should keep ``chunk[:d]`` equal to ``prev_chunk_leftover[:d]``.

It runs on the inference thread only, one call at a time, and may raise: the runtime logs it and retries.

A policy that runs elsewhere (a remote client) may say where a call's time went: after each call that
returns, the runtime reads ``policy.last_call_timing``, a mapping (or None / no such attribute) with any
of the float keys ``server_compute_s``, ``server_queue_s``, ``transport_s``, and records them per
inference (NaN when absent).

This module is numpy-only. The adapters that make a chunk policy from a model live beside their model's
backend: ``rtchunk.policy_adapter.FlowChunkPolicy`` (JAX/Flax) and ``rtchunk.torch.TorchChunkPolicy``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Protocol

import numpy as np

TIMING_KEYS = ("server_compute_s", "server_queue_s", "transport_s")
"""The keys of ``last_call_timing``; ``InferenceEvent`` has a field of each name."""


class ChunkPolicy(Protocol):
    def __call__(
        self,
        observation: Any,
        prev_chunk_leftover: np.ndarray | None,
        told_delay: int,
        execute_horizon: int | None,
    ) -> np.ndarray: ...


def call_timing(policy) -> tuple[float, float, float]:
    """The policy's ``last_call_timing`` as (server_compute_s, server_queue_s, transport_s), NaN where absent."""
    timing = getattr(policy, "last_call_timing", None)
    if not isinstance(timing, Mapping):
        return (math.nan, math.nan, math.nan)
    return tuple(_seconds(timing.get(key)) for key in TIMING_KEYS)


def _seconds(value) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan  # a malformed timing is not worth failing an inference over


class WithExtraLatency:
    """A policy whose every call takes ``extra_s`` seconds longer (the paper's +100 / +200 ms experiments).

    The wait is a sleep after the inner call, so it costs no CPU and holds no GIL. The inner policy's
    ``last_call_timing`` passes through unchanged: the sleep is neither server time nor transport.
    """

    def __init__(self, policy: ChunkPolicy, extra_s: float):
        if not (isinstance(extra_s, (int, float)) and np.isfinite(extra_s) and extra_s >= 0):
            raise ValueError(f"extra_s must be a finite number of seconds >= 0, got {extra_s!r}")
        self.policy = policy
        self.extra_s = float(extra_s)

    @property
    def last_call_timing(self):
        return getattr(self.policy, "last_call_timing", None)

    def __call__(self, observation, prev_chunk_leftover, told_delay, execute_horizon):
        chunk = self.policy(observation, prev_chunk_leftover, told_delay, execute_horizon)
        time.sleep(self.extra_s)
        return chunk
