"""The methods the papers compare and their rules, backend-free (no JAX, no torch).

A method is a small frozen dataclass; ``rtchunk.sampling`` (JAX) and ``rtchunk.torch`` (PyTorch) sample
with the very same objects (PyTorch has its own ``BID``, whose noise comes from a ``torch.Generator``).
This module also holds what every caller must agree on:

- ``freezes_prefix(method)``: the guided methods and ``TrainedPrefix`` take their first d actions from the
  previous chunk, so they may only be told a delay the previous chunk covers;
- ``told_delay_bound(method, horizon, execute_horizon)``: the largest delay a method may be told,
  H - s for those, H for the rest;
- ``check_sample_arguments``: the argument check both samplers run;
- the registry: method names (as commands, CSVs and the server use them) -> method objects.

Indices, for a chunk of H actions after s of the previous chunk were executed and d more will run while
the new one is computed::

    previous chunk (shifted):  [ frozen: 0 .. d-1 | soft overlap: d .. H-s-1 | unused: H-s .. H-1 ]
    new chunk:                 [ = previous       | pulled towards previous  | free              ]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Union

import numpy as np

from rtchunk.choices import unknown_choice

Schedule = Literal["exp", "linear", "ones", "zeros"]
SCHEDULES: tuple[str, ...] = ("exp", "linear", "ones", "zeros")
DEFAULT_GUIDANCE_WEIGHT = 5.0
"""beta, the papers' maximum guidance weight."""
DEFAULT_NUM_STEPS = 5
"""Euler steps of the flow ODE (the papers: 5)."""


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def check_guidance_weight(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"max_guidance_weight must be a finite number > 0, got {beta!r}")


def check_num_steps(num_steps) -> None:
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")


@dataclasses.dataclass(frozen=True)
class Naive:
    """Plain Euler integration; ignores the previous chunk."""


@dataclasses.dataclass(frozen=True)
class RTC:
    """Real-time chunking: guided inpainting of the previous chunk with the true VJP (paper Eqs. 1-5)."""

    schedule: Schedule = "exp"
    max_guidance_weight: float = DEFAULT_GUIDANCE_WEIGHT

    def __post_init__(self):
        check_schedule(self.schedule)
        check_guidance_weight(self.max_guidance_weight)


@dataclasses.dataclass(frozen=True)
class HardMask:
    """RTC guidance on the frozen prefix only (the ``zeros`` schedule)."""

    max_guidance_weight: float = DEFAULT_GUIDANCE_WEIGHT

    def __post_init__(self):
        check_guidance_weight(self.max_guidance_weight)


@dataclasses.dataclass(frozen=True)
class JacobianFree:
    """RTC with the network's Jacobian replaced by the identity: the correction is the weighted error itself.

    No backward pass, so it costs about a plain Euler step. This is what an implementation computes when
    the velocity is evaluated before x_t is marked as requiring gradients.
    """

    schedule: Schedule = "exp"
    max_guidance_weight: float = DEFAULT_GUIDANCE_WEIGHT

    def __post_init__(self):
        check_schedule(self.schedule)
        check_guidance_weight(self.max_guidance_weight)


@dataclasses.dataclass(frozen=True)
class TrainedPrefix:
    """Training-time RTC inference: the first d tokens are the previous chunk with flow time 1."""


def check_bid(num_samples, top_k, has_weak_policy: bool, names=("num_samples", "top_k")) -> None:
    n, k = names
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"{n} must be an integer >= 1, got {num_samples!r}")
    if has_weak_policy and not 1 <= top_k <= num_samples:
        raise ValueError(f"{k} must be in [1, {n}={num_samples}], got {top_k}")


@dataclasses.dataclass(frozen=True, eq=False)
class BID:
    """Bidirectional decoding (JAX): sample ``num_samples`` chunks, keep the one that best continues the
    previous chunk (backward coherence, exp-weighted distance) and, with a weak policy, that sits closest to
    the strong policy's ``top_k`` most coherent samples and farthest from the weak policy's (forward contrast).

    Candidate 0 uses the ``noise`` passed to ``sample_chunk``; the other candidates draw theirs from
    ``rng`` (a JAX key), and the weak policy is sampled from the same noises as the strong one. With
    ``num_samples=1`` BID is exactly Naive. Defaults are the RTC paper's setting (N=32, K=3); the public
    code's default is N=16 without a weak policy. (``rtchunk.torch.BID`` is the PyTorch twin.)
    """

    rng: Any = None
    num_samples: int = 32
    weak_velocity_fn: Callable | None = None
    top_k: int = 3

    def __post_init__(self):
        check_bid(self.num_samples, self.top_k, self.weak_velocity_fn is not None)
        if self.num_samples > 1 and self.rng is None:
            raise ValueError("BID with num_samples > 1 needs rng (a jax.random key) to draw the extra candidates")


Method = Union[Naive, RTC, HardMask, JacobianFree, TrainedPrefix, BID]
GUIDED = (RTC, HardMask, JacobianFree)
"""Methods that inpaint the previous chunk with guidance."""
PREFIX_FREEZING = GUIDED + (TrainedPrefix,)


def freezes_prefix(method) -> bool:
    """Whether the method (an object, or a registered name such as a remote policy's) takes its first d
    actions from the previous chunk (so d <= H - s)."""
    if isinstance(method, str):
        return method in PREFIX_FREEZING_NAMES
    return isinstance(method, PREFIX_FREEZING)


def told_delay_bound(method, horizon: int, execute_horizon: int) -> int:
    """The largest delay ``method`` (an object or a registered name) may be told: H - s when it freezes a
    prefix of the previous chunk (whose entries at and beyond H - s are unused), else H. ``method=None`` (a policy whose method is unknown) gets
    H - s: no more than the previous chunk covers."""
    if method is None or freezes_prefix(method):
        return horizon - execute_horizon
    return horizon


def check_sample_arguments(method, *, noise_shape, prev_shape, delay_shape, delay, has_execute_horizon: bool,
                           execute_horizon, num_steps, bid_class: type = BID) -> None:
    """What both samplers check before sampling. ``delay`` and ``execute_horizon`` are numpy values, or
    None where they are not known yet (traced inside ``jit``); ``has_execute_horizon`` says whether one was
    given at all; ``bid_class`` is the backend's BID."""
    if not isinstance(method, (Naive, RTC, HardMask, JacobianFree, TrainedPrefix, bid_class)):
        raise ValueError(f"method must be Naive(), RTC(), HardMask(), JacobianFree(), TrainedPrefix() or BID(), "
                         f"got {method!r}")
    if len(noise_shape) != 3:
        raise ValueError(f"noise must have shape [batch, horizon, action_dim], got {tuple(noise_shape)}")
    batch, horizon, _ = noise_shape
    check_num_steps(num_steps)
    if prev_shape is not None and tuple(prev_shape) != tuple(noise_shape):
        raise ValueError(f"prev_chunk must have the shape of noise {tuple(noise_shape)}, got {tuple(prev_shape)}")
    if tuple(delay_shape) not in ((), (batch,)):
        raise ValueError(f"inference_delay must be a scalar or have shape [batch={batch}], got shape {tuple(delay_shape)}")
    if delay is not None and (np.any(delay < 0) or np.any(delay > horizon)):
        raise ValueError(f"inference_delay must be in [0, horizon={horizon}], got {delay.tolist()}")
    if execute_horizon is not None:
        s = execute_horizon
        if s.shape != () or not 1 <= int(s) <= horizon:
            raise ValueError(f"execute_horizon must be an integer in [1, horizon={horizon}], got {s.tolist()}")
        if delay is not None and freezes_prefix(method) and np.any(delay > told_delay_bound(method, horizon, int(s))):
            raise ValueError(
                f"inference_delay must be <= horizon - execute_horizon = {horizon - int(s)} for "
                f"{type(method).__name__} (the frozen actions must come from the previous chunk), got {delay.tolist()}"
            )
    needs_prev = isinstance(method, GUIDED) or (isinstance(method, TrainedPrefix) and (delay is None or np.any(delay > 0)))
    if needs_prev and prev_shape is None:
        raise ValueError(f"{type(method).__name__} needs prev_chunk")
    if isinstance(method, GUIDED + (bid_class,)) and prev_shape is not None and not has_execute_horizon:
        raise ValueError(f"{type(method).__name__} needs execute_horizon (the guidance ends at horizon - execute_horizon)")


# -- the registry: names as commands, result files and the server use them -------------------------------


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    """The knobs of the named methods (defaults: the papers')."""

    max_guidance_weight: float = DEFAULT_GUIDANCE_WEIGHT
    """beta, the guided methods' maximum guidance weight."""
    bid_samples: int = 32
    """BID's N: candidate chunks per step."""
    bid_top_k: int = 3
    """BID's K: the most coherent candidates of each policy used for the forward contrast."""
    ensemble_decay: float = 0.01
    """Temporal ensembling's exponential weight decay over the chunks covering a step."""

    def __post_init__(self):
        check_guidance_weight(self.max_guidance_weight)
        # top_k only matters with more than one candidate (with N = 1 BID is Naive).
        check_bid(self.bid_samples, self.bid_top_k, has_weak_policy=self.bid_samples > 1,
                  names=("bid_samples", "bid_top_k"))
        if not (math.isfinite(self.ensemble_decay) and self.ensemble_decay >= 0):
            raise ValueError(f"ensemble_decay must be a finite number >= 0, got {self.ensemble_decay}")


@dataclasses.dataclass(frozen=True)
class NamedMethod:
    """A registry entry: how to build the sampler's method, and how its chunks are executed."""

    build: Callable[[MethodSettings, Any], Method]
    execution: Literal["latest", "ensemble"] = "latest"
    """``latest``: execute the newest chunk (every method but one); ``ensemble``: temporal ensembling,
    the average of every chunk that covers the step (only the benchmark harness executes it)."""
    description: str = ""


REGISTRY: dict[str, NamedMethod] = {
    "naive": NamedMethod(lambda st, rng: Naive(), description="plain sampling, ignores the previous chunk"),
    "rtc": NamedMethod(lambda st, rng: RTC("exp", st.max_guidance_weight), description="RTC, exp schedule"),
    "rtc_linear": NamedMethod(lambda st, rng: RTC("linear", st.max_guidance_weight),
                              description="RTC, linear schedule"),
    "hard_mask": NamedMethod(lambda st, rng: HardMask(st.max_guidance_weight),
                             description="guidance on the frozen prefix only"),
    "jacobian_free": NamedMethod(lambda st, rng: JacobianFree("exp", st.max_guidance_weight),
                                 description="RTC without the VJP"),
    "bid": NamedMethod(lambda st, rng: BID(rng=rng, num_samples=st.bid_samples, top_k=st.bid_top_k),
                       description="bidirectional decoding"),
    "temporal_ensembling": NamedMethod(lambda st, rng: Naive(), execution="ensemble",
                                       description="naive chunks, executed as an exponentially weighted average"),
    "trained_prefix": NamedMethod(lambda st, rng: TrainedPrefix(),
                                  description="training-time RTC (a model trained with TrainingDelays)"),
}
METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)
PREFIX_FREEZING_NAMES = frozenset(
    name for name, entry in REGISTRY.items() if isinstance(entry.build(MethodSettings(bid_samples=1), None), PREFIX_FREEZING)
)


def check_method_names(names, parameter: str = "--methods", allowed=METHOD_NAMES) -> tuple[str, ...]:
    """``names`` if each is a registered method (and in ``allowed``), else a ValueError with "did you mean"."""
    if isinstance(names, str):
        names = (names,)
    for name in names:
        if name not in allowed:
            raise unknown_choice(parameter, name, allowed)
    if len(set(names)) != len(names):
        raise ValueError(f"{parameter}: each method at most once, got {list(names)}")
    return tuple(names)


def make_method(name: str, settings: MethodSettings = MethodSettings(), *, rng=None) -> Method:
    """The method object for a registered name; ``rng`` is BID's JAX key (needed for more than one sample)."""
    if name not in REGISTRY:
        raise unknown_choice("method", name, METHOD_NAMES)
    return REGISTRY[name].build(settings, rng)


def execution(name: str) -> str:
    """How the named method's chunks are executed: ``latest`` or ``ensemble``."""
    if name not in REGISTRY:
        raise unknown_choice("method", name, METHOD_NAMES)
    return REGISTRY[name].execution
