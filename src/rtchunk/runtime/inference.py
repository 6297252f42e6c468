"""INFERENCELOOP: take a request, tell the policy a delay, call it, check the chunk, hand the result on.

The policy is called holding no lock. A policy that raises or returns a bad chunk gives a failed result
(logged; the hand-over schedules a retry after a backoff) and the controller keeps executing meanwhile.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from rtchunk.delays import DelayEstimator
from rtchunk.methods import told_delay_bound
from rtchunk.runtime.checks import chunk_problem, frozen_chunk
from rtchunk.runtime.handover import Handover, Request, Result
from rtchunk.runtime.policies import ChunkPolicy, call_timing
from rtchunk.runtime.schedulers import Scheduler

logger = logging.getLogger("rtchunk.runtime")


class InferenceLoop:
    def __init__(self, policy: ChunkPolicy, handover: Handover, scheduler: Scheduler, estimator: DelayEstimator,
                 shape: tuple[int, int], dtype):
        self._policy = policy
        self._handover = handover
        self._scheduler = scheduler
        self._estimator = estimator
        self._shape = shape
        self._dtype = dtype

    def run(self) -> None:
        while True:
            request = self._handover.take()
            if request is None:
                return
            if not self._scheduler.deliver(self._handover, request, self.infer(request)):
                return

    def infer(self, request: Request) -> Result:
        policy = self._policy
        estimate = int(self._estimator.estimate(np.asarray(request.history)))
        # A method that freezes a prefix must take it from A_prev; a policy without .method is held to that too.
        bound = told_delay_bound(getattr(policy, "method", None), self._shape[0], request.execute_horizon)
        told = min(max(estimate, 0), bound)
        start = time.perf_counter()
        try:
            out = policy(request.observation, request.leftover, told, request.execute_horizon)
        except Exception as e:  # noqa: BLE001 -- any policy failure is survivable: keep executing, retry
            logger.warning("inference %d raised %r; executing the current chunk and retrying after a backoff",
                           request.id, e, exc_info=True)
            return Result("error", None, estimate, told, time.perf_counter() - start, error=repr(e))
        compute_s = time.perf_counter() - start
        timing = call_timing(policy)
        problem = chunk_problem(out, self._shape)
        if problem:
            logger.warning("inference %d rejected: %s; keeping the current chunk", request.id, problem)
            return Result("invalid_output", None, estimate, told, compute_s, timing, problem)
        return Result("ok", frozen_chunk(out, self._dtype), estimate, told, compute_s, timing)
