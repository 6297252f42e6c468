"""rtchunk: real-time chunking for action-chunking flow policies.

The samplers and the flow policy are importable from the top level::

    import rtchunk
    chunk = rtchunk.sample_chunk(velocity_fn, noise, rtchunk.RTC(), prev_chunk=prev,
                                 inference_delay=2, execute_horizon=3)
"""

from rtchunk.model import FlowPolicy, ModelConfig, TrainingDelays, flow_matching_loss
from rtchunk.sampling import (
    BID,
    RTC,
    SCHEDULES,
    HardMask,
    JacobianFree,
    Naive,
    TrainedPrefix,
    guidance_weight,
    prefix_weights,
    sample_chunk,
)

__version__ = "0.1.0"

__all__ = [
    "BID",
    "RTC",
    "SCHEDULES",
    "FlowPolicy",
    "HardMask",
    "JacobianFree",
    "ModelConfig",
    "Naive",
    "TrainedPrefix",
    "TrainingDelays",
    "flow_matching_loss",
    "guidance_weight",
    "prefix_weights",
    "sample_chunk",
]
