"""What the runtime drives: anything with ``observe()`` and ``act(action)``, and a simulator adapter.

Both methods are called on the controller thread once per tick (observe, then act with the action for
that tick), so they bound the control rate: keep them fast.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import numpy as np


class Robot(Protocol):
    def observe(self) -> Any: ...

    def act(self, action: np.ndarray) -> None: ...


def _to_numpy(observation):
    if isinstance(observation, Mapping):
        return {key: np.asarray(value) for key, value in observation.items()}
    return np.asarray(observation)


class SimulatedRobot:
    """A simulation stepped once per ``act()``: with the runtime's real clock it runs in wall-clock time.

    ``step(state, action) -> (state, observation)`` or ``(state, observation, info)``; ``observation`` is
    the one of the starting state. Observations are converted to numpy (JAX arrays are fetched from the
    device here, on the controller thread, so the inference thread gets host arrays).
    ``on_step(state, observation, info, action)`` sees every transition (rewards, frames for a video);
    it runs on the controller thread too.
    """

    def __init__(
        self,
        step: Callable[[Any, np.ndarray], tuple],
        state: Any,
        observation: Any,
        *,
        on_step: Callable[[Any, Any, Any, np.ndarray], None] | None = None,
    ):
        if not callable(step):
            raise ValueError(f"step must be a function (state, action) -> (state, observation[, info]), got {step!r}")
        if on_step is not None and not callable(on_step):
            raise ValueError(f"on_step must be callable or None, got {on_step!r}")
        self._step = step
        self._on_step = on_step
        self.state = state
        self.observation = _to_numpy(observation)
        self.info: Any = None
        self.steps = 0

    def observe(self):
        return self.observation

    def act(self, action: np.ndarray) -> None:
        out = self._step(self.state, action)
        if not isinstance(out, tuple) or len(out) not in (2, 3):
            raise ValueError(
                f"step must return (state, observation) or (state, observation, info), got a {type(out).__name__}"
                + (f" of length {len(out)}" if isinstance(out, tuple) else "")
            )
        self.state, observation = out[0], out[1]
        self.info = out[2] if len(out) == 3 else None
        self.observation = _to_numpy(observation)
        self.steps += 1
        if self._on_step is not None:
            self._on_step(self.state, self.observation, self.info, action)
