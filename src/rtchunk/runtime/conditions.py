"""When the inference loop starts the next chunk: the replanning conditions.

Each condition looks at three integers kept by the controller: ``index``, the position in the current
chunk of the next action to execute (it keeps counting past the end while the controller starves);
``since_swap``, the actions executed since the current chunk was swapped in; and ``horizon``, H.
``ready`` runs on the controller thread once per tick, so it is a few integer operations.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import numpy as np


def _check_count(name: str, value, low: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Paper:
    """Algorithm 1 of the RTC paper: at least ``s_min`` actions of the current chunk executed.

    The paper resets its counter to the observed delay d at a swap (the new chunk starts at index d), so
    the next inference starts s_min - d actions after the swap, or at once when d >= s_min.
    """

    s_min: int

    def __post_init__(self):
        _check_count("s_min", self.s_min, 1)

    def ready(self, index: int, since_swap: int, horizon: int) -> bool:
        return index >= self.s_min


@dataclasses.dataclass(frozen=True)
class SinceSwap:
    """At least ``s_min`` actions executed since the last swap (the worked example of LeRobot's RTC doc)."""

    s_min: int

    def __post_init__(self):
        _check_count("s_min", self.s_min, 1)

    def ready(self, index: int, since_swap: int, horizon: int) -> bool:
        return since_swap >= self.s_min


@dataclasses.dataclass(frozen=True)
class Queue:
    """At most ``threshold`` actions left in the current chunk (what LeRobot's async client does)."""

    threshold: int

    def __post_init__(self):
        _check_count("threshold", self.threshold, 0)

    def ready(self, index: int, since_swap: int, horizon: int) -> bool:
        return horizon - index <= self.threshold


ReplanCondition = Union[Paper, SinceSwap, Queue]


def check_condition(condition: ReplanCondition, horizon: int) -> None:
    """Reject conditions that could start an inference before any action of the chunk has executed."""
    if isinstance(condition, (Paper, SinceSwap)) and condition.s_min > horizon:
        raise ValueError(f"s_min must be in [1, horizon={horizon}], got {condition.s_min}")
    if isinstance(condition, Queue) and condition.threshold >= horizon:
        # threshold >= H would replan with nothing executed (execute_horizon 0) right after every swap.
        raise ValueError(f"threshold must be in [0, horizon - 1 = {horizon - 1}], got {condition.threshold}")
    if not isinstance(condition, (Paper, SinceSwap, Queue)) and not callable(getattr(condition, "ready", None)):
        raise ValueError(f"replan must be Paper(s_min), SinceSwap(s_min), Queue(threshold) or have .ready(), got {condition!r}")
