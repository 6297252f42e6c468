"""The policy server: openpi's websocket protocol, RTC inputs, and requests of many robots batched.

One asyncio event loop accepts connections, decodes and checks requests and sends replies; sampling runs
on one worker thread so the loop keeps receiving meanwhile. Requests wait in one queue. A batch starts
with the oldest request and takes every queued request of the same method, up to ``max_batch``; it
waits for more for up to ``max_wait_ms``, counted from the oldest request's arrival or from the moment
the worker became free, whichever is later (so clients whose replies just left can join the next batch
instead of the queue splitting into groups that take turns). A connection has at most one request
waiting or being sampled, so the batch starts at once, without waiting, when every open connection has
one: one robot alone never waits. Each request keeps its own leftover, delay, execute horizon and noise,
so a batched chunk is the chunk the request would get alone.

A request that breaks the protocol gets a one-line text frame naming the bad key and its connection is
closed with code 1011 (as openpi's server does); every other connection carries on. A frame over
``max_frame_bytes`` is refused by the websocket layer from its header (close code 1009), before it is
read. A client that disconnects while its request waits or is sampled only loses its own reply.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import http
import logging
import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from rtchunk.serving import protocol
from rtchunk.serving.backends import Backend, SampleBatch

logger = logging.getLogger("rtchunk.serving")

CLOSE_INTERNAL_ERROR = 1011


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """Interface to listen on; 0.0.0.0 for every interface (then set an API key)."""
    port: int = 8000
    """TCP port; 0 picks a free one (``PolicyServer.port`` says which)."""
    api_key: str | None = None
    """When set, a connection must send ``Authorization: Api-Key <key>`` (openpi-client's header)."""
    max_batch: int = 8
    """Most requests sampled in one call."""
    max_wait_ms: float = 2.0
    """How long the oldest waiting request waits for others to share its batch."""
    max_frame_bytes: int = 8 * 2**20
    """Largest request frame accepted; a larger one closes its connection (code 1009) unread."""
    method: str | None = None
    """The method of a request with a leftover but no ``rtc/method``; None: ``rtc`` if served. Every
    method the backend serves can be asked for with ``rtc/method``."""
    seed: int = 0
    """Noise of requests without ``rtc/seed``: drawn from (seed, a per-server request counter)."""
    sample_in_loop: bool = False
    """Sample on the event loop's own thread instead of a worker thread: saves the hand-off to the worker
    and back (a fraction of a millisecond per batch), but no frame is read while a batch computes."""

    def __post_init__(self):
        if not isinstance(self.port, (int, np.integer)) or not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be an integer in [0, 65535], got {self.port!r}")
        if not isinstance(self.max_batch, (int, np.integer)) or not 1 <= self.max_batch <= 1024:
            raise ValueError(f"--max-batch must be an integer in [1, 1024], got {self.max_batch!r}")
        if not (isinstance(self.max_wait_ms, (int, float)) and math.isfinite(self.max_wait_ms)
                and 0 <= self.max_wait_ms <= 10_000):
            raise ValueError(f"--max-wait-ms must be a number of milliseconds in [0, 10000], got {self.max_wait_ms!r}")
        if not isinstance(self.max_frame_bytes, (int, np.integer)) or self.max_frame_bytes < 1024:
            raise ValueError(f"--max-frame-bytes must be an integer >= 1024, got {self.max_frame_bytes!r}")
        if self.api_key is not None and (not self.api_key or not self.api_key.isprintable() or " " in self.api_key):
            raise ValueError("--api-key must be a non-empty printable string without spaces")
        if not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed <= protocol.MAX_SEED:
            raise ValueError(f"--seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")


@dataclasses.dataclass(eq=False)
class _Pending:
    request: protocol.Request
    future: asyncio.Future
    arrival: float
    websocket: Any
    noise_seed: int
    noise_index: int


@dataclasses.dataclass
class ServerStats:
    connections: int = 0
    requests: int = 0
    replies: int = 0
    protocol_errors: int = 0
    batches: int = 0
    dropped: int = 0
    """Requests whose client had gone before their batch started (not sampled)."""
    batch_sizes: deque = dataclasses.field(default_factory=lambda: deque(maxlen=100_000))
    """The sizes of the most recent batches."""


class PolicyServer:
    """Serve a backend's chunks over websockets. ``run()`` blocks; ``start()`` runs it on a thread.

    ::

        with PolicyServer(backend, ServerConfig(port=0)).start() as server:
            policy = RemotePolicy(server.url)
    """

    def __init__(self, backend: Backend, config: ServerConfig = ServerConfig()):
        default = config.method or ("rtc" if "rtc" in backend.methods else next(iter(backend.methods)))
        if default not in backend.methods:
            from rtchunk.choices import unknown_choice

            raise unknown_choice("--method", default, tuple(backend.methods))
        self.backend = backend
        self.config = config
        self.served = protocol.ServedPolicy(
            obs_dim=backend.obs_dim, horizon=backend.horizon, action_dim=backend.action_dim,
            methods=backend.methods, default_method=default, max_trained_delay=backend.max_trained_delay,
        )
        self.metadata = protocol.metadata(self.served, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                                          policy=getattr(backend, "description", ""))
        self._metadata_frame = protocol.packb(self.metadata)
        self.stats = ServerStats()
        self.port: int | None = None
        self._queue: deque[_Pending] = deque()
        self._counter = 0
        self._open = 0  # connections open now
        self._in_flight = 0  # requests queued or being sampled (at most one per connection)
        self._free_since = 0.0  # when the worker finished its last batch (perf_counter)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._arrived: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rtchunk-sampler")

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"ws://{host}:{self.port}"

    def run(self, on_ready=None) -> None:
        """Serve until ``stop()`` (or Ctrl-C); ``on_ready(server)`` is called once it listens."""
        asyncio.run(self._main(on_ready))

    def start(self, timeout: float = 30.0) -> "PolicyServer":
        """Run the server on a background thread; returns once it listens (``port`` is then set)."""
        if self._thread is not None:
            raise RuntimeError("this server was already started")

        def target():
            try:
                self.run()
            except BaseException as e:  # noqa: BLE001 -- reported by start() / stop()
                self._error = e
                self._ready.set()

        self._thread = threading.Thread(target=target, name="rtchunk-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the policy server did not start listening within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection (code 1001) and stop; waits for the thread started by ``start()``."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has just closed
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> "PolicyServer":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _main(self, on_ready) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._arrived = asyncio.Event()
        batcher = asyncio.create_task(self._batch_loop())
        try:
            async with serve(self._handle, self.config.host, self.config.port, compression=None,
                             max_size=self.config.max_frame_bytes, process_request=self._process_request,
                             server_header="rtchunk") as server:
                self.port = int(next(iter(server.sockets)).getsockname()[1])
                self._ready.set()
                logger.info("serving %s on %s", self.metadata["policy"], self.url)
                if on_ready is not None:
                    on_ready(self)
                await self._stop.wait()
        finally:
            batcher.cancel()
            for pending in self._queue:
                if not pending.future.done():
                    pending.future.cancel()
            self._queue.clear()
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- connections -----------------------------------------------------------------------------------
    def _process_request(self, connection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        key = self.config.api_key
        if key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {key}".encode()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key\n")
        return None

    async def _handle(self, websocket) -> None:
        self.stats.connections += 1
        self._open += 1
        try:
            await websocket.send(self._metadata_frame)
            async for frame in websocket:
                arrival = time.perf_counter()
                self.stats.requests += 1
                try:
                    request = protocol.parse_request(frame, self.served)
                except protocol.ProtocolError as e:
                    self.stats.protocol_errors += 1
                    await self._refuse(websocket, str(e))
                    return
                if request.seed is None:
                    self._counter += 1
                    seed, index = self.config.seed, self._counter
                else:
                    seed, index = request.seed, 0
                future = self._loop.create_future()
                self._queue.append(_Pending(request, future, arrival, websocket, seed, index))
                self._in_flight += 1
                self._arrived.set()
                try:
                    chunk, infer_ms, queue_ms, size = await future
                except asyncio.CancelledError:
                    return
                except Exception as e:  # noqa: BLE001 -- a sampler failure ends this connection, not the server
                    logger.exception("sampling failed")
                    await self._refuse(websocket, f"server: sampling failed: {type(e).__name__}: {e}")
                    return
                await websocket.send(protocol.reply(chunk, infer_ms, queue_ms, size))
                self.stats.replies += 1
        except ConnectionClosed:
            pass
        finally:
            self._open -= 1

    async def _refuse(self, websocket, message: str) -> None:
        line = " ".join(message.split())  # one line
        try:
            await websocket.send(line)
            await websocket.close(CLOSE_INTERNAL_ERROR, line.encode()[:120].decode("utf-8", "ignore"))
        except ConnectionClosed:
            pass

    # -- batching --------------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Pending]:
        """The oldest request and the queued ones of its method, up to max_batch; skips abandoned ones."""
        while self._queue and (self._queue[0].future.done() or self._queue[0].websocket.state is not State.OPEN):
            dropped = self._queue.popleft()
            dropped.future.cancel()
            self._in_flight -= 1
            self.stats.dropped += 1
        if not self._queue:
            return []
        method = self._queue[0].request.method
        batch, rest = [], deque()
        while self._queue:
            p = self._queue.popleft()
            if len(batch) < self.config.max_batch and p.request.method == method and not p.future.done():
                batch.append(p)
            else:
                rest.append(p)
        self._queue = rest
        return batch

    def _count(self, method: str) -> int:
        return sum(p.request.method == method for p in self._queue)

    async def _batch_loop(self) -> None:
        wait_s = self.config.max_wait_ms / 1000.0
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            first = self._queue[0]
            deadline = max(first.arrival, self._free_since) + wait_s
            # Waiting longer cannot fill the batch once no open connection is free to send a request.
            while self._count(first.request.method) < self.config.max_batch and self._in_flight < self._open:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        start = time.perf_counter()
        try:
            reqs = [p.request for p in batch]
            arrays = SampleBatch(
                observation=np.stack([r.observation for r in reqs]),
                prev_chunk=np.stack([r.prev_chunk for r in reqs]),
                inference_delay=np.array([r.inference_delay for r in reqs], np.int32),
                execute_horizon=np.array([r.execute_horizon for r in reqs], np.int32),
                seed=np.array([p.noise_seed for p in batch], np.uint32),
                noise_index=np.array([p.noise_index % 2**32 for p in batch], np.uint32),
            )
            method = reqs[0].method
            start = time.perf_counter()
            if self.config.sample_in_loop:
                chunks = self.backend.sample(method, arrays)
            else:
                chunks = await self._loop.run_in_executor(self._executor, self.backend.sample, method, arrays)
            chunks = np.asarray(chunks, np.float32)
            expected = (len(batch), self.served.horizon, self.served.action_dim)
            if chunks.shape != expected:
                raise ValueError(f"the backend returned chunks of shape {chunks.shape}, expected {expected}")
        except Exception as e:  # noqa: BLE001 -- handed to each waiting connection; the server carries on
            self._free_since = time.perf_counter()
            self._in_flight -= len(batch)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        self._free_since = time.perf_counter()
        self._in_flight -= len(batch)
        infer_ms = (self._free_since - start) * 1000.0
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(batch))
        for i, p in enumerate(batch):
            if not p.future.done():
                p.future.set_result((chunks[i], infer_ms, (start - p.arrival) * 1000.0, len(batch)))
