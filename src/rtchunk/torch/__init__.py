"""rtchunk for PyTorch policies (``pip install rtchunk[torch]``): the samplers of ``rtchunk.sampling``
name for name, training-time RTC helpers, a port of the MLP-Mixer flow policy (``FlowPolicy``,
``load_policy``) and the runtime adapter (``TorchChunkPolicy``)::

    from rtchunk import torch as rtt
    chunk = rtt.sample_chunk(velocity_fn, noise, rtt.RTC(), prev_chunk=prev, inference_delay=2,
                             execute_horizon=3, time_convention="noise_at_1")

See docs/torch.md.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("rtchunk.torch needs PyTorch: pip install 'rtchunk[torch]'") from e

from rtchunk.torch.model import FlowPolicy, load_policy
from rtchunk.torch.policy_adapter import TorchChunkPolicy
from rtchunk.torch.sampling import (
    BID,
    RTC,
    SCHEDULES,
    TIME_CONVENTIONS,
    HardMask,
    JacobianFree,
    Naive,
    TrainedPrefix,
    guidance_weight,
    prefix_weights,
    sample_chunk,
)
from rtchunk.torch.training import (
    PrefixConditionedInputs,
    TrainingDelays,
    clean_time,
    noisy_chunk,
    postfix_mask,
    postfix_mean,
    prefix_conditioned_inputs,
    sample_delays,
    token_flow_time,
    velocity_target,
)

__all__ = [
    "BID",
    "FlowPolicy",
    "RTC",
    "SCHEDULES",
    "TIME_CONVENTIONS",
    "HardMask",
    "JacobianFree",
    "Naive",
    "PrefixConditionedInputs",
    "TorchChunkPolicy",
    "TrainedPrefix",
    "TrainingDelays",
    "clean_time",
    "guidance_weight",
    "load_policy",
    "noisy_chunk",
    "postfix_mask",
    "postfix_mean",
    "prefix_conditioned_inputs",
    "prefix_weights",
    "sample_chunk",
    "sample_delays",
    "token_flow_time",
    "velocity_target",
]
