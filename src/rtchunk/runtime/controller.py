"""GETACTION: the controller's tick, and the loop that ticks a robot once per control period.

A tick takes the next action of the current chunk (or holds the last one / asks the fallback when the
chunk is used up, ``rtchunk.execution``), publishes the observation and records the tick; whether it
also posts a request for the inference thread is the scheduler's call. That is a few integer
operations and one deque append: the controller never waits for inference in real time.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from rtchunk.runtime.handover import Handover
from rtchunk.runtime.robots import Robot
from rtchunk.runtime.schedulers import Scheduler

Fallback = Callable[[np.ndarray], np.ndarray]


class Controller:
    def __init__(self, handover: Handover, scheduler: Scheduler, period_s: float, fallback: Fallback | None):
        self._handover = handover
        self._scheduler = scheduler
        self._period_s = period_s
        self._fallback = fallback
        # Bound once: a tick is a few microseconds of Python, and each lookup is a part of it.
        self._during_tick_locked = scheduler.during_tick_locked
        self._after_tick = scheduler.after_tick

    def tick(self, observation: Any, scheduled: float, woke: float, defer_wake: bool) -> np.ndarray:
        handover = self._handover
        state, rec = handover.state, handover.rec
        with handover.lock:
            handover.observation = observation
            action, index = state.next_action()
            if action is None:  # starved: the next chunk is late
                chunk_id = -1
                action = state.last_action
                if self._fallback is not None:
                    action = np.asarray(self._fallback(action))
                    if action.shape != state.last_action.shape:
                        raise ValueError(f"fallback returned shape {action.shape}, expected {state.last_action.shape}")
            else:
                chunk_id = state.chunk_id
            rec.total_ticks += 1
            rec.ticks.append((rec.total_ticks, scheduled, woke, chunk_id, index, action))
            self._during_tick_locked(handover, defer_wake)
        self._after_tick(handover)
        return action

    def run(self, robot: Robot, max_ticks: int | None) -> None:
        """observe -> tick -> act, once per period, until stopped or ``max_ticks`` ticks are done."""
        handover, scheduler, period = self._handover, self._scheduler, self._period_s
        deadline = scheduler.clock.now() + period
        done = 0
        while not handover.stopped.is_set() and (max_ticks is None or done < max_ticks):
            scheduled, woke, skipped = scheduler.begin_tick(deadline)
            if skipped:
                with handover.lock:
                    handover.rec.missed_ticks.append((handover.rec.total_ticks + 1, skipped))
            if handover.stopped.is_set():
                break
            action = self.tick(robot.observe(), scheduled, woke, defer_wake=True)
            robot.act(action)
            if handover.wake_pending:
                handover.wake()
            deadline = scheduled + period
            done += 1
