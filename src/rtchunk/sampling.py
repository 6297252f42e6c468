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

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rtchunk.methods import (  # noqa: F401 (the methods are part of this module's API)
    BID,
    DEFAULT_NUM_STEPS,
    GUIDED,
    RTC,
    SCHEDULES,
    HardMask,
    JacobianFree,
    Method,
    Naive,
    Schedule,
    TrainedPrefix,
    check_sample_arguments,
    check_schedule,
)

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


class TimeTable(NamedTuple):
    """Per-token flow times as a table of distinct values and an index: tau[b, h] = values[index[b, h]]."""

    values: jax.Array  # [K] float32
    index: jax.Array  # [1 or B, H] int32

    def dense(self, shape: tuple[int, int]) -> jax.Array:
        return jnp.broadcast_to(self.values[self.index], shape)


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
    check_schedule(schedule)
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
    d = _concrete(inference_delay)
    s = None if execute_horizon is None else _concrete(execute_horizon)
    check_sample_arguments(
        method, noise_shape=noise.shape, prev_shape=None if prev_chunk is None else prev_chunk.shape,
        delay_shape=jnp.shape(inference_delay), delay=d, has_execute_horizon=execute_horizon is not None,
        execute_horizon=s, num_steps=num_steps,
    )


def sample_chunk(
    velocity_fn: VelocityFn,
    noise: jax.Array,
    method: Method,
    *,
    prev_chunk: jax.Array | None = None,
    inference_delay=0,
    execute_horizon=None,
    num_steps: int = DEFAULT_NUM_STEPS,
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
