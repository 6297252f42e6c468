"""Inference-delay profiles, delay estimators and training delays, shared by the jitted benchmark harness,
the runtime and the trainers.

A delay is counted in controller steps: the number of actions that execute between taking an
observation and the new chunk becoming available. Every profile reduces to a categorical distribution
over integer delays (``support()``), so it can be sampled inside ``jit`` (``sample``) or with numpy
(``sample_numpy``) from one definition. An optional ``tail_cap`` clips sampled delays (the tail-control
setting of the delay-tail experiments).

numpy-level: JAX is imported only by the functions that work on JAX arrays (``sample``, a JAX history
given to an estimator, ``TrainingDelays.sample``), so the runtime on a robot never loads it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Sequence, Union

from typing import Literal

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


def sample(profile: DelayProfile, rng, shape: tuple[int, ...]):
    """Delays drawn independently for every entry of ``shape`` (a JAX key; jit-compatible; int32)."""
    import jax
    import jax.numpy as jnp

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
    """numpy for host histories; jax.numpy for JAX arrays (tracers are jax.Array too). A history that is a
    JAX array means JAX is already loaded, so looking at sys.modules never imports it."""
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(history, jax.Array):
        import jax.numpy as jnp

        return jnp
    return np


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


# -- training-time RTC --------------------------------------------------------------------------------

DelayDistribution = Literal["uniform", "exp"]


@dataclasses.dataclass(frozen=True)
class TrainingDelays:
    """Training-time RTC: how many leading tokens per sample are given as clean ground truth.

    ``exp`` weighs delay d by exp(-decay * d); the papers' Kinetix setting (``simulated_delay=5``) is
    min 0, max 4, decay 1, i.e. weights ~ .636/.234/.086/.032/.012.
    """

    min_delay: int = 0
    max_delay: int = 4
    distribution: DelayDistribution = "exp"
    decay: float = 1.0

    def __post_init__(self):
        if self.min_delay < 0:
            raise ValueError(f"min_delay must be >= 0, got {self.min_delay}")
        if self.max_delay < self.min_delay:
            raise ValueError(f"max_delay must be >= min_delay ({self.min_delay}), got {self.max_delay}")
        if self.distribution not in ("uniform", "exp"):
            raise ValueError(f"distribution must be 'uniform' or 'exp', got {self.distribution!r}")
        if not math.isfinite(self.decay) or (self.distribution == "exp" and self.decay < 0):
            raise ValueError(f"decay must be a finite number >= 0, got {self.decay}")

    def probabilities(self) -> np.ndarray:
        """p(d) for d = 0..max_delay (zero below min_delay)."""
        d = np.arange(self.max_delay + 1)
        logits = np.where(d >= self.min_delay, 0.0 if self.distribution == "uniform" else -self.decay * d, -np.inf)
        p = np.exp(logits - logits.max())
        return p / p.sum()

    def sample(self, rng, batch: int):
        """[batch] int32 delays drawn with a JAX key."""
        import jax
        import jax.numpy as jnp

        p = jnp.asarray(self.probabilities(), jnp.float32)
        return jax.random.choice(rng, p.shape[0], (batch,), p=p).astype(jnp.int32)
