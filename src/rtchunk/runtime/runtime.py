"""The asynchronous runtime: the paper's Algorithm 1 as a controller thread and an inference thread.

``Runtime`` is the lifecycle and the public API; the work is done by its parts:

- ``Controller`` (``controller.py``, GETACTION): once per control period, the next action of the current
  chunk (or the last one held / the fallback when the chunk is used up), the latest observation published;
- ``InferenceLoop`` (``inference.py``, INFERENCELOOP): the delay estimated and bounded, the policy called
  without any lock held, the chunk checked;
- ``Handover`` (``handover.py``): the shared state behind one lock; a result is swapped in entered at the
  number of ticks that really elapsed, the observed delay the estimator sees next time;
- a scheduler (``schedulers.py``): real time, or virtual time with ``SimulatedClock``, where the result of
  an inference started after tick k is swapped in right after tick k + L, so a run is exactly reproducible.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import threading
import time
from typing import Any

import numpy as np

from rtchunk.delays import DelayEstimator, FixedEstimator, MaxEstimator, QuantileEstimator
from rtchunk.runtime.checks import chunk_problem, copy_observation, frozen_chunk, observation_problem, observation_spec
from rtchunk.runtime.chunk_state import ChunkState
from rtchunk.runtime.clocks import Clock, MonotonicClock
from rtchunk.runtime.conditions import ReplanCondition, check_condition
from rtchunk.runtime.controller import Controller, Fallback
from rtchunk.runtime.handover import Handover
from rtchunk.runtime.inference import InferenceLoop
from rtchunk.runtime.policies import ChunkPolicy
from rtchunk.runtime.robots import Robot
from rtchunk.runtime.schedulers import scheduler_for
from rtchunk.runtime.telemetry import Telemetry, TelemetryRecorder

logger = logging.getLogger("rtchunk.runtime")


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
    object alive, and after importing JAX or PyTorch and compiling that holds the GIL long enough to miss
    several ticks (docs/runtime.md); frozen objects are skipped. Process-wide; only reference cycles among
    objects alive at start are never freed (objects freed by reference counting still are)."""

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


class RuntimeStopped(RuntimeError):
    """The runtime was asked for an action after it stopped."""


class Runtime:
    """Runs a chunk policy asynchronously against a robot (or against your own control loop).

    ``policy(observation, prev_chunk_leftover, told_delay, execute_horizon) -> chunk [H, A]`` (see
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
        self._initial_chunk = initial_chunk
        self._scheduler = scheduler_for(self._clock, config.control_period_s)
        self._rec = TelemetryRecorder(config.control_period_s, config.telemetry_capacity)
        self._handover = Handover(self._rec, self._clock, config.retry_backoff_s, config.max_retry_backoff_s)
        self._controller = Controller(self._handover, self._scheduler, config.control_period_s, fallback)
        self._shape: tuple[int, int] | None = None
        self._controller_thread: threading.Thread | None = None
        self._inference_thread: threading.Thread | None = None
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
        handover = self._handover
        if observation is None and self._robot is not None:
            observation = self._robot.observe()
        if observation is not None:
            problem = observation_problem(observation, None)
            if problem:
                raise ValueError(f"the initial observation is unusable: {problem}")
            handover.obs_spec = observation_spec(observation)
            handover.observation = observation
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
        check_condition(self.config.replan, self._shape[0])
        handover.state = ChunkState(
            frozen_chunk(chunk, chunk.dtype), self.config.replan, self.config.estimator.window, self.config.initial_delay
        )
        inference = InferenceLoop(self._policy, handover, self._scheduler, self.config.estimator, self._shape,
                                  chunk.dtype)
        if self.config.freeze_gc:
            gc.collect()
            gc.freeze()
        self._rec.start_s = self._clock.now()
        self._started = True
        self._inference_thread = threading.Thread(target=self._thread, args=("inference", inference.run),
                                                  name="rtchunk-inference", daemon=True)
        self._inference_thread.start()
        if self._robot is not None:
            self._controller_thread = threading.Thread(
                target=self._thread, args=("controller", lambda: self._control(max_ticks)),
                name="rtchunk-controller", daemon=True,
            )
            self._controller_thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop both threads; True when both have ended within ``timeout`` seconds (default
        ``config.stop_timeout_s``).

        Never blocks longer than that: a policy call still in progress cannot be interrupted, so its
        thread is left to finish as a daemon and its result is dropped.
        """
        timeout = self.config.stop_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self._handover.stop()
        alive = []
        for thread in (self._controller_thread, self._inference_thread):
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
            while self._controller_thread.is_alive():
                self._controller_thread.join(0.2)  # short joins keep Ctrl-C responsive
        finally:
            self.stop()
        self.raise_if_failed()
        return self.telemetry()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the controller thread to finish its ``max_ticks``; True if it did."""
        if self._controller_thread is None:
            raise RuntimeError("wait() needs the controller thread (a robot and start())")
        self._controller_thread.join(timeout)
        return not self._controller_thread.is_alive()

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
        return self._started and not self._handover.stopped.is_set()

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
        with self._handover.lock:
            raw = self._rec.copy()
        return self._rec.build(raw, self._shape[1] if self._shape else 0)

    # -- ticks -----------------------------------------------------------------------------------------
    def get_action(self, observation: Any) -> np.ndarray:
        """GETACTION for callers that run their own control loop: one tick. Returns a read-only array."""
        if self._controller_thread is not None:
            raise RuntimeError("a robot's controller thread is ticking this runtime; do not call get_action() too")
        if not self._started or self._handover.stopped.is_set():
            raise RuntimeStopped("the runtime is not running: call start() first (and not after stop())")
        scheduled, woke, _ = self._scheduler.begin_tick(None)
        return self._controller.tick(observation, scheduled, woke, defer_wake=False)

    def _control(self, max_ticks: int | None) -> None:
        self._controller.run(self._robot, max_ticks)
        self._handover.stop()  # max_ticks reached: no more chunks needed, let the inference thread end

    def _thread(self, where: str, body) -> None:
        try:
            body()
        except BaseException as e:  # noqa: BLE001 -- recorded and re-raised by run() / raise_if_failed()
            if self._error is None:
                self._error = e
            logger.error("rtchunk runtime: the %s thread stopped on %r", where, e, exc_info=e)
            self._handover.stop()
