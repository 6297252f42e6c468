"""The asynchronous runtime: the paper's Algorithm 1 as a controller thread and an inference thread.

Controller (GETACTION), once per control period: take the next action of the current chunk (or hold the
last one / ask the fallback when the chunk is used up), publish the latest observation, and when the
replanning condition holds and no inference is running, hand the inference thread a request: the
observation, A_prev (the not-yet-executed rest of the chunk), the execute horizon s and the recent
delays. That is a few integer operations and one deque append; the controller never waits for inference.

Inference (INFERENCELOOP): estimate the delay d from the recent delays, call the policy without holding
any lock, check the chunk, and swap it in at once, entered at the number of ticks that really elapsed;
that number is the observed delay the estimator sees next time. A policy that raises or returns a bad
chunk is logged and retried after an exponential backoff; the controller keeps executing meanwhile.

With ``SimulatedClock`` the same threads run in virtual time: a tick takes no time, and the result of an
inference started after tick k is swapped in after tick k + L (the controller waits for it there), so a
run is exactly reproducible.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import threading
import time
from typing import Any, Callable

import numpy as np

from rtchunk.delays import DelayEstimator, FixedEstimator, MaxEstimator, QuantileEstimator
from rtchunk.runtime.checks import (
    chunk_problem,
    copy_observation,
    frozen_chunk,
    observation_problem,
    observation_spec,
)
from rtchunk.runtime.chunk_state import ChunkState
from rtchunk.runtime.clocks import Clock, MonotonicClock
from rtchunk.runtime.conditions import ReplanCondition, check_condition
from rtchunk.runtime.policies import ChunkPolicy
from rtchunk.runtime.robots import Robot
from rtchunk.runtime.telemetry import InferenceEvent, Telemetry, TelemetryRecorder

logger = logging.getLogger("rtchunk.runtime")

Fallback = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    replan: ReplanCondition
    """When to start the next inference: ``Paper(s_min)``, ``SinceSwap(s_min)`` or ``Queue(threshold)``."""
    control_period_s: float = 0.02
    """Δt; 50 Hz is the paper's real-robot control rate."""
    estimator: DelayEstimator = MaxEstimator(window=10)
    """Delay estimate from the last observed delays; the paper's is the max of the last b = 10."""
    initial_delay: int = 0
    """The delay buffer's first entry (d_init), in ticks: set it to the delay you expect."""
    retry_backoff_s: float = 0.1
    """Wait after a failed inference; doubles with each consecutive failure up to ``max_retry_backoff_s``."""
    max_retry_backoff_s: float = 2.0
    stop_timeout_s: float = 5.0
    """How long ``stop()`` waits for each thread (a policy call in progress cannot be interrupted)."""
    telemetry_capacity: int = 1_000_000
    """Ticks (and inference events) kept; older ones are dropped first (about 2 h at 200 Hz)."""
    freeze_gc: bool = True
    """Collect, then ``gc.freeze()``, once the first chunk is ready. A full garbage collection scans every
    object alive, and after importing JAX or PyTorch and compiling that takes tens of milliseconds (over
    100 ms measured on a busy 2-core machine) with the GIL held: several missed ticks. Frozen objects are
    skipped, so it then takes microseconds. Process-wide; only reference cycles among objects alive at
    start are never freed (objects freed by reference counting still are)."""

    def __post_init__(self):
        for name in ("control_period_s", "retry_backoff_s", "max_retry_backoff_s", "stop_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if not isinstance(self.estimator, (MaxEstimator, QuantileEstimator, FixedEstimator)) and not (
            hasattr(self.estimator, "estimate") and hasattr(self.estimator, "window")
        ):
            raise ValueError(f"estimator must be an estimator from rtchunk.delays, got {self.estimator!r}")
        if not isinstance(self.initial_delay, (int, np.integer)) or self.initial_delay < 0:
            raise ValueError(f"initial_delay must be an integer >= 0 (ticks), got {self.initial_delay!r}")
        if not isinstance(self.telemetry_capacity, (int, np.integer)) or self.telemetry_capacity < 1:
            raise ValueError(f"telemetry_capacity must be an integer >= 1, got {self.telemetry_capacity!r}")


@dataclasses.dataclass(eq=False)
class _Request:
    id: int
    observation: Any
    leftover: np.ndarray
    execute_horizon: int
    start_index: int
    start_tick: int
    start_s: float
    history: tuple[int, ...]
    due_tick: int = -1  # simulated clock only
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: "_Result | None" = None


@dataclasses.dataclass(eq=False)
class _Result:
    status: str
    chunk: np.ndarray | None
    estimated_delay: int
    delay_given: int
    compute_s: float
    error: str | None = None


class RuntimeStopped(RuntimeError):
    """The runtime was asked for an action after it stopped."""


class Runtime:
    """Runs a chunk policy asynchronously against a robot (or against your own control loop).

    ``policy(observation, prev_chunk_leftover, estimated_delay, execute_horizon) -> chunk [H, A]`` (see
    ``rtchunk.runtime.policies``). With a ``robot`` (``observe()`` / ``act(action)``), ``start()`` runs
    the controller in its own thread at ``control_period_s``; without one, call ``get_action(obs)`` from
    your loop once per tick. ``fallback(last_action) -> action`` replaces holding the last action when a
    chunk runs out before the next arrives (it runs on the controller thread under the runtime's lock:
    keep it quick and do not call the runtime from it). ``initial_chunk`` skips the first, blocking
    inference. Use as a context manager (``with Runtime(...) as rt:``) or ``run(ticks)``.
    """

    def __init__(
        self,
        policy: ChunkPolicy,
        config: RuntimeConfig,
        *,
        robot: Robot | None = None,
        clock: Clock | None = None,
        initial_chunk: np.ndarray | None = None,
        fallback: Fallback | None = None,
    ):
        if not callable(policy):
            raise ValueError(f"policy must be callable (observation, leftover, delay, execute_horizon) -> chunk, got {policy!r}")
        if robot is not None and not (callable(getattr(robot, "observe", None)) and callable(getattr(robot, "act", None))):
            raise ValueError(f"robot must have observe() and act(action), got {robot!r}")
        if fallback is not None and not callable(fallback):
            raise ValueError(f"fallback must be a function last_action -> action, got {fallback!r}")
        self._policy = policy
        self.config = config
        self._robot = robot
        self._clock = clock if clock is not None else MonotonicClock()
        self._sim = bool(self._clock.simulated)
        self._initial_chunk = initial_chunk
        self._fallback = fallback

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # inference thread waits here for a request
        self._stop = threading.Event()
        self._stopping = False
        self._state: ChunkState | None = None
        self._shape: tuple[int, int] | None = None
        self._dtype = None
        self._obs: Any = None
        self._obs_spec = None
        self._obs_checked_tick = -1
        self._wake_pending = False
        self._inflight: _Request | None = None
        self._queued: _Request | None = None
        self._calls = 0
        self._consecutive_failures = 0
        self._retry_at = -math.inf
        self._rec = TelemetryRecorder(config.control_period_s, config.telemetry_capacity)
        self._controller: threading.Thread | None = None
        self._inference: threading.Thread | None = None
        self._started = False
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self, observation: Any = None, *, max_ticks: int | None = None) -> "Runtime":
        """Get the first chunk (a blocking policy call unless ``initial_chunk`` was given) and start the threads.

        ``observation`` defaults to ``robot.observe()``. With a robot the controller thread stops by
        itself after ``max_ticks`` ticks (None: until ``stop()``).
        """
        if self._started:
            raise RuntimeError("this runtime was already started; make a new one")
        if max_ticks is not None and (not isinstance(max_ticks, (int, np.integer)) or max_ticks < 0):
            raise ValueError(f"max_ticks must be an integer >= 0 or None, got {max_ticks!r}")
        if observation is None and self._robot is not None:
            observation = self._robot.observe()
        if observation is not None:
            problem = observation_problem(observation, None)
            if problem:
                raise ValueError(f"the initial observation is unusable: {problem}")
            self._obs_spec = observation_spec(observation)
            self._obs = observation
        if self._initial_chunk is not None:
            chunk = self._initial_chunk
            what = "initial_chunk"
        elif observation is None:
            raise ValueError("start() needs an observation (or a robot) to compute the first chunk, or pass initial_chunk")
        else:
            # No previous chunk yet: nothing to continue. execute_horizon is H when the policy says what H
            # is (FlowChunkPolicy and rtchunk.torch.TorchChunkPolicy do), so adapters that check it is an
            # int in [1, H] accept the call; a plain function gets None.
            chunk = self._policy(copy_observation(observation), None, 0, getattr(self._policy, "horizon", None))
            what = "the first policy call"
        problem = chunk_problem(chunk, None)
        if problem:
            raise ValueError(f"{what} gave no usable chunk: {problem}")
        self._shape = tuple(chunk.shape)
        self._dtype = chunk.dtype
        check_condition(self.config.replan, self._shape[0])
        self._state = ChunkState(
            frozen_chunk(chunk, self._dtype), self.config.replan, self.config.estimator.window, self.config.initial_delay
        )
        if self.config.freeze_gc:
            gc.collect()
            gc.freeze()
        self._rec.start_s = self._clock.now()
        self._started = True
        self._inference = threading.Thread(target=self._inference_loop, name="rtchunk-inference", daemon=True)
        self._inference.start()
        if self._robot is not None:
            self._controller = threading.Thread(
                target=self._control_loop, args=(max_ticks,), name="rtchunk-controller", daemon=True
            )
            self._controller.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop both threads; True when both have ended within ``timeout`` seconds (default
        ``config.stop_timeout_s``).

        Never blocks longer than that: a policy call still in progress cannot be interrupted, so its
        thread is left to finish as a daemon and its result is dropped.
        """
        timeout = self.config.stop_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self._request_stop()
        alive = []
        for thread in (self._controller, self._inference):
            if thread is None or thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                alive.append(thread.name)
        if alive:
            logger.warning("stop(): %s still running after %.3g s (a policy call that has not returned); "
                           "left behind as a daemon thread", ", ".join(alive), timeout)
        return not alive

    def run(self, ticks: int) -> Telemetry:
        """Start, let the controller thread execute ``ticks`` ticks, stop; returns the telemetry."""
        if self._robot is None:
            raise ValueError("run() needs a robot; without one, call get_action() from your own loop")
        self.start(max_ticks=ticks)
        try:
            while self._controller.is_alive():
                self._controller.join(0.2)  # short joins keep Ctrl-C responsive
        finally:
            self.stop()
        self.raise_if_failed()
        return self.telemetry()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the controller thread to finish its ``max_ticks``; True if it did."""
        if self._controller is None:
            raise RuntimeError("wait() needs the controller thread (a robot and start())")
        self._controller.join(timeout)
        return not self._controller.is_alive()

    def __enter__(self) -> "Runtime":
        if not self._started:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc_type is None:
            self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the runtime's controller stopped on an error: {self._error!r}") from self._error

    # -- state -----------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._started and not self._stop.is_set()

    @property
    def ticks(self) -> int:
        return self._rec.total_ticks

    @property
    def error(self) -> BaseException | None:
        """What stopped the controller thread (an exception from the robot, usually), if anything."""
        return self._error

    @property
    def chunk_shape(self) -> tuple[int, int] | None:
        return self._shape

    def telemetry(self) -> Telemetry:
        """A consistent snapshot of everything recorded so far."""
        with self._lock:
            raw = self._rec.copy()
        return self._rec.build(raw, self._shape[1] if self._shape else 0)

    # -- controller ------------------------------------------------------------------------------------
    def get_action(self, observation: Any) -> np.ndarray:
        """GETACTION for callers that run their own control loop: one tick. Returns a read-only array."""
        if self._controller is not None:
            raise RuntimeError("a robot's controller thread is ticking this runtime; do not call get_action() too")
        if not self._started or self._stop.is_set():
            raise RuntimeStopped("the runtime is not running: call start() first (and not after stop())")
        now = math.nan if self._sim else self._clock.now()
        return self._tick(observation, math.nan, now, defer_wake=False)

    def _tick(self, observation, scheduled: float, woke: float, defer_wake: bool) -> np.ndarray:
        """One GETACTION. With ``defer_wake`` a request for the inference thread is queued but the thread
        is woken only by ``_wake_inference()``, which the control loop calls after ``robot.act()``: waking a
        thread is a system call and maybe a context switch, and the action should not wait for either."""
        state = self._state
        rec = self._rec
        with self._lock:
            if self._sim:
                scheduled = woke = self._clock.advance(self.config.control_period_s)
            self._obs = observation
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
            if not self._sim:
                if self._inflight is None and self._maybe_post_locked(wake=not defer_wake) is not None:
                    self._wake_pending = defer_wake
                return action
        self._settle_simulated()
        return action

    def _control_loop(self, max_ticks: int | None) -> None:
        robot, clock, period = self._robot, self._clock, self.config.control_period_s
        try:
            deadline = clock.now() + period
            done = 0
            while not self._stop.is_set() and (max_ticks is None or done < max_ticks):
                woke = math.nan
                if not self._sim:
                    clock.sleep_until(deadline)
                    woke = clock.now()
                    late = woke - deadline
                    if late >= period:
                        # Deadlines already past are skipped, not made up in a burst; they are counted.
                        skipped = int(late // period)
                        deadline += skipped * period
                        with self._lock:
                            self._rec.missed_ticks.append((self._rec.total_ticks + 1, skipped))
                    if self._stop.is_set():
                        break
                action = self._tick(robot.observe(), deadline, woke, defer_wake=True)
                robot.act(action)
                if self._wake_pending:
                    self._wake_inference()
                deadline += period
                done += 1
            self._request_stop()  # max_ticks reached: no more chunks needed, let the inference thread end
        except BaseException as e:  # noqa: BLE001 -- recorded and re-raised by run() / raise_if_failed()
            self._fail(e, "controller")

    def _settle_simulated(self) -> None:
        """Virtual time: deliver an inference that is due after this tick, then start the next if ready."""
        while True:
            with self._lock:
                if self._stopping:
                    return
                request = self._inflight or self._maybe_post_locked()
                if request is None or request.due_tick > self._rec.total_ticks:
                    return
            while not request.done.wait(0.05):  # the controller waits: virtual time stands still
                if self._stop.is_set():
                    return
            with self._lock:
                if self._stopping:
                    return
                self._complete_locked(request, request.result)

    # -- hand-over between the threads (lock held) -----------------------------------------------------
    def _wake_inference(self) -> None:
        with self._lock:
            self._wake_pending = False
            self._wake.notify()

    def _maybe_post_locked(self, wake: bool = True) -> _Request | None:
        state = self._state
        if self._inflight is not None or self._stopping or not state.ready():
            return None
        now = self._clock.now()
        if now < self._retry_at:
            return None
        tick = self._rec.total_ticks
        if self._obs_checked_tick == tick:
            return None  # this tick's observation was already rejected
        problem = observation_problem(self._obs, self._obs_spec)
        if problem:
            self._obs_checked_tick = tick
            self._rec.rejected_observations.append((tick, problem))
            return None
        if self._obs_spec is None:
            self._obs_spec = observation_spec(self._obs)
        leftover, s = state.leftover()
        if s < 1:
            return None  # nothing executed yet: a custom condition fired too early
        request = _Request(
            id=self._calls,
            observation=copy_observation(self._obs),
            leftover=np.array(leftover),  # the policy's own writable copy (torch warns on read-only arrays)
            execute_horizon=s,
            start_index=state.index,
            start_tick=tick,
            start_s=now,
            history=tuple(state.delays),
        )
        if self._sim:
            request.due_tick = tick + self._clock.latency_ticks(request.id)
        self._calls += 1
        self._inflight = self._queued = request
        if wake:
            self._wake.notify()
        return request

    def _complete_locked(self, request: _Request, result: _Result) -> None:
        self._inflight = None
        now = self._clock.now()
        actual = None
        if result.status == "ok":
            actual = self._state.swap(result.chunk, request.start_index)
            self._consecutive_failures = 0
        else:
            self._consecutive_failures += 1
            backoff = self.config.retry_backoff_s * 2.0 ** (self._consecutive_failures - 1)
            self._retry_at = now + min(backoff, self.config.max_retry_backoff_s)
        self._rec.inferences.append(
            InferenceEvent(
                id=request.id,
                status=result.status,
                start_tick=request.start_tick,
                end_tick=self._rec.total_ticks,
                start_index=request.start_index,
                execute_horizon=request.execute_horizon,
                leftover_len=len(request.leftover),
                estimated_delay=result.estimated_delay,
                delay_given=result.delay_given,
                actual_delay=actual,
                start_s=request.start_s,
                end_s=now,
                compute_s=result.compute_s,
                error=result.error,
            )
        )

    # -- inference -------------------------------------------------------------------------------------
    def _inference_loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while self._queued is None and not self._stopping:
                        self._wake.wait()
                    if self._stopping:
                        return
                    request, self._queued = self._queued, None
                result = self._infer(request)
                if self._sim:
                    request.result = result
                    request.done.set()
                    continue
                with self._lock:
                    if self._stopping:
                        return
                    self._complete_locked(request, result)
                    # Algorithm 1 loops straight back to its condition: if it already holds, start now.
                    self._maybe_post_locked()
        except BaseException as e:  # noqa: BLE001 -- a bug in the runtime, not in the policy
            self._fail(e, "inference")

    def _infer(self, request: _Request) -> _Result:
        estimate = int(self.config.estimator.estimate(np.asarray(request.history)))
        delay = min(max(estimate, 0), len(request.leftover))  # the frozen prefix must come from A_prev
        start = time.perf_counter()
        try:
            out = self._policy(request.observation, request.leftover, delay, request.execute_horizon)
        except Exception as e:  # noqa: BLE001 -- any policy failure is survivable: keep executing, retry
            logger.warning("inference %d raised %r; executing the current chunk and retrying after a backoff",
                           request.id, e, exc_info=True)
            return _Result("error", None, estimate, delay, time.perf_counter() - start, repr(e))
        compute_s = time.perf_counter() - start
        problem = chunk_problem(out, self._shape)
        if problem:
            logger.warning("inference %d rejected: %s; keeping the current chunk", request.id, problem)
            return _Result("invalid_output", None, estimate, delay, compute_s, problem)
        return _Result("ok", frozen_chunk(out, self._dtype), estimate, delay, compute_s)

    def _request_stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._stopping = True
            self._wake.notify_all()

    def _fail(self, error: BaseException, where: str) -> None:
        if self._error is None:
            self._error = error
        logger.error("rtchunk runtime: the %s thread stopped on %r", where, error, exc_info=error)
        self._request_stop()
