"""Metrics shared by the benchmark harness and the runtime's telemetry (numpy, on the host).

Action sequences are [..., T, A] (time then action dimension); a ``valid`` mask [..., T] marks steps
that count (e.g. the first episode of each environment). Differences are taken only between two valid
consecutive steps.
"""

from __future__ import annotations

import math

import numpy as np


Z95 = 1.959963984540054
"""The standard normal's 97.5 % quantile: two-sided 95 % intervals."""


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default); (0, 1) when there are no trials."""
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got successes={successes}, trials={trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def percentiles(values, qs=(50, 95, 99)) -> dict[str, float]:
    """{'p50': ..., 'p95': ..., 'p99': ...}; NaN for an empty input."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return {f"p{q:g}": (float(np.percentile(v, q)) if v.size else math.nan) for q in qs}


def _valid(actions: np.ndarray, valid) -> np.ndarray:
    if valid is None:
        return np.ones(actions.shape[:-1], bool)
    valid = np.asarray(valid, bool)
    if valid.shape != actions.shape[:-1]:
        raise ValueError(f"valid must have shape {actions.shape[:-1]}, got {valid.shape}")
    return valid


def action_deltas(actions, valid=None) -> tuple[np.ndarray, np.ndarray]:
    """(||a_t - a_{t-1}||, mask) with shapes [..., T-1]; the mask needs both steps valid."""
    a = np.asarray(actions, dtype=np.float64)
    ok = _valid(a, valid)
    return np.linalg.norm(np.diff(a, axis=-2), axis=-1), ok[..., 1:] & ok[..., :-1]


def smoothness(actions, valid=None) -> dict[str, float]:
    """max ||Δa|| and max ||Δ²a|| over valid steps (0 when there are too few steps)."""
    a = np.asarray(actions, dtype=np.float64)
    ok = _valid(a, valid)
    d1, ok1 = action_deltas(a, ok)
    d2 = np.linalg.norm(np.diff(a, n=2, axis=-2), axis=-1)
    ok2 = ok[..., 2:] & ok[..., 1:-1] & ok[..., :-2]
    return {
        "max_delta_action": float(d1[ok1].max()) if ok1.any() else 0.0,
        "max_ddelta_action": float(d2[ok2].max()) if ok2.any() else 0.0,
    }


def seam_jumps(actions, switched, valid=None) -> np.ndarray:
    """||a_t - a_{t-1}|| at every valid step t where a new chunk took over (``switched[..., t]``)."""
    a = np.asarray(actions, dtype=np.float64)
    d1, ok1 = action_deltas(a, valid)
    switched = np.asarray(switched, bool)
    if switched.shape != a.shape[:-1]:
        raise ValueError(f"switched must have shape {a.shape[:-1]}, got {switched.shape}")
    return d1[ok1 & switched[..., 1:]]


def seam_summary(jumps) -> dict[str, float]:
    j = np.asarray(jumps, dtype=np.float64)
    return {
        "seam_jump_mean": float(j.mean()) if j.size else math.nan,
        "seam_jump_p99": float(np.percentile(j, 99)) if j.size else math.nan,
    }
