"""When things happen: the real-time scheduler and the virtual-time one, behind the same small interface.

The controller and the inference loop are the same code under both clocks; a scheduler decides

- how a tick meets its deadline (``begin_tick``): in real time the controller sleeps until it (and skips
  deadlines already past), in virtual time the clock advances by one period and nothing waits;
- who posts a request and who swaps a result in, and when (``during_tick_locked`` and ``after_tick`` on
  the controller thread, ``deliver`` on the inference thread).

``RealTimeScheduler``: the controller posts a request during its tick and never waits; the inference
thread swaps its result in as soon as it has it and posts the next request if the condition already
holds (Algorithm 1 loops straight back to its condition).

``VirtualTimeScheduler``: everything but the policy call happens on the controller thread. A request
posted after tick k draws its latency L from the ``SimulatedClock``; right after tick k + L the
controller waits for the result (virtual time stands still) and swaps it in, so a run is exactly
reproducible whatever the machine does.
"""

from __future__ import annotations

import math
from typing import Protocol

from rtchunk.runtime.clocks import Clock
from rtchunk.runtime.handover import Handover, Request, Result


class Scheduler(Protocol):
    clock: Clock

    def begin_tick(self, deadline: float | None) -> tuple[float, float, int]:
        """Wait for the tick due at ``deadline`` (None: the caller drives the ticks); returns (scheduled
        time, time the tick started, deadlines skipped)."""

    def during_tick_locked(self, handover: Handover, defer_wake: bool) -> None:
        """Inside the controller's tick, lock held, after the action was taken."""

    def after_tick(self, handover: Handover) -> None:
        """On the controller thread after the tick, lock released."""

    def deliver(self, handover: Handover, request: Request, result: Result) -> bool:
        """On the inference thread with a finished result; False when the loop should end."""


class RealTimeScheduler:
    def __init__(self, clock: Clock, period_s: float):
        self.clock = clock
        self.period_s = period_s

    def begin_tick(self, deadline: float | None) -> tuple[float, float, int]:
        if deadline is None:
            return math.nan, self.clock.now(), 0
        self.clock.sleep_until(deadline)
        woke = self.clock.now()
        late = woke - deadline
        # Deadlines already past are skipped, not made up in a burst; the caller counts them.
        skipped = int(late // self.period_s) if late >= self.period_s else 0
        return deadline + skipped * self.period_s, woke, skipped

    def during_tick_locked(self, handover: Handover, defer_wake: bool) -> None:
        # With ``defer_wake`` the inference thread is woken after robot.act(): waking a thread is a system
        # call and maybe a context switch, and the action should not wait for either.
        if handover.inflight is None:
            request = handover.new_request_locked()
            if request is not None:
                handover.commit_locked(request, wake=not defer_wake)
                handover.wake_pending = defer_wake

    def after_tick(self, handover: Handover) -> None:
        pass

    def deliver(self, handover: Handover, request: Request, result: Result) -> bool:
        with handover.lock:
            if handover.stopping:
                return False  # a late result after stop() is dropped
            handover.complete_locked(request, result)
            handover.post_locked(wake=False)  # this thread takes it next
        return True


class VirtualTimeScheduler:
    def __init__(self, clock, period_s: float):
        self.clock = clock  # a SimulatedClock
        self.period_s = period_s
        self._due_tick = -1  # of the request in flight (one at a time)
        self._result: Result | None = None

    def begin_tick(self, deadline: float | None) -> tuple[float, float, int]:
        now = self.clock.advance(self.period_s)
        return now, now, 0

    def during_tick_locked(self, handover: Handover, defer_wake: bool) -> None:
        pass

    def after_tick(self, handover: Handover) -> None:
        """Swap in the result due after this tick, then post the next request if the condition holds
        (and, with a latency of 0 ticks, wait for that one too)."""
        with handover.lock:
            while not handover.stopping:
                request = handover.inflight
                if request is None:
                    request = handover.new_request_locked()
                    if request is None:
                        return
                    self._due_tick = handover.rec.total_ticks + self.clock.latency_ticks(request.id)
                    handover.commit_locked(request)
                if self._due_tick > handover.rec.total_ticks:
                    return
                while self._result is None and not handover.stopping:
                    handover.changed.wait()  # the policy call runs; virtual time stands still
                if handover.stopping:
                    return
                result, self._result = self._result, None
                handover.complete_locked(request, result)

    def deliver(self, handover: Handover, request: Request, result: Result) -> bool:
        with handover.lock:
            self._result = result
            handover.changed.notify_all()
        return True


def scheduler_for(clock: Clock, period_s: float) -> RealTimeScheduler | VirtualTimeScheduler:
    return (VirtualTimeScheduler if getattr(clock, "simulated", False) else RealTimeScheduler)(clock, period_s)
