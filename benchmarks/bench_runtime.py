"""Controller timing of the asynchronous runtime while inference runs in the background at full load.

For each control rate, four runs side by side:

- ``bare``: a plain Python sleep loop on the same deadlines, no runtime: what the machine itself gives;
- ``bare+load``: the same loop while a thread runs the inference below back to back: what the load
  alone costs a Python loop (CPU and GIL contention), without the runtime;
- ``idle``: the runtime with a policy that returns a constant chunk at once;
- ``loaded``: the runtime with the default-size FlowPolicy sampled with RTC, replanning after every
  action, so inference runs back to back and keeps the CPU busy.

Reports tick lateness (jitter) p50 / p99 / max, missed ticks, the runtime's own per-tick work (from
observe() to act()), garbage-collection pauses, and p99 jitter relative to ``bare``. Target (issue 5):
p99 < 2 ms at 50 Hz, and no missed ticks caused by the runtime: compare ``loaded`` with ``bare+load``
(on a busy machine the OS alone delays and misses ticks).

    python benchmarks/bench_runtime.py                    # 60 s per run, 50 and 200 Hz (about 4 min)
    python benchmarks/bench_runtime.py --duration-s 5     # smoke check
"""

from __future__ import annotations

import os

# Two CPU devices like the rest of the project (only if the caller has not chosen).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    duration_s: float = 60.0
    """Seconds per run (each rate runs idle and loaded)."""
    rates_hz: tuple[float, ...] = (50.0, 200.0)
    obs_dim: int = 64
    action_dim: int = 6
    num_steps: int = 5
    """Flow steps per chunk (the papers' 5)."""
    out: Path | None = None
    """Optional directory for results.json and each run's telemetry (CSV, JSON, PNG)."""
    seed: int = 0


class TimedRobot:
    """observe() returns a fixed vector; act() records how long the runtime took since observe()."""

    def __init__(self, obs_dim: int, capacity: int):
        self.obs = np.linspace(-1, 1, obs_dim).astype(np.float32)
        self.work = np.zeros(capacity)
        self.n = 0
        self._t = 0.0

    def observe(self):
        self._t = time.perf_counter()
        return self.obs

    def act(self, action):
        if self.n < self.work.size:
            self.work[self.n] = time.perf_counter() - self._t
            self.n += 1


class GcPauses:
    """Durations of garbage collections (any thread) while active."""

    def __init__(self):
        self.pauses: list[tuple[int, float]] = []
        self._t = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._t))

    def __enter__(self):
        import gc

        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        import gc

        gc.callbacks.remove(self)

    def summary(self) -> dict:
        full = [d for g, d in self.pauses if g == 2]
        return {"gc_collections": len(self.pauses), "gc_full": len(full),
                "gc_max_ms": max((d for _, d in self.pauses), default=0.0) * 1e3}


def bare_loop(rate_hz: float, config: BenchConfig, load=None):
    """The same deadline schedule with nothing but sleeping: the machine's own jitter. With ``load`` (a
    function), a thread calls it back to back meanwhile."""
    import threading

    stop = threading.Event()

    def background():
        while not stop.is_set():
            load()

    thread = threading.Thread(target=background, daemon=True) if load is not None else None
    if thread is not None:
        thread.start()
    try:
        row = _bare_loop(rate_hz, config)
    finally:
        stop.set()
        if thread is not None:
            thread.join()
    row["run"] = "bare" if load is None else "bare+load"
    return row


def _bare_loop(rate_hz: float, config: BenchConfig):
    period = 1.0 / rate_hz
    ticks = int(round(config.duration_s * rate_hz))
    late = np.zeros(ticks)
    missed = 0
    deadline = time.monotonic() + period
    with GcPauses() as gc_pauses:
        for i in range(ticks):
            remaining = deadline - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
            late[i] = time.monotonic() - deadline
            if late[i] >= period:
                skipped = int(late[i] // period)
                missed += skipped
                deadline += skipped * period
                late[i] -= skipped * period
            deadline += period
    ms = late * 1e3
    return {
        "run": "bare", "rate_hz": rate_hz, "duration_s": config.duration_s, "ticks": ticks, "missed_ticks": missed,
        "jitter_ms_p50": float(np.percentile(ms, 50)), "jitter_ms_p99": float(np.percentile(ms, 99)),
        "jitter_ms_max": float(ms.max()), "tick_work_us_p50": 0.0, "tick_work_us_p99": 0.0, "inferences": 0,
        "compute_ms_p50": float("nan"), "starvation_ticks": 0, **gc_pauses.summary(),
    }


def run_once(policy, rate_hz: float, config: BenchConfig, label: str):
    from rtchunk.runtime import Paper, Runtime, RuntimeConfig

    period = 1.0 / rate_hz
    ticks = int(round(config.duration_s * rate_hz))
    robot = TimedRobot(config.obs_dim, ticks + 1)
    # s_min = 1: a new inference starts as soon as the previous one swapped in, i.e. back to back.
    runtime = Runtime(policy, RuntimeConfig(replan=Paper(s_min=1), control_period_s=period), robot=robot)
    runtime.start(max_ticks=ticks)  # the first chunk, and the runtime's own gc.collect(), happen here
    with GcPauses() as gc_pauses:
        runtime.wait()
    runtime.stop()
    runtime.raise_if_failed()
    tel = runtime.telemetry()
    s = tel.summary()
    work_us = robot.work[: robot.n] * 1e6
    row = {
        "run": label,
        "rate_hz": rate_hz,
        "duration_s": config.duration_s,
        "ticks": s["ticks"],
        "missed_ticks": s["missed_ticks"],
        "jitter_ms_p50": s["jitter_ms_p50"],
        "jitter_ms_p99": s["jitter_ms_p99"],
        "jitter_ms_max": s["jitter_ms_max"],
        "tick_work_us_p50": float(np.percentile(work_us, 50)),
        "tick_work_us_p99": float(np.percentile(work_us, 99)),
        "inferences": s["inferences"],
        "compute_ms_p50": s["compute_ms_p50"],
        "starvation_ticks": s["starvation_ticks"],
        **gc_pauses.summary(),
    }
    if config.out is not None:
        tel.save(config.out / f"{label}_{rate_hz:g}hz")
    return row


def main(config: BenchConfig = BenchConfig()) -> int:
    import flax.nnx as nnx

    from rtchunk import RTC, FlowPolicy, ModelConfig
    from rtchunk.runtime import flow_policy_fn

    model = ModelConfig()
    flow = FlowPolicy(config.obs_dim, config.action_dim, model, rngs=nnx.Rngs(config.seed))
    rtc = flow_policy_fn(flow, RTC(), num_steps=config.num_steps, seed=config.seed)
    constant = np.zeros((model.horizon, config.action_dim), np.float32)

    def idle(observation, leftover, told_delay, execute_horizon):
        return constant

    # Compile and warm up outside the timed runs.
    obs = np.zeros(config.obs_dim, np.float32)
    rtc(obs, None, 0, None)
    start = time.perf_counter()
    for _ in range(5):
        rtc(obs, np.zeros((model.horizon - 1, config.action_dim), np.float32), 1, 1)
    per_chunk_ms = (time.perf_counter() - start) / 5 * 1e3
    print(f"default FlowPolicy (H={model.horizon}), RTC with {config.num_steps} steps: {per_chunk_ms:.1f} ms/chunk "
          f"on {os.cpu_count()} CPUs; {config.duration_s:g} s per run")

    rows = []
    for rate in config.rates_hz:
        left = np.zeros((model.horizon - 1, config.action_dim), np.float32)
        runs = [
            bare_loop(rate, config),
            bare_loop(rate, config, load=lambda: rtc(obs, left, 1, 1)),
            run_once(idle, rate, config, "idle"),
            run_once(rtc, rate, config, "loaded"),
        ]
        for row in runs:
            row["p99_vs_bare"] = row["jitter_ms_p99"] / max(runs[0]["jitter_ms_p99"], 1e-9)
            rows.append(row)
            print(f"{rate:>5g} Hz {row['run']:<9}  jitter p50 {row['jitter_ms_p50']:.3f} ms  p99 {row['jitter_ms_p99']:.3f} ms "
                  f"({row['p99_vs_bare']:.2f}x bare)  max {row['jitter_ms_max']:.2f} ms  "
                  f"missed {row['missed_ticks']}/{row['ticks']}  tick work p50/p99 {row['tick_work_us_p50']:.0f}/"
                  f"{row['tick_work_us_p99']:.0f} us  inferences {row['inferences']}  starved {row['starvation_ticks']}  "
                  f"gc full {row['gc_full']} (max pause {row['gc_max_ms']:.2f} ms)", flush=True)
    if config.out is not None:
        from rtchunk.checkpoints import atomic_write_text

        atomic_write_text(config.out / "results.json", json.dumps({"per_chunk_ms": per_chunk_ms, "runs": rows}, indent=1))
        print(f"results in {config.out}")
    return 0


if __name__ == "__main__":
    import tyro

    raise SystemExit(main(tyro.cli(BenchConfig, config=(tyro.conf.OmitArgPrefixes,))))
