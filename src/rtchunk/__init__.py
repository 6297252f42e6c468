"""rtchunk: real-time chunking for action-chunking flow policies.

The samplers and the flow policy are importable from the top level::

    import rtchunk
    chunk = rtchunk.sample_chunk(velocity_fn, noise, rtchunk.RTC(), prev_chunk=prev,
                                 inference_delay=2, execute_horizon=3)

Names load on first use (PEP 562), so ``import rtchunk.runtime`` on a robot loads no JAX: the methods are
backend-free; the samplers and the model import JAX when they are first touched.
"""

from __future__ import annotations

from rtchunk.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "BID": "rtchunk.methods",
    "RTC": "rtchunk.methods",
    "SCHEDULES": "rtchunk.methods",
    "HardMask": "rtchunk.methods",
    "JacobianFree": "rtchunk.methods",
    "Naive": "rtchunk.methods",
    "TrainedPrefix": "rtchunk.methods",
    "MethodSettings": "rtchunk.methods",
    "make_method": "rtchunk.methods",
    "TrainingDelays": "rtchunk.delays",
    "ModelConfig": "rtchunk.model_config",
    "FlowPolicy": "rtchunk.model",
    "flow_matching_loss": "rtchunk.model",
    "guidance_weight": "rtchunk.sampling",
    "prefix_weights": "rtchunk.sampling",
    "sample_chunk": "rtchunk.sampling",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("rtchunk", _EXPORTS, globals())
