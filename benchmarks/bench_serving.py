"""Remote inference over loopback: what the protocol costs per call, and what batching buys.

1. Overhead: ``RemotePolicy`` against a server in another process whose backend is the numpy toy policy
   (no model), for chunks of 8x6 and 50x32, against calling that backend in process. Reports the round
   trip, the in-process call, their difference (the overhead: serialization both ways, the websocket,
   the server's request checks and hand-over to its sampling thread) and the client's ``transport_s``
   (round trip minus the server's queue and compute). Target: <= 1 ms per call for 50x32.
2. Concurrency: 1, 2, 4, 8, 16 clients (threads of this process, each its own connection) asking back to
   back for RTC chunks (leftover of 5, d = 2, s = 3) from ``rtchunk serve`` running the demo's model size
   (random weights: the cost does not depend on them), batched (``--max-batch 16``) and one request at a
   time (``--max-batch 1``), both servers up at once and the two modes alternating. Reports chunks/s and
   the round trip's p50 / p99 (p99: the worst of the rounds). Target: >= 3x the throughput at 8 clients.
3. The JAX backend's RTC call in process for each bucket size: how far batching can cut the compute
   per chunk on this machine, which bounds the ratio of part 2.

    python benchmarks/bench_serving.py                  # about 4 min on 2 cores (compiles included)
    python benchmarks/bench_serving.py --duration-s 1 --rounds 1 --overhead-calls 200   # smoke check
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    duration_s: float = 4.0
    """Seconds per client count and mode (split into ``rounds`` alternating runs)."""
    rounds: int = 4
    overhead_calls: int = 2000
    """Calls per chunk size in the overhead runs."""
    clients: tuple[int, ...] = (1, 2, 4, 8, 16)
    obs_dim: int = 64
    action_dim: int = 6
    max_wait_ms: float = 2.0
    out: Path | None = None
    """Optional directory for results.json."""


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], pattern: str, timeout: float = 900.0) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(pattern, line)
        if match:
            return proc, int(match.group(1))
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.stderr.read()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


TOY = """
import sys
from rtchunk.serving.backends import ToyBackend
from rtchunk.serving.server import PolicyServer, ServerConfig
o, h, a, port, in_loop = map(int, sys.argv[1:6])
PolicyServer(ToyBackend(o, h, a), ServerConfig(port=port, sample_in_loop=bool(in_loop))).run(
    on_ready=lambda s: print("ready", s.port, flush=True))
"""


def overhead(config: BenchConfig, horizon: int, action_dim: int, in_loop: bool) -> dict:
    from rtchunk.serving.backends import SampleBatch, ToyBackend
    from rtchunk.serving.client import RemotePolicy

    obs = np.linspace(-1, 1, config.obs_dim).astype(np.float32)
    left = np.zeros((horizon - 3, action_dim), np.float32)
    backend = ToyBackend(config.obs_dim, horizon, action_dim)
    prev = np.zeros((1, horizon, action_dim), np.float32)
    batch = SampleBatch(obs[None], prev, np.array([2], np.int32), np.array([3], np.int32), np.zeros(1, np.uint32),
                        np.zeros(1, np.uint32))
    local = []
    for _ in range(config.overhead_calls):
        t = time.perf_counter()
        backend.sample("rtc", batch)
        local.append(time.perf_counter() - t)
    proc, port = _start([sys.executable, "-c", TOY, str(config.obs_dim), str(horizon), str(action_dim), "0", str(int(in_loop))],
                        r"ready (\d+)")
    try:
        remote, transport = [], []
        with RemotePolicy(f"ws://127.0.0.1:{port}", method="rtc") as policy:
            for i in range(config.overhead_calls + 100):
                t = time.perf_counter()
                policy(obs, left, 2, 3)
                if i >= 100:  # the first calls warm up both ends
                    remote.append(time.perf_counter() - t)
                    transport.append(policy.last_call_timing["transport_s"])
    finally:
        _stop(proc)
    ms = lambda xs, q=50: float(np.percentile(xs, q) * 1e3)  # noqa: E731
    return {"chunk": f"{horizon}x{action_dim}", "sample_in_loop": in_loop, "in_process_ms": ms(local), "round_trip_ms": ms(remote),
            "round_trip_p99_ms": ms(remote, 99), "overhead_ms": ms(remote) - ms(local), "transport_ms": ms(transport)}


def _clients(url: str, n: int, duration_s: float, obs_dim: int) -> dict:
    from rtchunk.serving.client import RemotePolicy

    policies = [RemotePolicy(url, method="rtc") for _ in range(n)]
    trips: list[list[float]] = [[] for _ in range(n)]
    batch_sizes: list[list[int]] = [[] for _ in range(n)]
    start_barrier = threading.Barrier(n + 1)
    stop_at = [0.0]

    def loop(i):
        policy = policies[i]
        obs = np.random.default_rng(i).normal(size=obs_dim).astype(np.float32)
        chunk = policy(obs, None, 0, None)  # the first (naive) chunk, not counted
        start_barrier.wait()
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            chunk = policy(obs, chunk[3:], 2, 3)
            trips[i].append(time.perf_counter() - t)
            batch_sizes[i].append(policy.last_batch_size)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 1e9
    start_barrier.wait()
    begin = time.perf_counter()
    stop_at[0] = begin + duration_s
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    for p in policies:
        p.close()
    all_trips = np.concatenate([np.asarray(t) for t in trips])
    return {"clients": n, "chunks_per_s": len(all_trips) / elapsed, "p50_ms": float(np.percentile(all_trips, 50) * 1e3),
            "p99_ms": float(np.percentile(all_trips, 99) * 1e3),
            "mean_batch": float(np.mean(np.concatenate([np.asarray(b) for b in batch_sizes])))}


def concurrency(config: BenchConfig) -> list[dict]:
    """Both servers run at once; for each client count the two modes alternate ``rounds`` times, so a
    busy moment of the machine lands on both (the ratio is what this measures)."""
    import flax.nnx as nnx

    from rtchunk.checkpoints import save_policy
    from rtchunk.commands.reproduce import CPU_MODEL as DEMO_MODEL
    from rtchunk.model import FlowPolicy

    modes = (("batched", max(config.clients)), ("one at a time", 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        save_policy(Path(tmp) / "policy", FlowPolicy(config.obs_dim, config.action_dim, DEMO_MODEL, rngs=nnx.Rngs(0)))
        servers = {}
        try:
            for mode, max_batch in modes:
                cmd = [sys.executable, "-m", "rtchunk.cli", "serve", "--policy-dir", str(Path(tmp) / "policy"),
                       "--port", "0", "--method", "rtc", "--max-batch", str(max_batch),
                       "--max-wait-ms", str(config.max_wait_ms)]
                t = time.perf_counter()
                servers[mode] = _start(cmd, r"on ws://127\.0\.0\.1:(\d+)")
                print(f"  {mode}: server ready after {time.perf_counter() - t:.0f} s (compiling every bucket)", flush=True)
            for n in config.clients:
                parts = {mode: [] for mode, _ in modes}
                for _ in range(config.rounds):
                    for mode, _ in modes:
                        url = f"ws://127.0.0.1:{servers[mode][1]}"
                        parts[mode].append(_clients(url, n, config.duration_s / config.rounds, config.obs_dim))
                for mode, _ in modes:
                    runs = parts[mode]
                    row = {"mode": mode, "clients": n,
                           "chunks_per_s": float(np.mean([r["chunks_per_s"] for r in runs])),
                           "p50_ms": float(np.median([r["p50_ms"] for r in runs])),
                           "p99_ms": float(np.max([r["p99_ms"] for r in runs])),
                           "mean_batch": float(np.mean([r["mean_batch"] for r in runs]))}
                    print(f"  {mode:13s} {n:2d} clients: {row['chunks_per_s']:7.1f} chunks/s, p50 {row['p50_ms']:6.1f} ms, "
                          f"p99 {row['p99_ms']:6.1f} ms, mean batch {row['mean_batch']:.1f}", flush=True)
                    rows.append(row)
        finally:
            for proc, _ in servers.values():
                _stop(proc)
    return rows


def sampling_cost(config: BenchConfig) -> list[dict]:
    """The JAX backend's RTC call in this process, per bucket: what batching can save in compute alone."""
    import flax.nnx as nnx

    from rtchunk.commands.reproduce import CPU_MODEL as DEMO_MODEL
    from rtchunk.model import FlowPolicy
    from rtchunk.serving.backends import SampleBatch
    from rtchunk.serving.jax_backend import JaxBackend

    h, a, o = DEMO_MODEL.horizon, config.action_dim, config.obs_dim
    backend = JaxBackend(FlowPolicy(o, a, DEMO_MODEL, rngs=nnx.Rngs(0)), max_batch=max(config.clients),
                         method_names=("rtc",))
    rows = []
    for b in backend.buckets:
        batch = SampleBatch(np.zeros((b, o), np.float32), np.zeros((b, h, a), np.float32), np.full(b, 2, np.int32),
                            np.full(b, 3, np.int32), np.zeros(b, np.uint32), np.arange(b, dtype=np.uint32))
        backend.sample("rtc", batch)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            backend.sample("rtc", batch)
            times.append(time.perf_counter() - t)
        ms = float(np.median(times) * 1e3)
        rows.append({"batch": b, "ms": ms, "ms_per_chunk": ms / b})
        print(f"  batch {b:2d}: {ms:6.2f} ms, {ms / b:5.2f} ms per chunk", flush=True)
    return rows


def main(config: BenchConfig) -> int:
    print("overhead per call (loopback, toy backend in another process):", flush=True)
    over = []
    for (h, a), in_loop in itertools.product(((8, 6), (50, 32)), (False, True)):
        row = overhead(config, h, a, in_loop)
        over.append(row)
        where = "sampling in the loop" if in_loop else "sampling thread"
        print(f"  {row['chunk']:>5}, {where:20s}: round trip {row['round_trip_ms']:.3f} ms (p99 {row['round_trip_p99_ms']:.3f}), "
              f"in process {row['in_process_ms']:.3f} ms, overhead {row['overhead_ms']:.3f} ms, "
              f"transport {row['transport_ms']:.3f} ms", flush=True)
    print("concurrent clients, RTC on the demo's model size:", flush=True)
    rows = concurrency(config)
    for n in config.clients:
        b = next(r for r in rows if r["mode"] == "batched" and r["clients"] == n)
        s = next(r for r in rows if r["mode"] == "one at a time" and r["clients"] == n)
        print(f"  {n:2d} clients: batched / one at a time = {b['chunks_per_s'] / s['chunks_per_s']:.2f}x")
    print("in-process RTC sampling per batch (the JAX backend, no server):", flush=True)
    cost = sampling_cost(config)
    if config.out is not None:
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "results.json").write_text(json.dumps({"overhead": over, "concurrency": rows,
                                                             "sampling": cost}, indent=2))
    return 0


if __name__ == "__main__":
    import tyro

    sys.exit(main(tyro.cli(BenchConfig)))
