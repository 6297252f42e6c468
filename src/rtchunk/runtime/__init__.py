"""Asynchronous execution of chunk policies (the RTC paper's Algorithm 1) for robots and real-time simulation.

    from rtchunk.runtime import Runtime, RuntimeConfig, Paper, flow_policy_fn
    policy = flow_policy_fn(flow_policy, rtchunk.RTC())
    with Runtime(policy, RuntimeConfig(replan=Paper(s_min=5)), robot=my_robot) as rt:
        ...
    rt.telemetry().save("runs/telemetry")

See docs/runtime.md. This package is numpy-only: ``FlowChunkPolicy`` / ``flow_policy_fn`` (the JAX adapter,
``rtchunk.policy_adapter``) load JAX and Flax only when they are first used.
"""

from rtchunk.lazy import lazy_exports

from rtchunk.runtime.clocks import MonotonicClock, SimulatedClock
from rtchunk.runtime.conditions import Paper, Queue, ReplanCondition, SinceSwap
from rtchunk.runtime.policies import ChunkPolicy, WithExtraLatency
from rtchunk.runtime.robots import Robot, SimulatedRobot
from rtchunk.runtime.runtime import Runtime, RuntimeConfig, RuntimeStopped
from rtchunk.runtime.telemetry import InferenceEvent, Telemetry

__all__ = [
    "ChunkPolicy",
    "FlowChunkPolicy",
    "InferenceEvent",
    "MonotonicClock",
    "Paper",
    "Queue",
    "ReplanCondition",
    "Robot",
    "Runtime",
    "RuntimeConfig",
    "RuntimeStopped",
    "SimulatedClock",
    "SimulatedRobot",
    "SinceSwap",
    "Telemetry",
    "WithExtraLatency",
    "flow_policy_fn",
]


__getattr__, __dir__ = lazy_exports(
    "rtchunk.runtime", {"FlowChunkPolicy": "rtchunk.policy_adapter", "flow_policy_fn": "rtchunk.policy_adapter"},
    globals())
