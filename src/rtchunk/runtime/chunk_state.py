"""The shared state of Algorithm 1: the current chunk, where the controller is in it, and past delays.

Pure bookkeeping with no threads and no clock, so both clocks run the same logic and tests can drive it
directly. ``index`` is the paper's t: the position of the next action to execute in the current chunk.
It keeps counting while the controller starves past the chunk's end, so ``index - start_index`` is always
the number of ticks an inference took, and a late chunk is entered at exactly that position.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from rtchunk.execution import executed_action
from rtchunk.runtime.conditions import ReplanCondition


class ChunkState:
    def __init__(self, chunk: np.ndarray, replan: ReplanCondition, delay_window: int, initial_delay: int):
        self.chunk = chunk  # [H, A], read-only
        self.horizon = int(chunk.shape[0])
        self.replan = replan
        self.index = 0
        self.since_swap = 0
        self.chunk_id = 0
        self.last_action: np.ndarray = chunk[0]
        # Queue Q of the paper: the last b observed delays, seeded with the initial estimate.
        self.delays: deque[int] = deque([int(initial_delay)], maxlen=delay_window)

    def next_action(self) -> tuple[np.ndarray | None, int]:
        """(the action to execute now, its index), or (None, index) when the chunk is used up (or arrived
        already past its end): then the controller holds ``last_action`` (``rtchunk.execution``)."""
        i = self.index
        self.index = i + 1
        self.since_swap += 1
        _, starved = executed_action(self.chunk[min(i, self.horizon - 1)], i, self.horizon, self.last_action)
        if starved:
            return None, i
        self.last_action = self.chunk[i]
        return self.last_action, i

    def ready(self) -> bool:
        return self.replan.ready(self.index, self.since_swap, self.horizon)

    def leftover(self) -> tuple[np.ndarray, int]:
        """(A_prev = the not-yet-executed actions, execute horizon s = actions of this chunk already executed).

        s is capped at H: past the end nothing is left, and the whole chunk counts as executed.
        """
        s = min(self.index, self.horizon)
        return self.chunk[s:], s

    def swap(self, chunk: np.ndarray, start_index: int) -> int:
        """Make ``chunk`` current, entered at the number of ticks since its inference started; returns that delay."""
        elapsed = self.index - start_index
        self.chunk = chunk
        self.chunk_id += 1
        self.index = elapsed
        self.since_swap = 0
        self.delays.append(elapsed)
        return elapsed
