"""The hand-over between the controller and the inference thread: the shared state of Algorithm 1 behind one lock.

It holds the chunk state (``ChunkState``), the latest observation, the request in flight, the retry
backoff and the telemetry recorder. A request is posted when the replanning condition holds, taken by
the inference thread, and its result completed (swapped in and recorded); which thread posts and
completes, and when, is the scheduler's business (``rtchunk.runtime.schedulers``). Methods whose names
end in ``_locked`` are called with ``lock`` held.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import numpy as np

from rtchunk.runtime.checks import copy_observation, observation_problem, observation_spec
from rtchunk.runtime.chunk_state import ChunkState
from rtchunk.runtime.telemetry import InferenceEvent, TelemetryRecorder

NO_TIMING = (math.nan, math.nan, math.nan)


@dataclasses.dataclass(eq=False)
class Request:
    id: int
    observation: Any
    leftover: np.ndarray
    execute_horizon: int
    start_index: int
    start_tick: int
    start_s: float
    history: tuple[int, ...]


@dataclasses.dataclass(eq=False)
class Result:
    status: str
    chunk: np.ndarray | None
    estimate: int
    told_delay: int
    compute_s: float
    timing: tuple[float, float, float] = NO_TIMING
    """(server_compute_s, server_queue_s, transport_s) from the policy's ``last_call_timing``."""
    error: str | None = None


class Handover:
    def __init__(self, recorder: TelemetryRecorder, clock, retry_backoff_s: float, max_retry_backoff_s: float):
        self.lock = threading.Lock()
        # One condition for every wait: the inference thread for a request, the virtual-time controller
        # for a result, both for a stop. Waiters re-check their own predicate.
        self.changed = threading.Condition(self.lock)
        self.stopped = threading.Event()  # set before ``stopping``; read without the lock by the loops
        self.stopping = False
        self.rec = recorder
        self.clock = clock
        self.state: ChunkState | None = None
        self.observation: Any = None
        self.obs_spec = None
        self.inflight: Request | None = None
        self.wake_pending = False
        self._obs_checked_tick = -1
        self._queued: Request | None = None
        self._calls = 0
        self._retry_backoff_s = retry_backoff_s
        self._max_retry_backoff_s = max_retry_backoff_s
        self._consecutive_failures = 0
        self._retry_at = -math.inf

    # -- controller side -------------------------------------------------------------------------------
    def new_request_locked(self) -> Request | None:
        """The request to post now, or None when the condition does not hold (nothing is changed but the
        rejected-observation log). ``commit_locked`` posts it."""
        state = self.state
        if self.inflight is not None or self.stopping or not state.ready():
            return None
        now = self.clock.now()
        if now < self._retry_at:
            return None
        tick = self.rec.total_ticks
        if self._obs_checked_tick == tick:
            return None  # this tick's observation was already rejected
        problem = observation_problem(self.observation, self.obs_spec)
        if problem:
            self._obs_checked_tick = tick
            self.rec.rejected_observations.append((tick, problem))
            return None
        if self.obs_spec is None:
            self.obs_spec = observation_spec(self.observation)
        leftover, s = state.leftover()
        if s < 1:
            return None  # nothing executed yet: a custom condition fired too early
        return Request(
            id=self._calls,
            observation=copy_observation(self.observation),
            leftover=np.array(leftover),  # the policy's own writable copy (torch warns on read-only arrays)
            execute_horizon=s,
            start_index=state.index,
            start_tick=tick,
            start_s=now,
            history=tuple(state.delays),
        )

    def commit_locked(self, request: Request, wake: bool = True) -> Request:
        self._calls += 1
        self.inflight = self._queued = request
        if wake:
            self.changed.notify_all()
        return request

    def post_locked(self, wake: bool = True) -> Request | None:
        request = self.new_request_locked()
        return None if request is None else self.commit_locked(request, wake)

    def wake(self) -> None:
        """Wake the inference thread for a request posted with ``wake=False``."""
        with self.lock:
            self.wake_pending = False
            self.changed.notify_all()

    def complete_locked(self, request: Request, result: Result) -> None:
        """Swap an ok chunk in (entered at the ticks that elapsed), or schedule the retry; record the event."""
        self.inflight = None
        now = self.clock.now()
        actual = None
        if result.status == "ok":
            actual = self.state.swap(result.chunk, request.start_index)
            self._consecutive_failures = 0
        else:
            self._consecutive_failures += 1
            backoff = self._retry_backoff_s * 2.0 ** (self._consecutive_failures - 1)
            self._retry_at = now + min(backoff, self._max_retry_backoff_s)
        server_compute_s, server_queue_s, transport_s = result.timing
        self.rec.inferences.append(
            InferenceEvent(
                id=request.id,
                status=result.status,
                start_tick=request.start_tick,
                end_tick=self.rec.total_ticks,
                start_index=request.start_index,
                execute_horizon=request.execute_horizon,
                leftover_len=len(request.leftover),
                estimate=result.estimate,
                told_delay=result.told_delay,
                actual_delay=actual,
                start_s=request.start_s,
                end_s=now,
                compute_s=result.compute_s,
                server_compute_s=server_compute_s,
                server_queue_s=server_queue_s,
                transport_s=transport_s,
                error=result.error,
            )
        )

    # -- inference side --------------------------------------------------------------------------------
    def take(self) -> Request | None:
        """Block until a request is posted; None once stopping."""
        with self.lock:
            while self._queued is None and not self.stopping:
                self.changed.wait()
            if self.stopping:
                return None
            request, self._queued = self._queued, None
            return request

    def stop(self) -> None:
        self.stopped.set()
        with self.lock:
            self.stopping = True
            self.changed.notify_all()
