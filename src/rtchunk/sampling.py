"""Sampling an action chunk from a flow policy, for every method the papers compare.

A method is a small frozen dataclass; ``sample_chunk`` integrates the flow ODE with ``num_steps`` Euler
steps from tau = 0 (noise) to tau = 1 (actions). The policy enters only as
``velocity_fn(x_t [B, H, A], tau [B, H]) -> velocity [B, H, A]`` with the observation closed over; it
must treat batch elements independently (the guided methods take one VJP of the whole batch, which is
the per-sample VJP exactly when samples do not interact).

A velocity function that sets the attribute ``accepts_broadcast_time = True`` (as
``FlowPolicy.velocity_fn`` does) receives tau at its smallest broadcastable shape instead ([] when every
token shares one time, [1, H] or [B, H] otherwise), which lets it compute its time conditioning once
instead of once per token; the result must be the same. One that also sets ``accepts_time_table``
receives the mixed times of TrainedPrefix as a ``TimeTable`` (the two distinct times and a per-token
index), so its prefix conditioning costs two time embeddings, not one per token.

``prev_chunk`` is the previous chunk already shifted so that its index 0 is the action executed at the
new chunk's first step; entries at and beyond ``H - execute_horizon`` are ignored (they may hold
anything, NaN included). ``inference_delay`` may be a Python int or, inside ``jit``, an int array of
shape [] or [B] (one delay per sample); values are validated whenever they are concrete.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
Schedule = Literal["exp", "linear", "ones", "zeros"]
SCHEDULES: tuple[str, ...] = ("exp", "linear", "ones", "zeros")


def _check_schedule(schedule: str):
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def _check_beta(beta: float):
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"max_guidance_weight must be a finite number > 0, got {beta!r}")


class TimeTable(NamedTuple):
    """Per-token flow times as a table of distinct values and an index: tau[b, h] = values[index[b, h]]."""

    values: jax.Array  # [K] float32
    index: jax.Array  # [1 or B, H] int32

    def dense(self, shape: tuple[int, int]) -> jax.Array:
        return jnp.broadcast_to(self.values[self.index], shape)


# -- methods -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Naive:
    """Plain Euler integration; ignores the previous chunk."""


@dataclasses.dataclass(frozen=True)
class RTC:
    """Real-time chunking: guided inpainting of the previous chunk with the true VJP (paper Eqs. 1-5)."""

    schedule: Schedule = "exp"
    max_guidance_weight: float = 5.0

    def __post_init__(self):
        _check_schedule(self.schedule)
        _check_beta(self.max_guidance_weight)


@dataclasses.dataclass(frozen=True)
class HardMask:
    """RTC guidance on the frozen prefix only (the ``zeros`` schedule)."""

    max_guidance_weight: float = 5.0

    def __post_init__(self):
        _check_beta(self.max_guidance_weight)


@dataclasses.dataclass(frozen=True)
class JacobianFree:
    """RTC with the network's Jacobian replaced by the identity: the correction is the weighted error itself.

    No backward pass, so it costs about a plain Euler step. This is what an implementation computes when
    the velocity is evaluated before x_t is marked as requiring gradients.
    """

    schedule: Schedule = "exp"
    max_guidance_weight: float = 5.0

    def __post_init__(self):
        _check_schedule(self.schedule)
        _check_beta(self.max_guidance_weight)


@dataclasses.dataclass(frozen=True)
class TrainedPrefix:
    """Training-time RTC inference: the first d tokens are the previous chunk with flow time 1."""


@dataclasses.dataclass(frozen=True, eq=False)
class BID:
    """Bidirectional decoding: sample ``num_samples`` chunks, keep the one that best continues the previous
    chunk (backward coherence, exp-weighted distance) and, with a weak policy, that sits closest to the
    strong policy's ``top_k`` most coherent samples and farthest from the weak policy's (forward contrast).

    Candidate 0 uses the ``noise`` passed to ``sample_chunk``; the other candidates draw theirs from
    ``rng``, and the weak policy is sampled from the same noises as the strong one. With
    ``num_samples=1`` BID is exactly Naive. Defaults are the RTC paper's setting (N=32, K=3); the public
    code's default is N=16 without a weak policy.
    """

    rng: jax.Array | None = None
    num_samples: int = 32
    weak_velocity_fn: VelocityFn | None = None
    top_k: int = 3

    def __post_init__(self):
        if not isinstance(self.num_samples, (int, np.integer)) or self.num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {self.num_samples!r}")
        if self.num_samples > 1 and self.rng is None:
            raise ValueError("BID with num_samples > 1 needs rng (a jax.random key) to draw the extra candidates")
        if self.weak_velocity_fn is not None and not 1 <= self.top_k <= self.num_samples:
            raise ValueError(f"top_k must be in [1, num_samples={self.num_samples}], got {self.top_k}")


Method = Union[Naive, RTC, HardMask, JacobianFree, TrainedPrefix, BID]
GUIDED = (RTC, HardMask, JacobianFree)


# -- weights -----------------------------------------------------------------------------------------


def _concrete(x) -> np.ndarray | None:
    """The value of x as numpy if it is known at trace time, else None."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def prefix_weights(inference_delay, mask_end, horizon: int, schedule: Schedule = "exp") -> jax.Array:
    """Paper Eq. 5: how strongly each index of the new chunk is pulled towards the previous chunk.

    start = min(d, end): weight 1 below start; for start <= i < end, c = (end - i) / (end - start + 1)
    and the weight is c (``linear``) or c (e^c - 1) / (e - 1) (``exp``); ``ones`` is 1 below end,
    ``zeros`` is 1 below start only; 0 at and beyond end. ``inference_delay`` and ``mask_end`` may be
    arrays (e.g. one per sample); the result has their broadcast shape + [horizon].
    """
    _check_schedule(schedule)
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    for name, value in (("inference_delay", inference_delay), ("mask_end", mask_end)):
        v = _concrete(value)
        if v is not None and (np.any(v < 0) or np.any(v > horizon)):
            raise ValueError(f"{name} must be in [0, horizon={horizon}], got {v.tolist()}")
    d = jnp.asarray(inference_delay, jnp.int32)[..., None]
    end = jnp.asarray(mask_end, jnp.int32)[..., None]
    i = jnp.arange(horizon)
    start = jnp.minimum(d, end)
    c = (end - i).astype(jnp.float32) / (end - start + 1).astype(jnp.float32)
    soft = {
        "linear": c,
        "exp": c * jnp.expm1(c) / (math.e - 1),
        "ones": jnp.ones_like(c),
        "zeros": jnp.zeros_like(c),
    }[schedule]
    return jnp.where(i < start, 1.0, jnp.where(i < end, soft, 0.0))


def guidance_weight(tau, max_guidance_weight: float) -> jax.Array:
    """min(beta, (1 - tau)/tau * 1/r_tau^2) with r_tau^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2); beta at tau = 0."""
    tau = jnp.asarray(tau, jnp.float32)
    safe_tau = jnp.where(tau > 0, tau, 1.0)
    safe_rest = jnp.where(tau < 1, 1 - tau, 1.0)
    w = (tau**2 + (1 - tau) ** 2) / (safe_tau * safe_rest)
    return jnp.where((tau > 0) & (tau < 1), jnp.minimum(w, max_guidance_weight), max_guidance_weight)


# -- integration -------------------------------------------------------------------------------------


def _euler(step_velocity, x0: jax.Array, num_steps: int) -> jax.Array:
    """x <- x + v(x, tau)/n for tau = 0, 1/n, ..., (n-1)/n, as one compiled loop."""
    dt = 1.0 / num_steps

    def body(x, i):
        tau = i.astype(jnp.float32) * dt
        return x + dt * step_velocity(x, tau), None

    x, _ = jax.lax.scan(body, x0, jnp.arange(num_steps))
    return x


def _call(velocity_fn: VelocityFn, x: jax.Array, tau) -> jax.Array:
    """velocity_fn(x, tau) with tau [B, H] by contract, or compact if the function accepts that."""
    tau = jnp.asarray(tau, jnp.float32)
    if not getattr(velocity_fn, "accepts_broadcast_time", False):
        tau = jnp.broadcast_to(tau, x.shape[:2])
    return velocity_fn(x, tau)


def _naive(velocity_fn: VelocityFn, noise: jax.Array, num_steps: int) -> jax.Array:
    return _euler(lambda x, tau: _call(velocity_fn, x, tau), noise, num_steps)


def _guided(velocity_fn, noise, prev_chunk, weights, end, beta, num_steps, use_jacobian):
    horizon = noise.shape[1]
    # Ignored entries may hold anything; keep them out of the arithmetic so NaN cannot leak in.
    valid = (jnp.arange(horizon) < jnp.asarray(end)[..., None])[..., None]
    weights = jnp.broadcast_to(weights, noise.shape[:2])[..., None]

    def step_velocity(x, tau):
        def denoise(x):
            v = _call(velocity_fn, x, tau)
            return x + (1 - tau) * v, v

        if use_jacobian:
            x1_hat, vjp_fn, v = jax.vjp(denoise, x, has_aux=True)
        else:
            x1_hat, v = denoise(x)
        error = jnp.where(valid, weights * (jnp.where(valid, prev_chunk, 0.0) - x1_hat), 0.0)
        correction = vjp_fn(error)[0] if use_jacobian else error
        return v + guidance_weight(tau, beta) * correction

    return _euler(step_velocity, noise, num_steps)


def _trained_prefix(velocity_fn, noise, prev_chunk, delay, num_steps):
    horizon = noise.shape[1]
    prefix = jnp.arange(horizon) < jnp.asarray(delay)[..., None]  # [H] or [B, H]
    prefix = prefix.reshape(-1, horizon)  # [1, H] or [B, H]
    if prev_chunk is None:
        prev_chunk = jnp.zeros_like(noise)
    clamp = lambda x: jnp.where(prefix[..., None], prev_chunk, x)  # noqa: E731

    def step_velocity(x, tau):
        if getattr(velocity_fn, "accepts_time_table", False):
            table = TimeTable(jnp.stack([jnp.asarray(tau, jnp.float32), jnp.float32(1.0)]), prefix.astype(jnp.int32))
            return velocity_fn(clamp(x), table)
        return _call(velocity_fn, clamp(x), jnp.where(prefix, 1.0, tau))

    # The velocity is evaluated on the clamped chunk; clamping once more at the end makes the returned
    # prefix equal prev_chunk exactly instead of prev_chunk + the velocity's last step.
    return clamp(_euler(step_velocity, noise, num_steps))


def _bid(method: BID, velocity_fn, noise, prev_chunk, delay, end, num_steps):
    n = method.num_samples
    noises = noise[None]
    if n > 1:
        extra = jax.random.normal(method.rng, (n - 1, *noise.shape), noise.dtype)
        noises = jnp.concatenate([noises, extra], axis=0)
    sample_all = lambda fn: jax.vmap(lambda z: _naive(fn, z, num_steps))(noises)  # noqa: E731
    strong = sample_all(velocity_fn)  # [N, B, H, A]
    if prev_chunk is None:
        return strong[0]
    weights = jnp.broadcast_to(prefix_weights(delay, end, noise.shape[1], "exp"), noise.shape[:2])
    valid = (jnp.arange(noise.shape[1]) < jnp.asarray(end)[..., None])[..., None]
    prev = jnp.where(valid, prev_chunk, 0.0)

    def backward_loss(chunks):  # [N, B]
        return jnp.sum(weights * jnp.linalg.norm(chunks - prev, axis=-1), axis=-1)

    loss = backward_loss(strong)
    if method.weak_velocity_fn is not None:
        weak = sample_all(method.weak_velocity_fn)
        k = method.top_k

        def most_coherent(chunks, chunk_loss):  # [K, B, H, A]
            idx = jax.lax.top_k(-chunk_loss.T, k)[1].T
            return jnp.take_along_axis(chunks, idx[:, :, None, None], axis=0)

        def total_distance(refs):  # [N, B]: sum over references and steps of ||a_n - ref||
            return jnp.sum(jnp.linalg.norm(strong[:, None] - refs[None], axis=-1), axis=(1, 3))

        positive = most_coherent(strong, loss)
        negative = most_coherent(weak, backward_loss(weak))
        loss = loss + (total_distance(positive) - total_distance(negative)) / n
    best = jnp.argmin(loss, axis=0)  # [B]
    return jnp.take_along_axis(strong, best[None, :, None, None], axis=0)[0]


# -- entry point -------------------------------------------------------------------------------------


def _validate(method, noise, prev_chunk, inference_delay, execute_horizon, num_steps):
    if not isinstance(method, (Naive, RTC, HardMask, JacobianFree, TrainedPrefix, BID)):
        raise ValueError(f"method must be Naive(), RTC(), HardMask(), JacobianFree(), TrainedPrefix() or BID(), got {method!r}")
    if noise.ndim != 3:
        raise ValueError(f"noise must have shape [batch, horizon, action_dim], got {noise.shape}")
    batch, horizon, _ = noise.shape
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if prev_chunk is not None and prev_chunk.shape != noise.shape:
        raise ValueError(f"prev_chunk must have the shape of noise {noise.shape}, got {prev_chunk.shape}")

    delay_shape = jnp.shape(inference_delay)
    if delay_shape not in ((), (batch,)):
        raise ValueError(f"inference_delay must be a scalar or have shape [batch={batch}], got shape {delay_shape}")
    d = _concrete(inference_delay)
    if d is not None and (np.any(d < 0) or np.any(d > horizon)):
        raise ValueError(f"inference_delay must be in [0, horizon={horizon}], got {d.tolist()}")

    if execute_horizon is not None:
        s = _concrete(execute_horizon)
        if s is not None and (s.shape != () or not 1 <= int(s) <= horizon):
            raise ValueError(f"execute_horizon must be an integer in [1, horizon={horizon}], got {s.tolist()}")
        if s is not None and d is not None and np.any(d > horizon - s) and isinstance(method, GUIDED + (TrainedPrefix,)):
            raise ValueError(
                f"inference_delay must be <= horizon - execute_horizon = {horizon - int(s)} for "
                f"{type(method).__name__} (the frozen actions must come from the previous chunk), got {d.tolist()}"
            )
    needs_prev = isinstance(method, GUIDED) or (isinstance(method, TrainedPrefix) and (d is None or np.any(d > 0)))
    if needs_prev and prev_chunk is None:
        raise ValueError(f"{type(method).__name__} needs prev_chunk")
    if isinstance(method, GUIDED + (BID,)) and prev_chunk is not None and execute_horizon is None:
        raise ValueError(f"{type(method).__name__} needs execute_horizon (the guidance ends at horizon - execute_horizon)")


def sample_chunk(
    velocity_fn: VelocityFn,
    noise: jax.Array,
    method: Method,
    *,
    prev_chunk: jax.Array | None = None,
    inference_delay=0,
    execute_horizon=None,
    num_steps: int = 5,
) -> jax.Array:
    """Integrate the flow from ``noise`` [B, H, A] to an action chunk [B, H, A] with ``method``."""
    _validate(method, noise, prev_chunk, inference_delay, execute_horizon, num_steps)
    horizon = noise.shape[1]
    end = None if execute_horizon is None else horizon - jnp.asarray(execute_horizon, jnp.int32)
    if isinstance(method, Naive):
        return _naive(velocity_fn, noise, num_steps)
    if isinstance(method, TrainedPrefix):
        return _trained_prefix(velocity_fn, noise, prev_chunk, inference_delay, num_steps)
    if isinstance(method, BID):
        return _bid(method, velocity_fn, noise, prev_chunk, inference_delay, end, num_steps)
    schedule = "zeros" if isinstance(method, HardMask) else method.schedule
    weights = prefix_weights(inference_delay, end, horizon, schedule)
    return _guided(
        velocity_fn, noise, prev_chunk, weights, end, method.max_guidance_weight, num_steps,
        use_jacobian=not isinstance(method, JacobianFree),
    )
