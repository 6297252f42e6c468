"""Training-time RTC for PyTorch training loops: the first d tokens of each chunk are given clean.

A training step with prefix conditioning (Black et al., "Training-Time Action Conditioning"):

1. draw a delay d per sample (``sample_delays``; the distribution is ``rtchunk.delays.TrainingDelays``),
2. give every token its own flow time, with the clean time on the prefix (``token_flow_time``),
3. noise the chunk at those times (``noisy_chunk``): the prefix tokens come out as the clean actions,
4. regress the velocity (``velocity_target``) and average the loss over the postfix only (``postfix_mean``).

``prefix_conditioned_inputs`` does 2-3 and the target in one call. Every function takes the model's
``time_convention``: ``noise_at_0`` (the papers: clean time 1, target ``action - noise``) or ``noise_at_1``
(LeRobot, openpi PyTorch: clean time 0, target ``noise - action``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rtchunk.delays import TrainingDelays
from rtchunk.torch.sampling import TIME_CONVENTIONS, TimeConvention

__all__ = [
    "PrefixConditionedInputs",
    "TrainingDelays",
    "clean_time",
    "noisy_chunk",
    "postfix_mask",
    "postfix_mean",
    "prefix_conditioned_inputs",
    "sample_delays",
    "token_flow_time",
    "velocity_target",
]


def _check_convention(time_convention: str):
    if time_convention not in TIME_CONVENTIONS:
        raise ValueError(f"time_convention must be one of {TIME_CONVENTIONS}, got {time_convention!r}")


def clean_time(time_convention: TimeConvention = "noise_at_0") -> float:
    """The flow time of a clean (data) token: 1 with ``noise_at_0``, 0 with ``noise_at_1``."""
    _check_convention(time_convention)
    return 1.0 if time_convention == "noise_at_0" else 0.0


def sample_delays(
    delays: TrainingDelays,
    batch: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One delay per sample, int64 [batch], distributed as ``delays.probabilities()`` (uniform or exp)."""
    if not isinstance(delays, TrainingDelays):
        raise ValueError(f"delays must be a rtchunk.model.TrainingDelays, got {type(delays).__name__}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    p = torch.as_tensor(delays.probabilities(), dtype=torch.float64)
    # Drawn on the CPU (multinomial needs the generator on the probabilities' device), then moved.
    cpu_generator = generator if generator is None or generator.device.type == "cpu" else None
    if generator is not None and cpu_generator is None:
        raise ValueError("generator must be a CPU torch.Generator (delays are drawn on the CPU)")
    return torch.multinomial(p, batch, replacement=True, generator=cpu_generator).to(device=device)


def _check_delay(delay: torch.Tensor, horizon: int) -> torch.Tensor:
    delay = torch.as_tensor(delay)
    if delay.ndim != 1 or delay.is_floating_point():
        raise ValueError(f"delay must be an integer tensor of shape [batch], got {delay.dtype} of shape {tuple(delay.shape)}")
    if bool(torch.any(delay < 0)) or bool(torch.any(delay >= horizon)):
        raise ValueError(f"delay must be in [0, horizon - 1 = {horizon - 1}] so a postfix remains, got {delay.tolist()}")
    return delay


def postfix_mask(delay: torch.Tensor, horizon: int) -> torch.Tensor:
    """bool [B, H]: True where the token is trained (index >= the sample's delay)."""
    delay = _check_delay(delay, horizon)
    return torch.arange(horizon, device=delay.device)[None, :] >= delay[:, None]


def token_flow_time(
    time: torch.Tensor, delay: torch.Tensor, horizon: int, time_convention: TimeConvention = "noise_at_0"
) -> torch.Tensor:
    """Per-token flow time [B, H]: the sample's ``time`` ([B] or [B, 1]) on the postfix, the clean time on the prefix."""
    clean = clean_time(time_convention)
    postfix = postfix_mask(delay, horizon)
    time = torch.as_tensor(time)
    if time.ndim == 2 and time.shape[1] == 1:
        time = time[:, 0]
    if time.shape != (postfix.shape[0],):
        raise ValueError(f"time must have shape [batch] or [batch, 1] with batch = {postfix.shape[0]}, got {tuple(time.shape)}")
    time = time.to(postfix.device)
    return torch.where(postfix, time[:, None], torch.full_like(time[:, None], clean))


def noisy_chunk(
    actions: torch.Tensor, noise: torch.Tensor, token_time: torch.Tensor, time_convention: TimeConvention = "noise_at_0"
) -> torch.Tensor:
    """x_t per token: (1 - t) noise + t action (``noise_at_0``) or t noise + (1 - t) action (``noise_at_1``)."""
    _check_convention(time_convention)
    t = token_time[..., None].to(actions.dtype)
    if time_convention == "noise_at_0":
        return (1 - t) * noise + t * actions
    return t * noise + (1 - t) * actions


def velocity_target(actions: torch.Tensor, noise: torch.Tensor, time_convention: TimeConvention = "noise_at_0") -> torch.Tensor:
    """The flow-matching regression target: ``action - noise`` (``noise_at_0``) or ``noise - action``."""
    _check_convention(time_convention)
    return actions - noise if time_convention == "noise_at_0" else noise - actions


def postfix_mean(loss: torch.Tensor, delay: torch.Tensor) -> torch.Tensor:
    """Mean of a per-element loss [B, H, ...] over the postfix tokens only (and all trailing dimensions).

    Prefix entries are excluded with ``where``, so a NaN or inf there cannot reach the mean or its gradient.
    """
    if loss.ndim < 2:
        raise ValueError(f"loss must have shape [batch, horizon, ...], got {tuple(loss.shape)}")
    postfix = postfix_mask(torch.as_tensor(delay).to(loss.device), loss.shape[1])
    if postfix.shape[0] != loss.shape[0]:
        raise ValueError(f"delay must have shape [batch = {loss.shape[0]}], got {tuple(postfix.shape[:1])}")
    mask = postfix.reshape(*postfix.shape, *([1] * (loss.ndim - 2))).expand(loss.shape)
    total = torch.where(mask, loss, torch.zeros_like(loss)).sum()
    return total / mask.sum()


class PrefixConditionedInputs(NamedTuple):
    x_t: torch.Tensor  # [B, H, A] noisy chunk, clean on the prefix
    time: torch.Tensor  # [B, H] per-token flow time, clean time on the prefix
    target: torch.Tensor  # [B, H, A] velocity target
    postfix: torch.Tensor  # [B, H] bool, the tokens the loss is taken over


def prefix_conditioned_inputs(
    actions: torch.Tensor,
    noise: torch.Tensor,
    time: torch.Tensor,
    delay: torch.Tensor,
    time_convention: TimeConvention = "noise_at_0",
) -> PrefixConditionedInputs:
    """Everything a training step needs besides the model: ``loss = postfix_mean((model(x_t, time) - target)**2, delay)``."""
    if actions.ndim != 3 or noise.shape != actions.shape:
        raise ValueError(
            f"actions and noise must have the same shape [batch, horizon, action_dim], got "
            f"{tuple(actions.shape)} and {tuple(noise.shape)}"
        )
    token_time = token_flow_time(time, delay, actions.shape[1], time_convention)
    return PrefixConditionedInputs(
        x_t=noisy_chunk(actions, noise, token_time, time_convention),
        time=token_time,
        target=velocity_target(actions, noise, time_convention),
        postfix=postfix_mask(delay, actions.shape[1]),
    )
