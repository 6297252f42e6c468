"""What a server samples with: the backend interface, batch-size buckets, and a numpy stand-in policy.

A backend samples a batch of validated requests that share one method in one call:
``backend.sample(method, batch) -> chunks [B, H, A]``. The JAX backend (``rtchunk.serving.jax_backend``)
and the PyTorch one (``rtchunk.serving.torch_backend``) load their framework when they are built;
``ToyBackend`` needs numpy only, so a robot's client and the server's fault handling can be tested
without a model.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from rtchunk.methods import MethodSettings, freezes_prefix, make_method


@dataclasses.dataclass(frozen=True, eq=False)
class SampleBatch:
    """B requests of one method, stacked (each row is one request's own inputs)."""

    observation: np.ndarray  # float32 [B, O]
    prev_chunk: np.ndarray  # float32 [B, H, A], zero-padded leftovers
    inference_delay: np.ndarray  # int32 [B]
    execute_horizon: np.ndarray  # int32 [B]
    seed: np.ndarray  # uint32 [B]
    noise_index: np.ndarray  # uint32 [B]: the request's noise is drawn from (seed, noise_index)

    def __len__(self) -> int:
        return int(self.observation.shape[0])

    def padded(self, size: int) -> "SampleBatch":
        """The batch with its last request repeated up to ``size`` rows (the extra rows are discarded)."""
        n = len(self)
        if size < n:
            raise ValueError(f"size must be >= the batch size {n}, got {size}")
        idx = np.minimum(np.arange(size), n - 1)
        return SampleBatch(*(np.ascontiguousarray(getattr(self, f.name)[idx]) for f in dataclasses.fields(self)))


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a backend compiles for: powers of two below ``max_batch``, then ``max_batch``."""
    if not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
        raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    sizes = [1 << i for i in range(int(math.log2(max_batch)) + 1) if (1 << i) < max_batch]
    return tuple(sizes + [int(max_batch)])


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n`` requests."""
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"a batch of {n} requests exceeds the largest bucket {buckets[-1]}")


class Backend(Protocol):
    obs_dim: int
    horizon: int
    action_dim: int
    methods: Mapping[str, Any]
    """Served method name -> method object (``rtchunk.methods``)."""
    max_trained_delay: int | None
    description: str

    def sample(self, method: str, batch: SampleBatch) -> np.ndarray: ...


def served_method_names(include_trained_prefix: bool, exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """Every registered method a server can sample: those whose chunks are executed as they come
    (temporal ensembling averages chunks on the robot's side, so a server has nothing to do for it)."""
    from rtchunk.methods import METHOD_NAMES, execution

    names = [n for n in METHOD_NAMES if execution(n) == "latest" and n not in exclude]
    if not include_trained_prefix:
        names = [n for n in names if n != "trained_prefix"]
    return tuple(names)


class ToyBackend:
    """A deterministic numpy policy with the server's shapes, for tests and transport benchmarks.

    chunk[h, a] = tanh(mean(obs)) + 0.01 (h + 1) (a + 1) + 0.001 z, with z drawn from the request's
    (seed, noise_index); a prefix-freezing method copies ``prev_chunk[:d]`` into ``chunk[:d]``.
    ``compute_s`` sleeps that long per batch (a slow or loaded server); ``batch_sizes`` records every
    batch it was handed.
    """

    def __init__(self, obs_dim: int = 4, horizon: int = 8, action_dim: int = 2, *, compute_s: float = 0.0,
                 method_names: Sequence[str] = ("naive", "rtc", "trained_prefix"), max_trained_delay: int | None = None):
        for name, value in (("obs_dim", obs_dim), ("horizon", horizon), ("action_dim", action_dim)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(compute_s) and compute_s >= 0):
            raise ValueError(f"compute_s must be a finite number of seconds >= 0, got {compute_s!r}")
        self.obs_dim, self.horizon, self.action_dim = int(obs_dim), int(horizon), int(action_dim)
        self.compute_s = float(compute_s)
        self.methods = {n: make_method(n, MethodSettings(), rng=0) for n in method_names}
        self.max_trained_delay = max_trained_delay
        self.description = f"toy policy (obs {obs_dim}, chunk {horizon}x{action_dim})"
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()
        grid = np.arange(1, horizon + 1)[:, None] * np.arange(1, action_dim + 1)[None, :]
        self._base = (0.01 * grid).astype(np.float32)

    def sample(self, method: str, batch: SampleBatch) -> np.ndarray:
        with self._lock:
            self.batch_sizes.append(len(batch))
        if self.compute_s:
            time.sleep(self.compute_s)
        out = np.empty((len(batch), self.horizon, self.action_dim), np.float32)
        freeze = freezes_prefix(self.methods[method])
        for i in range(len(batch)):
            rng = np.random.default_rng([int(batch.seed[i]), int(batch.noise_index[i])])
            noise = rng.standard_normal((self.horizon, self.action_dim)).astype(np.float32)
            out[i] = np.tanh(batch.observation[i].mean()) + self._base + 0.001 * noise
            if freeze:
                d = int(batch.inference_delay[i])
                out[i, :d] = batch.prev_chunk[i, :d]
        return out
