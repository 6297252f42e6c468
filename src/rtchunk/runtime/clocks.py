"""The runtime's two clocks.

``MonotonicClock`` is wall-clock time: the controller sleeps until each tick's deadline and an inference
takes as long as it takes. ``SimulatedClock`` is virtual time that advances by one control period per
controller tick and never sleeps; an inference started after tick k is delivered after tick k + L, where
L ("inference ticks") comes from the clock, so a run is exactly reproducible whatever the machine does.
"""

from __future__ import annotations

import time
from typing import Callable, Union

import numpy as np

from rtchunk import delays as delay_profiles

InferenceTicks = Union[int, "delay_profiles.DelayProfile", Callable[[int], int]]


class MonotonicClock:
    """Real time from ``time.monotonic``; sleeps release the GIL."""

    simulated = False

    def now(self) -> float:
        return time.monotonic()

    def advance(self, period_s: float) -> float:
        """A real clock moves by itself: this only reads it (kept so both clocks share one interface)."""
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)


class SimulatedClock:
    """Virtual time: ``now()`` is (ticks executed) x (control period); inference latency is counted in ticks.

    ``inference_ticks`` is a fixed number of ticks, a delay profile from ``rtchunk.delays`` (sampled with
    numpy from ``seed``, one draw per inference), or a function of the inference's number (0, 1, ...).
    An inference of L ticks started after tick k swaps in after tick k + L, so it was computed while L
    actions executed; L = 0 means the controller waits for it (synchronous inference).
    """

    simulated = True

    def __init__(self, inference_ticks: InferenceTicks = 1, *, seed: int = 0):
        if isinstance(inference_ticks, (int, np.integer)) and not isinstance(inference_ticks, bool):
            if inference_ticks < 0:
                raise ValueError(f"inference_ticks must be >= 0, got {inference_ticks}")
        elif not (callable(inference_ticks) or hasattr(inference_ticks, "_raw_support")):
            raise ValueError(
                "inference_ticks must be an int >= 0, a delay profile from rtchunk.delays or a function "
                f"call_index -> ticks, got {inference_ticks!r}"
            )
        self.inference_ticks = inference_ticks
        self._rng = np.random.default_rng(seed)
        self._ticks = 0
        self._period = 0.0

    @property
    def ticks(self) -> int:
        return self._ticks

    def now(self) -> float:
        return self._ticks * self._period

    def advance(self, period_s: float) -> float:
        self._period = period_s
        self._ticks += 1
        return self.now()

    def sleep_until(self, deadline: float) -> None:
        """Virtual time never waits."""

    def latency_ticks(self, call_index: int) -> int:
        spec = self.inference_ticks
        if isinstance(spec, (int, np.integer)):
            ticks = int(spec)
        elif callable(spec):
            ticks = spec(call_index)
        else:
            ticks = int(delay_profiles.sample_numpy(spec, self._rng))
        if not isinstance(ticks, (int, np.integer)) or isinstance(ticks, bool) or ticks < 0:
            raise ValueError(f"inference_ticks gave {ticks!r} for inference {call_index}; it must be an int >= 0")
        return int(ticks)


Clock = Union[MonotonicClock, SimulatedClock]
