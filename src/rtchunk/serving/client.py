"""The robot's side: a chunk policy for ``rtchunk.runtime`` that asks a policy server. numpy, msgpack and
websockets only (no JAX, Flax or torch), so it runs on the robot's computer.

``RemotePolicy(url)`` is a drop-in chunk policy: ``policy(observation, prev_chunk_leftover, told_delay,
execute_horizon) -> chunk [H, A]`` (``rtchunk.runtime.policies``). Each call is one request frame and one
reply frame over one websocket connection; after each call ``last_call_timing`` splits the round trip
into the server's compute, the time the request waited for its batch, and the rest (transport and
serialization).

Faults: the constructor waits up to ``connect_timeout_s`` for the server, retrying with exponential
backoff, then raises ``ServerUnreachable``. A call that loses the connection raises ``ServerUnavailable``;
the next call reconnects, no sooner than the current backoff (which doubles with each failed attempt up
to ``max_backoff_s`` and resets once connected). The runtime treats a raising policy as a failed
inference: it keeps executing the chunk it has, holds and counts starvation once that runs out, and
retries, with whatever leftover it then has.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

import numpy as np

from rtchunk.serving import protocol

NAN_TIMING = {"server_compute_s": math.nan, "server_queue_s": math.nan, "transport_s": math.nan}


class ServerUnreachable(ConnectionError):
    """No policy server answered within the connect timeout."""


class ServerUnavailable(ConnectionError):
    """The connection to the server is lost (or not re-established yet); the next call reconnects."""


class ServerRefused(ConnectionError):
    """The server refused the connection (a missing or wrong API key): retrying will not help."""


class ServerError(RuntimeError):
    """The server answered a request with an error (it names the bad key) and closed the connection."""


def _check_seconds(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


class RemotePolicy:
    """A chunk policy served by ``rtchunk serve`` (or any server of the same protocol) at ``url``.

    ``method``: the method the server should sample with when there is a leftover (None: the server's
    default); ``api_key``: sent as ``Authorization: Api-Key <key>``; ``seed``: None lets the server pick
    each request's noise, an integer makes call k send ``rtc/seed = seed + k`` (a reproducible run);
    ``call_timeout_s``: give up on a reply after that long (the connection is then dropped, since a late
    reply would answer the wrong request); ``open_timeout_s``: one connection attempt's limit.
    One call at a time (the runtime's inference thread); use one ``RemotePolicy`` per thread otherwise.
    """

    def __init__(
        self,
        url: str,
        *,
        method: str | None = None,
        api_key: str | None = None,
        connect_timeout_s: float = 10.0,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        open_timeout_s: float = 5.0,
        call_timeout_s: float | None = None,
        seed: int | None = None,
        max_frame_bytes: int = 64 * 2**20,
    ):
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ValueError(f"url must start with ws:// or wss://, got {url!r}")
        _check_seconds("connect_timeout_s", connect_timeout_s)
        _check_seconds("backoff_s", backoff_s)
        _check_seconds("max_backoff_s", max_backoff_s)
        _check_seconds("open_timeout_s", open_timeout_s)
        _check_seconds("call_timeout_s", call_timeout_s, allow_none=True)
        if seed is not None and (not isinstance(seed, (int, np.integer)) or not 0 <= seed <= protocol.MAX_SEED):
            raise ValueError(f"seed must be None or an integer in [0, 2**32 - 1], got {seed!r}")
        self.url = url
        self.method = method
        self.api_key = api_key
        self.connect_timeout_s = float(connect_timeout_s)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.open_timeout_s = float(open_timeout_s)
        self.call_timeout_s = call_timeout_s
        self.seed = seed
        self.max_frame_bytes = int(max_frame_bytes)
        self.last_call_timing: Mapping[str, float] = dict(NAN_TIMING)
        """After each call: ``server_compute_s`` (the batch's sampling), ``server_queue_s`` (waiting for
        the batch) and ``transport_s`` (round trip minus both: network and serialization)."""
        self.last_batch_size = 0
        self.calls = 0
        self.failures = 0
        self.reconnects = 0
        self._ws = None
        self._backoff = self.backoff_s
        self._next_attempt = -math.inf
        self.metadata = self._connect_with_retry()
        self.horizon = int(self.metadata["horizon"])
        self.action_dim = int(self.metadata["action_dim"])
        if method is not None and method not in self.metadata.get("methods", ()):
            served = ", ".join(self.metadata.get("methods", ()))
            self.close()
            raise ValueError(f"method {method!r} is not served by {url} (served: {served})")

    # -- connection ------------------------------------------------------------------------------------
    def _open(self) -> dict:
        """One connection attempt: the handshake and the metadata frame."""
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        # Entering the context is what every websockets version from 15 on accepts without a warning;
        # the connection is closed by close() / _drop().
        ws = connect(self.url, compression=None, max_size=self.max_frame_bytes, additional_headers=headers,
                     open_timeout=self.open_timeout_s, proxy=None).__enter__()
        try:
            frame = ws.recv(timeout=self.open_timeout_s)
            meta = protocol.unpackb(frame)
            if not isinstance(meta, dict) or "horizon" not in meta or "action_dim" not in meta:
                raise protocol.ProtocolError("metadata", "the server's first frame is not a policy's metadata")
        except BaseException:
            ws.close()
            raise
        self._ws = ws
        self._backoff = self.backoff_s
        return meta

    def _refused(self, error) -> ServerRefused | None:
        from websockets.exceptions import InvalidStatus

        if isinstance(error, InvalidStatus) and error.response.status_code in (401, 403):
            return ServerRefused(f"{self.url} refused the connection (HTTP {error.response.status_code}): "
                                 f"missing or wrong API key")
        return None

    def _connect_with_retry(self) -> dict:
        deadline = time.monotonic() + self.connect_timeout_s
        backoff = self.backoff_s
        while True:
            try:
                return self._open()
            except Exception as e:  # noqa: BLE001 -- refused, reset, timed out, not a websocket server...
                refused = self._refused(e)
                if refused is not None:
                    raise refused from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerUnreachable(
                        f"no policy server answered at {self.url} within connect_timeout_s = "
                        f"{self.connect_timeout_s:g} s (last error: {type(e).__name__}: {e}); "
                        f"start one with `rtchunk serve`") from None
                time.sleep(min(backoff, left))
                backoff = min(2 * backoff, self.max_backoff_s)

    def _drop(self, backoff: bool = True) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 -- already broken
                pass
        if backoff:
            self._next_attempt = time.monotonic() + self._backoff
            self._backoff = min(2 * self._backoff, self.max_backoff_s)
        else:
            self._next_attempt = -math.inf

    def _reconnect(self) -> None:
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            meta = self._open()
        except Exception as e:  # noqa: BLE001
            refused = self._refused(e)
            self._next_attempt = time.monotonic() + self._backoff
            self._backoff = min(2 * self._backoff, self.max_backoff_s)
            if refused is not None:
                raise refused from None
            raise ServerUnavailable(f"cannot reconnect to {self.url} ({type(e).__name__}: {e}); "
                                    f"next attempt in {self._next_attempt - time.monotonic():.2g} s") from None
        if (int(meta["horizon"]), int(meta["action_dim"])) != (self.horizon, self.action_dim):
            self._drop()
            raise ServerUnavailable(f"{self.url} now serves chunks of {meta['horizon']}x{meta['action_dim']}, "
                                    f"not {self.horizon}x{self.action_dim}")
        self.metadata = meta
        self.reconnects += 1

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def close(self) -> None:
        self._drop(backoff=False)

    def __enter__(self) -> "RemotePolicy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the chunk policy ------------------------------------------------------------------------------
    def request(self, observation: Any, prev_chunk_leftover, told_delay: int, execute_horizon) -> dict:
        """The request frame's content for one call (see docs/serving.md for the keys)."""
        if isinstance(observation, Mapping):
            req = dict(observation)
        else:
            req = {protocol.OBSERVATION_KEY: np.asarray(observation, np.float32)}
        if prev_chunk_leftover is not None:
            req[protocol.LEFTOVER_KEY] = np.asarray(prev_chunk_leftover, np.float32)
            req[protocol.DELAY_KEY] = int(told_delay)
            if execute_horizon is not None:
                req[protocol.EXECUTE_HORIZON_KEY] = int(execute_horizon)
            if self.method is not None:
                req[protocol.METHOD_KEY] = self.method
        if self.seed is not None:
            req[protocol.SEED_KEY] = (int(self.seed) + self.calls) % (protocol.MAX_SEED + 1)
        return req

    def __call__(self, observation, prev_chunk_leftover, told_delay, execute_horizon) -> np.ndarray:
        from websockets.exceptions import ConnectionClosed

        self.last_call_timing = dict(NAN_TIMING)
        frame = protocol.packb(self.request(observation, prev_chunk_leftover, told_delay, execute_horizon))
        self.calls += 1
        if self._ws is None:
            try:
                self._reconnect()
            except Exception:
                self.failures += 1
                raise
        ws = self._ws
        start = time.perf_counter()
        try:
            ws.send(frame)
            answer = ws.recv(timeout=self.call_timeout_s)
        except TimeoutError:
            self.failures += 1
            self._drop()
            raise TimeoutError(f"no reply from {self.url} within call_timeout_s = {self.call_timeout_s:g} s") from None
        except (ConnectionClosed, OSError) as e:
            self.failures += 1
            self._drop()
            raise ServerUnavailable(f"lost the connection to {self.url} ({type(e).__name__}: {e}); "
                                    f"reconnecting on the next call") from None
        if isinstance(answer, str):
            self.failures += 1
            self._drop(backoff=False)  # the server closes after an error; a fresh connection is fine
            raise ServerError(f"{self.url}: {answer}")
        reply = protocol.unpackb(answer)
        round_trip = time.perf_counter() - start
        actions = reply.get(protocol.ACTIONS_KEY) if isinstance(reply, dict) else None
        if not isinstance(actions, np.ndarray) or actions.shape != (self.horizon, self.action_dim):
            self.failures += 1
            got = getattr(actions, "shape", type(actions).__name__)
            raise ServerError(f"{self.url} replied without actions of shape [{self.horizon}, {self.action_dim}] "
                              f"(got {got})")
        timing = reply.get(protocol.TIMING_KEY) or {}
        compute_s = float(timing.get("infer_ms", math.nan)) / 1000.0
        queue_s = float(timing.get("queue_ms", math.nan)) / 1000.0
        self.last_call_timing = {"server_compute_s": compute_s, "server_queue_s": queue_s,
                                 "transport_s": round_trip - compute_s - queue_s}
        self.last_batch_size = int(timing.get("batch_size", 0))
        return np.array(actions, np.float32)  # writable, and no longer tied to the frame's buffer
