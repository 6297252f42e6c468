"""Stand-ins for policies and robots in the runtime tests: every action value says where it came from."""

from __future__ import annotations

import threading

import numpy as np

H = 10


class InpaintingFake:
    """An ideal RTC policy on scalar actions.

    The first chunk is [0, 1, ..., H-1] (a0..a9). Call k >= 1 returns: the first d entries of A_prev
    unchanged (frozen), the rest of A_prev + 0.5 (inpainted, the primes of the worked example), then fresh
    actions 100 k + i at positions i >= len(A_prev) (b6.. for k = 1).
    Every call's arguments are recorded.
    """

    def __init__(self, horizon: int = H):
        self.horizon = horizon
        self.calls: list[tuple] = []

    def __call__(self, observation, leftover, delay, execute_horizon):
        self.calls.append((observation, None if leftover is None else leftover.copy(), delay, execute_horizon))
        h = self.horizon
        if leftover is None:
            return np.arange(h, dtype=np.float32)[:, None]
        k = len(self.calls) - 1
        out = (100.0 * k + np.arange(h, dtype=np.float32))[:, None]
        n = len(leftover)
        out[:n] = leftover + 0.5
        out[:delay] = leftover[:delay]
        return out

    @property
    def background_calls(self):
        return self.calls[1:]


class Scripted(InpaintingFake):
    """InpaintingFake whose background calls follow a script: 'ok', 'raise', 'nan', 'shape', 'type'."""

    def __init__(self, script, horizon: int = H):
        super().__init__(horizon)
        self.script = list(script)

    def __call__(self, observation, leftover, delay, execute_horizon):
        out = super().__call__(observation, leftover, delay, execute_horizon)
        if leftover is None:
            return out
        what = self.script[len(self.calls) - 2] if len(self.calls) - 2 < len(self.script) else "ok"
        if what == "raise":
            raise RuntimeError("simulated inference failure")
        if what == "nan":
            out[3] = np.nan
        elif what == "shape":
            out = out[:-1]
        elif what == "type":
            out = out.tolist()
        return out


class Blocking(InpaintingFake):
    """Background calls block until ``release`` is set (a hung inference server)."""

    def __init__(self, horizon: int = H):
        super().__init__(horizon)
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, observation, leftover, delay, execute_horizon):
        if leftover is not None:
            self.entered.set()
            self.release.wait()
        return super().__call__(observation, leftover, delay, execute_horizon)


class Integrator:
    """A robot: the state is the sum of the actions applied, the observation is [state, steps]."""

    def __init__(self):
        self.position = 0.0
        self.applied: list[float] = []

    def observe(self):
        return np.array([self.position, len(self.applied)], np.float32)

    def act(self, action):
        self.applied.append(float(action[0]))
        self.position += float(action[0])


class Remote(InpaintingFake):
    """InpaintingFake that reports where each background call's time went, like a remote client.

    ``timings[k]`` becomes ``last_call_timing`` after background call k (None once the list runs out).
    """

    def __init__(self, timings, horizon: int = H):
        super().__init__(horizon)
        self.timings = list(timings)
        self.last_call_timing = None

    def __call__(self, observation, leftover, delay, execute_horizon):
        out = super().__call__(observation, leftover, delay, execute_horizon)
        k = len(self.calls) - 2
        self.last_call_timing = self.timings[k] if 0 <= k < len(self.timings) else None
        return out
