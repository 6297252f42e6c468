"""The samplers of ``rtchunk.sampling`` for PyTorch velocity functions, name for name.

``sample_chunk(velocity_fn, noise, method, ...)`` integrates the flow ODE with ``num_steps`` Euler steps
and returns a chunk [B, H, A]; ``velocity_fn(x_t [B, H, A], t [B, H]) -> velocity [B, H, A]`` is any
PyTorch function with the observation closed over (a ``velocity_fn`` that sets
``accepts_broadcast_time = True`` may receive t at its smallest broadcastable shape, as in JAX). Batch
elements must not interact (put the model in ``eval()`` mode: no batch statistics), because the guided
methods take one VJP of the whole batch, which is the per-sample VJP exactly when samples are independent.

``time_convention`` says what ``velocity_fn`` expects:

- ``"noise_at_0"`` (the papers, this project): t = 0 is noise, t = 1 the actions,
  x_t = (1 - t) noise + t action and the velocity is ``action - noise``; integrated from 0 to 1.
- ``"noise_at_1"`` (LeRobot, openpi's PyTorch port): t = 1 is noise, x_t = t noise + (1 - t) action,
  the velocity is ``noise - action``; integrated from 1 to 0.

The conversion happens at this edge: ``v_0(x, tau) = -v_1(x, 1 - tau)``, so every quantity follows
from one definition: the clean estimate ``x + (1 - tau) v_0 = x - t v_1``, the correction (added to
``v_0``, i.e. subtracted from ``v_1``), the guidance weight's tau (``1 - t``) and the clean prefix's flow
time (tau = 1, i.e. t = 0).

The methods ``Naive``, ``RTC``, ``HardMask``, ``JacobianFree`` and ``TrainedPrefix`` are the very classes
of ``rtchunk.methods`` (which ``rtchunk.sampling`` uses too); ``BID`` is its own class here because it draws candidate noise with a
``torch.Generator`` and its weak policy is a PyTorch function.

Autograd: ``sample_chunk`` runs under ``torch.no_grad()``; the chunk never requires grad and no
gradient of a parameter is computed or written. RTC and HardMask take the true VJP of the denoiser with
respect to x_t only, once per flow step: with ``torch.autograd.grad`` (inputs: x_t alone) when autograd
can record, and with ``torch.func.vjp`` under ``torch.inference_mode()``, where it cannot (functorch
tracks its own input whatever the grad mode). Both give the same chunk, so the guided methods work the
same under ``torch.no_grad()``, ``torch.inference_mode()`` or neither. A velocity function cut off from
x_t inside (its own ``torch.no_grad()``) raises instead of silently giving the JacobianFree correction.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, NamedTuple, Union

import numpy as np
import torch

from rtchunk import methods as _methods
from rtchunk.methods import (
    DEFAULT_NUM_STEPS,
    GUIDED,
    RTC,
    SCHEDULES,
    HardMask,
    JacobianFree,
    Naive,
    Schedule,
    TrainedPrefix,
    check_bid,
    check_sample_arguments,
    check_schedule,
)

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TimeConvention = Literal["noise_at_0", "noise_at_1"]
TIME_CONVENTIONS: tuple[str, ...] = ("noise_at_0", "noise_at_1")

__all__ = [
    "BID",
    "RTC",
    "SCHEDULES",
    "TIME_CONVENTIONS",
    "HardMask",
    "JacobianFree",
    "Naive",
    "TrainedPrefix",
    "guidance_weight",
    "prefix_weights",
    "sample_chunk",
]


@dataclasses.dataclass(frozen=True, eq=False)
class BID:
    """Bidirectional decoding, as ``rtchunk.sampling.BID``, for PyTorch velocity functions.

    Candidate 0 uses the ``noise`` passed to ``sample_chunk``; candidates 1..N-1 use ``candidate_noise``
    ([N - 1, B, H, A]) when given, else noise drawn with ``generator`` (a ``torch.Generator`` on the noise's
    device). The weak policy (a velocity function in the same time convention) is sampled from the same
    noises as the strong one.

    Candidates are integrated ``candidates_per_call`` at a time with ``torch.func.vmap`` (``None``: all at
    once). ``1`` integrates them one after another without vmap, for velocity functions vmap cannot run
    (``.item()``, data-dependent control flow, in-place updates of captured state). The result is the
    same; the speed is not: on a CPU, all at once is ~3x faster than one at a time at batch 1, while at
    batch 64 one at a time is ~1.5x faster (the vmapped activations outgrow the caches).
    """

    generator: torch.Generator | None = None
    num_samples: int = 32
    weak_velocity_fn: VelocityFn | None = None
    top_k: int = 3
    candidate_noise: torch.Tensor | None = None
    candidates_per_call: int | None = None

    def __post_init__(self):
        if self.candidates_per_call is not None and (
            not isinstance(self.candidates_per_call, (int, np.integer)) or self.candidates_per_call < 1
        ):
            raise ValueError(f"candidates_per_call must be None or an integer >= 1, got {self.candidates_per_call!r}")
        check_bid(self.num_samples, self.top_k, self.weak_velocity_fn is not None)
        if self.num_samples > 1 and self.generator is None and self.candidate_noise is None:
            raise ValueError(
                "BID with num_samples > 1 needs generator (a torch.Generator) or candidate_noise to draw the "
                "extra candidates"
            )


class TimeTable(NamedTuple):
    """Per-token flow times as distinct values and an index, as ``rtchunk.sampling.TimeTable``: passed to a
    velocity function that sets ``accepts_time_table`` (TrainedPrefix's prefix time and the shared time)."""

    values: torch.Tensor  # [K]
    index: torch.Tensor  # [1 or B, H] long

    def dense(self, shape) -> torch.Tensor:
        return self.values[self.index].expand(shape)


Method = Union[Naive, RTC, HardMask, JacobianFree, TrainedPrefix, BID]


# -- weights -----------------------------------------------------------------------------------------


def _concrete(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _device_of(*values) -> torch.device | None:
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.device
    return None


def _int_tensor(value, device) -> torch.Tensor:
    # JAX casts with jnp.asarray(value, int32), which truncates; do the same.
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.int64)
    return torch.as_tensor(np.asarray(value).astype(np.int64), device=device)


def prefix_weights(inference_delay, mask_end, horizon: int, schedule: Schedule = "exp", *, device=None) -> torch.Tensor:
    """Paper Eq. 5, as ``rtchunk.sampling.prefix_weights``: float32 [..., horizon].

    ``device`` defaults to that of the first tensor argument (else the CPU).
    """
    check_schedule(schedule)
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    for name, value in (("inference_delay", inference_delay), ("mask_end", mask_end)):
        v = _concrete(value)
        if np.any(v < 0) or np.any(v > horizon):
            raise ValueError(f"{name} must be in [0, horizon={horizon}], got {v.tolist()}")
    device = device if device is not None else _device_of(inference_delay, mask_end)
    d = _int_tensor(inference_delay, device)[..., None]
    end = _int_tensor(mask_end, device)[..., None]
    i = torch.arange(horizon, device=device)
    start = torch.minimum(d, end)
    c = (end - i).to(torch.float32) / (end - start + 1).to(torch.float32)
    if schedule == "linear":
        soft = c
    elif schedule == "exp":
        soft = c * torch.expm1(c) / (math.e - 1)
    elif schedule == "ones":
        soft = torch.ones_like(c)
    else:  # zeros
        soft = torch.zeros_like(c)
    one, zero = c.new_ones(()), c.new_zeros(())
    return torch.where(i < start, one, torch.where(i < end, soft, zero))


def guidance_weight(tau, max_guidance_weight: float) -> torch.Tensor:
    """min(beta, (1 - tau)/tau * 1/r_tau^2), beta at tau in {0, 1}; tau in the papers' convention (0 = noise).

    The formula is symmetric in tau <-> 1 - tau, so with ``noise_at_1`` it gives the same weight at t.
    """
    tau = torch.as_tensor(tau, dtype=torch.float32)
    safe_tau = torch.where(tau > 0, tau, torch.ones_like(tau))
    safe_rest = torch.where(tau < 1, 1 - tau, torch.ones_like(tau))
    w = (tau**2 + (1 - tau) ** 2) / (safe_tau * safe_rest)
    beta = torch.full_like(tau, float(max_guidance_weight))
    return torch.where((tau > 0) & (tau < 1), torch.minimum(w, beta), beta)


# -- integration -------------------------------------------------------------------------------------


def _in_noise_at_0(velocity_fn: VelocityFn, time_convention: str) -> VelocityFn:
    """The velocity function in the papers' convention; the one place the convention is converted."""
    if time_convention == "noise_at_0":
        return velocity_fn

    def velocity_noise_at_0(x, tau):
        if isinstance(tau, TimeTable):
            return -velocity_fn(x, TimeTable(1 - tau.values, tau.index))
        return -velocity_fn(x, 1 - tau)

    velocity_noise_at_0.accepts_broadcast_time = getattr(velocity_fn, "accepts_broadcast_time", False)
    velocity_noise_at_0.accepts_time_table = getattr(velocity_fn, "accepts_time_table", False)
    return velocity_noise_at_0


def _flow_times(num_steps: int, device) -> torch.Tensor:
    """tau = 0, 1/n, ..., (n-1)/n in float32, computed as JAX does (float32(i) * (1/n))."""
    return torch.arange(num_steps, dtype=torch.float32, device=device) * (1.0 / num_steps)


def _euler(step_velocity, x0: torch.Tensor, num_steps: int, step_size: torch.Tensor | None = None) -> torch.Tensor:
    """x <- x + v(x, tau, i)/n for step i at tau = i/n; ``step_size`` (broadcast against x) replaces the
    1/n, e.g. with zeros where entries must not move."""
    dt = 1.0 / num_steps
    taus = _flow_times(num_steps, x0.device)
    x = x0
    for i in range(num_steps):
        # One fused operation per step, not two: it counts at batch 1.
        v = step_velocity(x, taus[i], i)
        x = torch.add(x, v, alpha=dt) if step_size is None else torch.addcmul(x, step_size, v)
    return x


def _call(velocity_fn: VelocityFn, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """velocity_fn(x, tau) with tau [B, H] by contract, or compact if the function accepts that (a
    ``TimeTable`` goes only to functions that accept one)."""
    if not isinstance(tau, TimeTable) and not getattr(velocity_fn, "accepts_broadcast_time", False):
        tau = tau.expand(x.shape[:2])
    return velocity_fn(x, tau)


def _naive(velocity_fn, noise, num_steps):
    return _euler(lambda x, tau, i: _call(velocity_fn, x, tau), noise, num_steps)


def _guided(velocity_fn, noise, prev_chunk, weights, end, beta, num_steps, use_jacobian):
    horizon = noise.shape[1]
    # Ignored entries may hold anything; keep them out of the arithmetic so NaN cannot leak in.
    valid = (torch.arange(horizon, device=noise.device) < end[..., None])[..., None]
    weights = weights.to(noise.dtype).expand(noise.shape[:2])[..., None]
    prev = torch.where(valid, prev_chunk, torch.zeros_like(prev_chunk))
    zero = noise.new_zeros(())
    # Per-step scalars as Python numbers, computed once: a few small tensor ops per step are a visible
    # share of a step at batch 1 on the CPU. Their float32 values are kept, so results match JAX.
    taus = _flow_times(num_steps, "cpu")
    rest = (1 - taus).tolist()
    guidance = guidance_weight(taus, beta).tolist()

    def denoise(x, tau, i):
        v = _call(velocity_fn, x, tau)
        if use_jacobian and not v.requires_grad:
            # Inside either VJP below x is tracked, so this means the velocity was cut off from x (a
            # torch.no_grad() or .detach() inside velocity_fn): J^T e would silently become e (JacobianFree).
            raise ValueError(
                "velocity_fn's output does not depend differentiably on x_t (does it run under torch.no_grad() "
                "or detach?), so RTC/HardMask cannot take its VJP; remove that inside velocity_fn (sample_chunk "
                "manages grad mode itself) or use JacobianFree()"
            )
        return x + rest[i] * v, v

    def error_of(x1_hat):
        return torch.where(valid, weights * (prev - x1_hat), zero)

    def step_velocity(x, tau, i):
        if not use_jacobian:
            x1_hat, v = denoise(x, tau, i)
            return v + guidance[i] * error_of(x1_hat)
        # Both paths differentiate the velocity *as a function of x*: x requires grad (or is functorch's
        # tracked input) before the velocity is computed, so the "compute v first, then mark x as
        # requiring grad" slip (which turns J^T e into e) cannot happen; tests/test_torch_sampling.py pins
        # the difference against JacobianFree.
        if torch.is_inference_mode_enabled():
            # Autograd cannot record here; functorch's transform tracks its own input in any grad mode.
            x1_hat, vjp_fn, v = torch.func.vjp(lambda x: denoise(x, tau, i), x, has_aux=True)
            return v + guidance[i] * vjp_fn(error_of(x1_hat))[0]
        # Plain autograd, with respect to x only: ~1.2x faster than torch.func.vjp at batch 1 on a CPU
        # (no functorch dispatch per operation). Parameters that require grad are graph leaves that the
        # backward pass skips (autograd.grad computes only d/dx); .grad is never written.
        with torch.enable_grad():
            x = (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
            x1_hat, v = denoise(x, tau, i)
            (correction,) = torch.autograd.grad(x1_hat, x, error_of(x1_hat.detach()))
        return v.detach() + guidance[i] * correction

    return _euler(step_velocity, noise, num_steps)


def _trained_prefix(velocity_fn, noise, prev_chunk, delay, num_steps):
    horizon = noise.shape[1]
    prefix = (torch.arange(horizon, device=noise.device) < delay[..., None]).reshape(-1, horizon)  # [1|B, H]
    if prev_chunk is None:
        prev_chunk = torch.zeros_like(noise)
    # The prefix starts clean and its Euler steps are multiplied by zero, so x is the clamped chunk at every
    # step with one fused operation (x + step_size * v) where clamping would add a select and a multiply.
    x0 = torch.where(prefix[..., None], prev_chunk, noise)
    step_size = torch.where(prefix, 0.0, 1.0 / num_steps).to(noise.dtype)[..., None]  # [1|B, H, 1]

    # Per-token times take two values, the flow time and the prefix's 1: a velocity function that accepts
    # a table computes the time features (and every modulation) for those two only, instead of for each
    # of the [1 or B, H] tokens. The tables' values are stacked once for all steps.
    tabled = getattr(velocity_fn, "accepts_time_table", False)
    if tabled:
        taus = _flow_times(num_steps, noise.device)
        values = torch.stack([taus, torch.ones_like(taus)], dim=1)  # [n, 2]
        index = prefix.long()
    one = torch.ones((), dtype=noise.dtype, device=noise.device)

    def step_velocity(x, tau, i):
        return _call(velocity_fn, x, TimeTable(values[i], index) if tabled else torch.where(prefix, one, tau))

    x = _euler(step_velocity, x0, num_steps, step_size)
    # As in JAX: the returned prefix is prev_chunk exactly, even if the velocity there was not finite.
    return torch.where(prefix[..., None], prev_chunk, x)


def _bid(method: BID, velocity_fn, weak_velocity_fn, noise, prev_chunk, delay, end, num_steps):
    n = method.num_samples
    noises = noise[None]
    if n > 1:
        if method.candidate_noise is not None:
            extra = torch.as_tensor(method.candidate_noise, dtype=noise.dtype, device=noise.device)
            if extra.shape != (n - 1, *noise.shape):
                raise ValueError(
                    f"candidate_noise must have shape [num_samples - 1, *noise.shape] = {[n - 1, *noise.shape]}, "
                    f"got {list(extra.shape)}"
                )
        else:
            extra = torch.randn((n - 1, *noise.shape), generator=method.generator, dtype=noise.dtype, device=noise.device)
        noises = torch.cat([noises, extra], dim=0)

    def sample_all(fn):  # [N, B, H, A]
        group = method.candidates_per_call or n
        if group == 1:
            return torch.stack([_naive(fn, z, num_steps) for z in noises])
        sample_group = torch.func.vmap(lambda z: _naive(fn, z, num_steps))
        return torch.cat([sample_group(noises[k : k + group]) for k in range(0, n, group)])

    strong = sample_all(velocity_fn)
    if prev_chunk is None:
        return strong[0]
    horizon = noise.shape[1]
    weights = prefix_weights(delay, end, horizon, "exp").to(noise.dtype).expand(noise.shape[:2])
    valid = (torch.arange(horizon, device=noise.device) < end[..., None])[..., None]
    prev = torch.where(valid, prev_chunk, torch.zeros_like(prev_chunk))

    def backward_loss(chunks):  # [N, B]
        return torch.sum(weights * torch.linalg.vector_norm(chunks - prev, dim=-1), dim=-1)

    loss = backward_loss(strong)
    if weak_velocity_fn is not None:
        weak = sample_all(weak_velocity_fn)
        k = method.top_k

        def most_coherent(chunks, chunk_loss):  # [K, B, H, A]
            idx = torch.topk(-chunk_loss.T, k, dim=-1).indices.T  # [K, B]
            return torch.take_along_dim(chunks, idx[:, :, None, None], dim=0)

        def total_distance(refs):  # [N, B]: sum over references and steps of ||a_n - ref||
            return torch.sum(torch.linalg.vector_norm(strong[:, None] - refs[None], dim=-1), dim=(1, 3))

        positive = most_coherent(strong, loss)
        negative = most_coherent(weak, backward_loss(weak))
        loss = loss + (total_distance(positive) - total_distance(negative)) / n
    best = torch.argmin(loss, dim=0)  # [B]
    return torch.take_along_dim(strong, best[None, :, None, None], dim=0)[0]


# -- entry point -------------------------------------------------------------------------------------


def _validate(method, noise, prev_chunk, inference_delay, execute_horizon, num_steps, time_convention):
    if isinstance(method, _methods.BID):
        raise ValueError(
            "method is rtchunk.sampling.BID (JAX: jax key, JAX weak policy); use rtchunk.torch.BID "
            "(torch.Generator or candidate_noise) with rtchunk.torch.sample_chunk"
        )
    if time_convention not in TIME_CONVENTIONS:
        raise ValueError(f"time_convention must be one of {TIME_CONVENTIONS}, got {time_convention!r}")
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise ValueError(f"noise must be a floating-point torch.Tensor, got {type(noise).__name__}")
    check_sample_arguments(
        method, noise_shape=tuple(noise.shape), prev_shape=None if prev_chunk is None else tuple(prev_chunk.shape),
        delay_shape=np.shape(_concrete(inference_delay)), delay=_concrete(inference_delay),
        has_execute_horizon=execute_horizon is not None,
        execute_horizon=None if execute_horizon is None else _concrete(execute_horizon), num_steps=num_steps,
        bid_class=BID,
    )


def sample_chunk(
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    method: Method,
    *,
    prev_chunk: torch.Tensor | None = None,
    inference_delay=0,
    execute_horizon=None,
    num_steps: int = DEFAULT_NUM_STEPS,
    time_convention: TimeConvention = "noise_at_0",
) -> torch.Tensor:
    """Integrate the flow from ``noise`` [B, H, A] to an action chunk [B, H, A] with ``method``.

    Same contract as ``rtchunk.sampling.sample_chunk``: ``prev_chunk`` is already shifted (index 0
    executes at the new chunk's first step) and may hold anything (NaN included) at and beyond
    ``H - execute_horizon``; ``inference_delay`` is an int or an integer tensor/array of shape [] or [B].
    ``prev_chunk`` may be a tensor or an array; it is moved to the noise's device and dtype.
    """
    if prev_chunk is not None and isinstance(noise, torch.Tensor):
        prev_chunk = torch.as_tensor(prev_chunk, dtype=noise.dtype, device=noise.device)
    _validate(method, noise, prev_chunk, inference_delay, execute_horizon, num_steps, time_convention)
    horizon = noise.shape[1]
    device = noise.device
    delay = _int_tensor(inference_delay, device)
    end = None if execute_horizon is None else horizon - _int_tensor(execute_horizon, device)
    fn = _in_noise_at_0(velocity_fn, time_convention)
    with torch.no_grad():
        if isinstance(method, Naive):
            return _naive(fn, noise, num_steps)
        if isinstance(method, TrainedPrefix):
            return _trained_prefix(fn, noise, prev_chunk, delay, num_steps)
        if isinstance(method, BID):
            weak = None if method.weak_velocity_fn is None else _in_noise_at_0(method.weak_velocity_fn, time_convention)
            return _bid(method, fn, weak, noise, prev_chunk, delay, end, num_steps)
        schedule = "zeros" if isinstance(method, HardMask) else method.schedule
        weights = prefix_weights(delay, end, horizon, schedule)
        return _guided(
            fn, noise, prev_chunk, weights, end, method.max_guidance_weight, num_steps,
            use_jacobian=not isinstance(method, JacobianFree),
        )
