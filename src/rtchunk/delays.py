"""Inference-delay profiles and delay estimators, shared by the jitted benchmark harness and the runtime.

A delay is counted in controller steps: the number of actions that execute between taking an
observation and the new chunk becoming available. Every profile reduces to a categorical distribution
over integer delays (``support()``), so it can be sampled inside ``jit`` (``sample``) or with numpy
(``sample_numpy``) from one definition. An optional ``tail_cap`` clips sampled delays (the tail-control
setting of the delay-tail experiments).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np


def _check_delay(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (controller steps), got {value!r}")


def _check_probs(name: str, probs: Sequence[float], total: float = 1.0) -> None:
    if any((not math.isfinite(p)) or p < 0 for p in probs):
        raise ValueError(f"{name} must be finite and >= 0, got {list(probs)}")
    if not math.isclose(sum(probs), total, abs_tol=1e-6):
        raise ValueError(f"{name} must sum to {total:g}, got {sum(probs):g}")


@dataclasses.dataclass(frozen=True)
class FixedDelay:
    """The same delay for every chunk (the papers' setting)."""

    delay: int = 1
    tail_cap: int | None = None

    def __post_init__(self):
        _check_delay("delay", self.delay)
        _check_tail_cap(self.tail_cap)

    def _raw_support(self):
        return np.array([self.delay]), np.array([1.0])


@dataclasses.dataclass(frozen=True)
class MixtureDelay:
    """Base delays with probabilities, plus a spike delay drawn with probability ``spike_prob``."""

    delays: tuple[int, ...] = (1, 2)
    probs: tuple[float, ...] = (0.5, 0.5)
    spike_delay: int = 0
    spike_prob: float = 0.0
    tail_cap: int | None = None

    def __post_init__(self):
        if len(self.delays) == 0 or len(self.delays) != len(self.probs):
            raise ValueError(
                f"delays and probs must be non-empty and of equal length, got {len(self.delays)} and {len(self.probs)}"
            )
        for d in self.delays:
            _check_delay("delays", d)
        _check_delay("spike_delay", self.spike_delay)
        if not (0.0 <= self.spike_prob <= 1.0):
            raise ValueError(f"spike_prob must be in [0, 1], got {self.spike_prob}")
        _check_probs("probs", self.probs)
        _check_tail_cap(self.tail_cap)

    def _raw_support(self):
        values = np.array([*self.delays, self.spike_delay])
        probs = np.array([*(p * (1 - self.spike_prob) for p in self.probs), self.spike_prob])
        return values, probs


@dataclasses.dataclass(frozen=True)
class EmpiricalDelay:
    """Measured inference latencies (seconds), each equally likely, turned into controller steps.

    A latency L with control period dt delays the chunk by ceil(L / dt) steps (conservative: the chunk is
    not there until the first tick after it finishes).
    """

    latencies_s: tuple[float, ...] = (0.05,)
    control_period_s: float = 0.02
    tail_cap: int | None = None

    def __post_init__(self):
        if len(self.latencies_s) == 0:
            raise ValueError("latencies_s must hold at least one measured latency")
        if any((not math.isfinite(x)) or x < 0 for x in self.latencies_s):
            raise ValueError(f"latencies_s must be finite and >= 0 seconds, got {list(self.latencies_s)}")
        if not (math.isfinite(self.control_period_s) and self.control_period_s > 0):
            raise ValueError(f"control_period_s must be > 0 seconds, got {self.control_period_s}")
        _check_tail_cap(self.tail_cap)

    def _raw_support(self):
        # The small epsilon keeps a latency of exactly k periods at k steps despite float rounding.
        steps = np.ceil(np.asarray(self.latencies_s) / self.control_period_s - 1e-9).astype(int)
        values, counts = np.unique(steps, return_counts=True)
        return values, counts / counts.sum()


DelayProfile = Union[FixedDelay, MixtureDelay, EmpiricalDelay]


def _check_tail_cap(cap) -> None:
    if cap is not None:
        _check_delay("tail_cap", cap)


def support(profile: DelayProfile) -> tuple[np.ndarray, np.ndarray]:
    """(delays, probabilities) after the tail cap, merged and sorted; zero-probability values dropped."""
    values, probs = profile._raw_support()
    if profile.tail_cap is not None:
        values = np.minimum(values, profile.tail_cap)
    merged: dict[int, float] = {}
    for v, p in zip(values.tolist(), probs.tolist()):
        if p > 0:
            merged[v] = merged.get(v, 0.0) + p
    keys = sorted(merged)
    return np.array(keys, dtype=np.int32), np.array([merged[k] for k in keys], dtype=np.float64)


def max_delay(profile: DelayProfile) -> int:
    return int(support(profile)[0].max())


def quantile(profile: DelayProfile, q: float) -> int:
    """The smallest delay whose cumulative probability reaches q."""
    values, probs = support(profile)
    return int(values[min(np.searchsorted(np.cumsum(probs), q - 1e-12), len(values) - 1)])


def sample(profile: DelayProfile, rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Delays drawn independently for every entry of ``shape`` (jit-compatible; int32)."""
    values, probs = support(profile)
    if len(values) == 1:
        return jnp.full(shape, int(values[0]), jnp.int32)
    idx = jax.random.categorical(rng, jnp.log(jnp.asarray(probs, jnp.float32)), shape=shape)
    return jnp.asarray(values)[idx]


def sample_numpy(profile: DelayProfile, rng: np.random.Generator, size=None):
    values, probs = support(profile)
    return rng.choice(values, size=size, p=probs)


# -- estimators --------------------------------------------------------------------------------------
# The sampler is told an estimate of the coming delay; the actual delay governs execution. Estimators
# read a window of the most recent observed delays, newest last. A host (numpy, list, tuple) history is
# estimated with numpy: the runtime's inference loop calls them once per chunk and should neither
# dispatch to a JAX device nor compile once per history length; a JAX array is estimated with jnp.


def _xp(history):
    return jnp if isinstance(history, jax.Array) else np  # tracers are jax.Array too


@dataclasses.dataclass(frozen=True)
class MaxEstimator:
    """The paper's Algorithm 1: the maximum of the last ``window`` observed delays."""

    window: int = 10

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    def estimate(self, history):
        xp = _xp(history)
        return xp.max(xp.asarray(history)[..., -self.window :], axis=-1)


@dataclasses.dataclass(frozen=True)
class QuantileEstimator:
    """The q-quantile (rounded up to an observed value) of the last ``window`` observed delays."""

    q: float = 0.9
    window: int = 10

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not 0.0 <= self.q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {self.q}")

    def estimate(self, history):
        xp = _xp(history)
        return xp.quantile(xp.asarray(history)[..., -self.window :], self.q, axis=-1, method="higher")


@dataclasses.dataclass(frozen=True)
class FixedEstimator:
    """Always the same estimate, whatever was observed."""

    delay: int = 1

    def __post_init__(self):
        _check_delay("delay", self.delay)

    @property
    def window(self) -> int:
        return 1

    def estimate(self, history):
        xp = _xp(history)
        return xp.full(np.shape(history)[:-1], self.delay, xp.int32)


DelayEstimator = Union[MaxEstimator, QuantileEstimator, FixedEstimator]
