"""Checks at the runtime's boundary: observations going to the policy and chunks coming back.

Observations are numpy arrays or flat mappings of name -> numpy array (e.g. images and joint state).
The first valid observation fixes the expected structure and shapes; later ones must match and be finite
(floating-point entries only: integer images cannot hold NaN). A check returns a reason string instead of
raising, because a bad input is counted and skipped, never fatal, once the runtime is running.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

ObservationSpec = Any  # tuple shape, or {name: tuple shape}


def _array_problem(name: str, value, shape: tuple | None) -> str | None:
    if not isinstance(value, np.ndarray):
        return f"{name} is a {type(value).__name__}, not a numpy array"
    if shape is not None and value.shape != shape:
        return f"{name} has shape {value.shape}, expected {shape}"
    if value.dtype.kind not in "fciub":
        return f"{name} has non-numeric dtype {value.dtype}"
    if value.dtype.kind in "fc" and not np.isfinite(value).all():
        return f"{name} holds NaN or inf"
    return None


def observation_problem(observation, spec: ObservationSpec | None) -> str | None:
    """Why ``observation`` is unusable (None when it is fine). ``spec=None`` checks values only."""
    if isinstance(observation, Mapping):
        if spec is not None and (not isinstance(spec, dict) or set(observation) != set(spec)):
            expected = sorted(spec) if isinstance(spec, dict) else "an array"
            return f"observation has keys {sorted(observation)}, expected {expected}"
        for key, value in observation.items():
            problem = _array_problem(f"observation[{key!r}]", value, None if spec is None else spec[key])
            if problem:
                return problem
        return None
    if spec is not None and isinstance(spec, dict):
        return f"observation is a {type(observation).__name__}, expected a mapping with keys {sorted(spec)}"
    return _array_problem("observation", observation, spec)


def observation_spec(observation) -> ObservationSpec:
    if isinstance(observation, Mapping):
        return {key: value.shape for key, value in observation.items()}
    return observation.shape


def copy_observation(observation):
    """A private copy, so a robot that reuses its buffers cannot change an observation under inference."""
    if isinstance(observation, Mapping):
        return {key: np.array(value, copy=True) for key, value in observation.items()}
    return np.array(observation, copy=True)


def chunk_problem(chunk, shape: tuple[int, int] | None) -> str | None:
    """Why a policy output is unusable as a chunk [H, A] (None when it is fine)."""
    if not isinstance(chunk, np.ndarray):
        return f"the policy returned a {type(chunk).__name__}; it must return a numpy array [horizon, action_dim]"
    if chunk.ndim != 2 or (shape is not None and chunk.shape != shape):
        expected = "[horizon, action_dim]" if shape is None else list(shape)
        return f"the policy returned shape {chunk.shape}, expected {expected}"
    if chunk.dtype.kind != "f":
        return f"the policy returned dtype {chunk.dtype}; chunks must be floating point"
    if not np.isfinite(chunk).all():
        return "the policy returned a chunk holding NaN or inf"
    return None


def frozen_chunk(chunk: np.ndarray, dtype) -> np.ndarray:
    """A read-only copy: the controller hands out rows of it without copying, and nobody may write them."""
    out = np.array(chunk, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out
