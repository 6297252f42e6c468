"""A Kinetix level run in wall-clock time by the asynchronous runtime (``rtchunk live``).

The controller thread steps one environment every control period (30 Hz by default: one Kinetix step
is two 1/60 s physics frames, so the level plays at its own speed) while a trained flow policy's real
inference runs in the background, optionally slowed by an injected extra latency (the paper's
real-robot experiments added +100 and +200 ms). Each method (naive, RTC, training-time RTC) runs a
number of episodes per latency; the command prints and writes task success with Wilson intervals and
the runtime's telemetry (jitter, observed delays, starvation, seam jumps), one telemetry directory and
one video per run.

Unlike ``rtchunk eval`` (the benchmark: thousands of simulated environments, delays counted in
steps) this measures what a robot would see: delays are whatever the CPU and the injected latency make
them, ticks can be late, and the controller starves when a chunk runs out.

With ``remote`` the policy runs in a policy server (``rtchunk serve``, another process or machine) and the
runtime asks it over the websocket protocol (``rtchunk.serving.RemotePolicy``), naming each method; the
telemetry then splits every round trip into server compute, batch queue and transport.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtchunk.delays import DelayEstimator, MaxEstimator
from rtchunk.files import atomic_write_text, write_json
from rtchunk.kinetix import policy_store, results
from rtchunk.methods import DEFAULT_NUM_STEPS, MethodSettings, check_method_names
from rtchunk.runtime.conditions import Paper, Queue, ReplanCondition, SinceSwap
from rtchunk.runtime.robots import SimulatedRobot

LIVE_METHODS = ("naive", "rtc", "trained_prefix")
DEFAULT_METHODS = ("naive", "rtc")
"""The demo's methods (it trains no training-time-RTC model; ``rtchunk reproduce`` does)."""


@dataclasses.dataclass(frozen=True)
class LiveConfig:
    policy_dir: Path = Path("runs/demo/levels/h17_unicycle/policy")
    """A `rtchunk train-policy` run or checkpoint, used for naive and RTC (the demo writes one here)."""
    trained_prefix_policy_dir: Path = Path("runs/reproduce-cpu/levels/h17_unicycle/policy_rtc")
    """A model trained with --simulated-delay, used for trained_prefix (``rtchunk reproduce``'s fine-tune)."""
    level: str | None = None
    """Level name or path; default: the level the policy's data came from."""
    level_dir: Path | None = None
    shrink: bool | None = None
    """Simulate the level compacted to its used slots; default: as in the policy's data."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """Any of: naive rtc trained_prefix."""
    extra_latency_ms: tuple[float, ...] = (0.0, 100.0)
    """Latency added to every inference (the paper's robot experiments: +100 and +200 ms)."""
    control_hz: float = 30.0
    """Control rate; 30 Hz plays a Kinetix level in real time."""
    replan: ReplanCondition = Paper(s_min=3)
    """When the next inference starts (see rtchunk.runtime): paper (at least s_min actions of the chunk
    executed), since-swap or queue."""
    estimator: DelayEstimator = MaxEstimator()
    """The delay the sampler is told, from the observed delays (the paper: the max of the last 10)."""
    episodes: int = 10
    """Episodes per method and latency (the success rate counts each)."""
    max_timesteps: int | None = None
    """Episode length; default: as in the policy's data (256)."""
    num_flow_steps: int = DEFAULT_NUM_STEPS
    method_settings: MethodSettings = MethodSettings()
    """The methods' knobs (RTC's guidance weight)."""
    video: bool = True
    """One mp4 per run showing its first episode."""
    out: Path = Path("runs/live")
    seed: int = 0
    remote: str | None = None
    """ws://host:port of a policy server (`rtchunk serve --policy-dir ...`): the policy runs there, each method
    asked for by name, instead of in this process. The level still comes from --policy-dir's data (or --level)."""
    trained_prefix_remote: str | None = None
    """A second server for trained_prefix (one server serves one checkpoint); default: --remote."""
    api_key: str | None = None
    """Sent to the servers as `Authorization: Api-Key <key>`."""
    connect_timeout_s: float = 30.0
    """How long to wait for a server at start (retrying with backoff)."""

    def __post_init__(self):
        if not self.methods:
            raise ValueError(f"methods must name at least one of {', '.join(LIVE_METHODS)}")
        check_method_names(self.methods, "--methods", allowed=LIVE_METHODS)
        if not self.extra_latency_ms:
            raise ValueError("extra_latency_ms must hold at least one latency (0 for none)")
        for ms in self.extra_latency_ms:
            if not (math.isfinite(ms) and 0 <= ms <= 10_000):
                raise ValueError(f"extra_latency_ms must be in [0, 10000] ms, got {ms}")
        if not (math.isfinite(self.control_hz) and 0 < self.control_hz <= 1000):
            raise ValueError(f"control_hz must be in (0, 1000], got {self.control_hz}")
        if not isinstance(self.replan, (Paper, SinceSwap, Queue)):
            raise ValueError(f"replan must be paper, since-swap or queue, got {self.replan!r}")
        for name, value in (("episodes", self.episodes), ("num_flow_steps", self.num_flow_steps)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.max_timesteps is not None and self.max_timesteps < 1:
            raise ValueError(f"max_timesteps must be >= 1, got {self.max_timesteps}")
        for name in ("remote", "trained_prefix_remote"):
            url = getattr(self, name)
            if url is not None and not url.startswith(("ws://", "wss://")):
                raise ValueError(f"{name} must be a ws:// or wss:// address (host:port of `rtchunk serve`), got {url!r}")
        if self.trained_prefix_remote is not None and self.remote is None:
            raise ValueError("trained_prefix_remote needs remote (the server for the other methods)")
        if not (math.isfinite(self.connect_timeout_s) and self.connect_timeout_s >= 0):
            raise ValueError(f"connect_timeout_s must be a number of seconds >= 0, got {self.connect_timeout_s}")


class ClipDelay:
    """A trained-prefix policy told at most its trained max delay (a longer frozen prefix is out of its
    training distribution); counts how often the estimate had to be clipped."""

    def __init__(self, policy, max_delay: int):
        self.policy = policy
        self.max_delay = int(max_delay)
        self.horizon = getattr(policy, "horizon", None)
        self.clipped = 0

    def __call__(self, observation, prev_chunk_leftover, told_delay, execute_horizon):
        if told_delay > self.max_delay:
            self.clipped += 1
            told_delay = self.max_delay
        return self.policy(observation, prev_chunk_leftover, told_delay, execute_horizon)

    @property
    def last_call_timing(self):
        """The wrapped policy's timing split (a remote policy's), for the telemetry."""
        return getattr(self.policy, "last_call_timing", None)


class KinetixRobot(SimulatedRobot):
    """One Kinetix environment as the runtime's robot: ``act`` steps it once (a jitted step).

    Counts finished episodes (return, length, solved; the environment resets itself) and keeps the
    physics states of the first episode for a video. ``finished`` is set once ``episodes`` have ended.
    """

    def __init__(self, env, level, step_fn, episodes: int, seed: int, keep_states: bool):
        import jax

        level = jax.device_put(level)  # once, not a host-to-device copy of every leaf per tick
        key = jax.random.key(seed)
        ticks = itertools.count(1)
        obs, state = env.reset(key, level)

        def step(state, action):
            obs, state, *episode = step_fn(key, np.int32(next(ticks)), state, np.asarray(action, np.float32), level)
            return state, obs, episode

        super().__init__(step, state, obs, on_step=self._record)
        self.episodes = episodes
        self.results: list[dict] = []
        self.finished = threading.Event()
        self._keep = keep_states
        self.first_episode: list = [state.physics] if keep_states else []

    def _record(self, state, observation, episode, action) -> None:
        done, ret, length, solved = episode
        if self._keep and not self.results:
            self.first_episode.append(state.physics)
        if bool(done) and len(self.results) < self.episodes:
            self.results.append({"return": float(ret), "length": int(length), "solved": bool(solved)})
            if len(self.results) >= self.episodes:
                self.finished.set()


def make_step(env):
    """A jitted single-environment step returning what the robot needs (levels are arguments)."""
    import jax

    @jax.jit
    def step(key, t, state, action, level):
        obs, state, _, done, info = env.step(jax.random.fold_in(key, t), state, action, level)
        return (obs, state, done, info["returned_episode_returns"], info["returned_episode_lengths"],
                info["returned_episode_solved"])

    return step


def run_one(policy, env, level, step_fn, config: LiveConfig, extra_ms: float, horizon: int, out_dir: Path) -> dict:
    """One method at one latency: ``config.episodes`` episodes in wall-clock time. Returns a result row."""
    from rtchunk.metrics import wilson_interval
    from rtchunk.runtime import Runtime, RuntimeConfig, WithExtraLatency

    period = 1.0 / config.control_hz
    robot = KinetixRobot(env, level, step_fn, config.episodes, config.seed, keep_states=config.video)
    chunk_policy = WithExtraLatency(policy, extra_ms / 1e3) if extra_ms > 0 else policy
    # d_init: what the injected latency alone will cost, so the first guided chunks are not told 0.
    initial = min(math.ceil(extra_ms / 1e3 / period), horizon - 1)
    runtime = Runtime(chunk_policy, RuntimeConfig(replan=config.replan, control_period_s=period,
                                                  estimator=config.estimator, initial_delay=initial), robot=robot)
    # Generous: every episode at full length, the robot's own step time, and a slow start.
    limit_s = config.episodes * env.config.max_timesteps * period * 2 + 60
    started = time.perf_counter()
    runtime.start()
    try:
        finished = robot.finished.wait(limit_s)
    finally:
        runtime.stop()
    runtime.raise_if_failed()
    wall = time.perf_counter() - started
    if not finished:
        raise RuntimeError(f"only {len(robot.results)} of {config.episodes} episodes ended within {limit_s:.0f} s")
    telemetry = runtime.telemetry()
    telemetry.save(out_dir)
    results = robot.results
    solved = sum(r["solved"] for r in results)
    low, high = wilson_interval(solved, len(results))
    summary = telemetry.summary()
    row = {
        "episodes": len(results), "solved": solved, "solve_rate": solved / len(results),
        "solve_rate_low": low, "solve_rate_high": high,
        "return_mean": float(np.mean([r["return"] for r in results])),
        "length_mean": float(np.mean([r["length"] for r in results])),
        "wall_s": round(wall, 1),
    }
    for key in ("ticks", "missed_ticks", "starvation_ticks", "swaps", "late_chunks", "jitter_ms_p50",
                "jitter_ms_p99", "delay_ticks_p50", "delay_ticks_p95", "delay_ticks_p99", "latency_ms_p50",
                "compute_ms_p50", "told_delay_mean", "delay_underestimated", "seam_jump_mean", "seam_jump_p99",
                "max_delta_action", "max_ddelta_action") + REMOTE_TIMING:
        row[key] = summary.get(key, math.nan)
    row["delay_clipped"] = getattr(policy, "clipped", 0)
    if config.video and len(robot.first_episode) > 1:
        import jax

        from rtchunk.kinetix.video import render_frames, tile, write_mp4

        states = jax.tree.map(lambda *x: np.stack(x)[:, None], *robot.first_episode)
        row["video"] = str(write_mp4(out_dir / "episode.mp4", tile(render_frames(env, level, states)),
                                     fps=int(round(config.control_hz))))
    return row


REMOTE_TIMING = ("server_compute_ms_p50", "server_compute_ms_p99", "server_queue_ms_p50", "server_queue_ms_p99",
                 "transport_ms_p50", "transport_ms_p99")
"""Telemetry of a remote policy: each round trip split into server compute, batch queue and transport."""

COLUMNS = ("method", "extra_latency_ms", "episodes", "solved", "solve_rate", "solve_rate_low", "solve_rate_high",
           "return_mean", "length_mean", "delay_ticks_p50", "delay_ticks_p95", "delay_ticks_p99", "told_delay_mean",
           "delay_underestimated", "delay_clipped", "starvation_ticks", "late_chunks", "swaps", "seam_jump_mean",
           "seam_jump_p99", "max_delta_action", "max_ddelta_action", "jitter_ms_p50", "jitter_ms_p99",
           "missed_ticks", "ticks", "latency_ms_p50", "compute_ms_p50", *REMOTE_TIMING, "wall_s", "video")


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if not math.isfinite(x) else f"{x:.3g}"
    return str(x)


def markdown_table(rows: list[dict]) -> str:
    head = ["method", "extra latency", "solved", "solve rate (95 % CI)", "delay p50/p99 (ticks)", "starved ticks",
            "seam jump mean/p99", "jitter p99 (ms)", "missed ticks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["method"], f"+{r['extra_latency_ms']:g} ms", f"{r['solved']}/{r['episodes']}",
            f"{r['solve_rate']:.2f} [{r['solve_rate_low']:.2f}, {r['solve_rate_high']:.2f}]",
            f"{_fmt(r['delay_ticks_p50'])}/{_fmt(r['delay_ticks_p99'])}", str(r["starvation_ticks"]),
            f"{_fmt(r['seam_jump_mean'])}/{_fmt(r['seam_jump_p99'])}", _fmt(r["jitter_ms_p99"]),
            str(r["missed_ticks"]),
        ]) + " |")
    return "\n".join(lines) + "\n"


def load_live_policies(config: LiveConfig):
    """(policies by method, their sources, the data's meta.json) from the configured checkpoints."""
    need_base = any(m != "trained_prefix" for m in config.methods)
    base_dir = config.policy_dir if need_base else config.trained_prefix_policy_dir
    level_name = None if config.level is None else Path(config.level).stem
    base_path = policy_store.find_checkpoint(base_dir, level_name)
    base, base_meta = policy_store.load_policy(base_path)
    sources = {}
    policies = {}
    for method in config.methods:
        if method == "trained_prefix":
            path = policy_store.find_checkpoint(config.trained_prefix_policy_dir, level_name or base_path.parent.name)
            info = policy_store.describe(path)
            if info.trained_max_delay is None:
                raise ValueError(f"trained_prefix needs a model trained with prefix conditioning (rtchunk train-policy "
                                 f"--simulated-delay); {path} has no 'training_delays' in its meta.json")
            policy, _ = policy_store.load_policy(path)
            if (policy.obs_dim, policy.action_dim) != (base.obs_dim, base.action_dim):
                raise ValueError(f"{path} and {base_path} have different observation/action dimensions")
            policies[method] = (policy, info.trained_max_delay)
            sources[method] = str(path)
        else:
            policies[method] = (base, None)
            sources[method] = str(base_path)
    meta = policy_store.data_meta(base_meta, level_name or base_path.parent.name)
    return policies, sources, meta


def connect_remote_policies(config: LiveConfig, obs_dim: int, action_dim: int):
    """{method: (RemotePolicy, trained max delay or None)} and their sources, one connection per method,
    each checked against the level's dimensions and the methods its server serves."""
    from rtchunk.serving import RemotePolicy

    policies, sources = {}, {}
    try:
        for method in config.methods:
            flag, url = "--remote", config.remote
            if method == "trained_prefix" and config.trained_prefix_remote is not None:
                flag, url = "--trained-prefix-remote", config.trained_prefix_remote
            try:
                policy = RemotePolicy(url, api_key=config.api_key, connect_timeout_s=config.connect_timeout_s)
            except ConnectionError as e:
                raise ValueError(f"{flag}: {e}") from None
            policies[method] = (policy, None)
            meta = policy.metadata
            if method not in meta.get("methods", ()):
                raise ValueError(f"{flag}: {url} does not serve {method} (it serves {', '.join(meta.get('methods', ()))}); "
                                 f"choose --methods among those"
                                 + (" or start a server for it with --trained-prefix-remote"
                                    if method == "trained_prefix" else ""))
            policy.method = method
            served_obs = meta.get("observation", {}).get("observation/state", {}).get("shape", [None])[0]
            if (served_obs, policy.action_dim) != (obs_dim, action_dim):
                raise ValueError(f"{flag}: {url} serves a policy with obs_dim={served_obs}, action_dim={policy.action_dim}; "
                                 f"the level gives obs_dim={obs_dim}, action_dim={action_dim}")
            max_delay = meta.get("max_trained_delay") if method == "trained_prefix" else None
            policies[method] = (policy, None if max_delay is None else int(max_delay))
            sources[method] = f"{url} ({meta.get('policy', 'policy server')})"
    except BaseException:
        for policy, _ in policies.values():
            policy.close()
        raise
    return policies, sources


def _level_meta(config: LiveConfig) -> dict:
    """The data meta.json of --policy-dir's policy (where the level comes from), {} when there is none."""
    try:
        path = policy_store.find_checkpoint(config.policy_dir, None if config.level is None else Path(config.level).stem)
    except ValueError:
        return {}
    from rtchunk.checkpoints import load_meta

    return policy_store.data_meta(load_meta(path), path.parent.name)


def run(config: LiveConfig, log: Callable[[str], None] = lambda message: None) -> list[dict]:
    """Every method at every latency; writes ``<out>/results.csv`` (a row as each run ends), ``results.md``,
    ``run.json`` and one directory per run. Everything is loaded and checked before the first write."""
    from rtchunk.kinetix import envs as envs_lib
    from rtchunk.kinetix import levels as levels_lib
    from rtchunk.methods import make_method
    from rtchunk.runtime import flow_policy_fn
    from rtchunk.runtime.conditions import check_condition

    if config.remote is None:
        policies, sources, meta = load_live_policies(config)
    else:
        meta = _level_meta(config) if config.level is None or config.max_timesteps is None else {}
    level_spec = config.level or meta.get("level_source") or meta.get("level")
    if level_spec is None:
        raise ValueError("cannot tell which level the policy was trained on (no data meta.json): pass --level")
    env_meta = dict(meta.get("env", {}))
    shrink = env_meta.get("shrink", False) if config.shrink is None else config.shrink
    max_timesteps = config.max_timesteps or env_meta.get("max_timesteps", envs_lib.EPISODE_STEPS)
    level = levels_lib.load_level(level_spec, level_dir=config.level_dir)
    env, (arrays,) = envs_lib.make_env([level], envs_lib.EnvConfig(shrink=shrink, max_timesteps=max_timesteps))
    if config.remote is None:
        some_policy = next(iter(policies.values()))[0]
        if (some_policy.obs_dim, some_policy.action_dim) != (env.obs_dim, env.action_dim):
            raise ValueError(f"the policy has obs_dim={some_policy.obs_dim}, action_dim={some_policy.action_dim}; "
                             f"level {level.name} gives obs_dim={env.obs_dim}, action_dim={env.action_dim}")
        horizon = some_policy.config.horizon
        chunk_policies = {m: flow_policy_fn(flow, make_method(m, config.method_settings),
                                            num_steps=config.num_flow_steps, seed=config.seed)
                          for m, (flow, _) in policies.items()}
    else:
        policies, sources = connect_remote_policies(config, env.obs_dim, env.action_dim)
        horizon = next(iter(policies.values()))[0].horizon
        chunk_policies = {m: remote for m, (remote, _) in policies.items()}
    try:
        try:
            check_condition(config.replan, horizon)
        except ValueError as e:
            raise ValueError(f"replan: {e}") from None
        return _run_all(config, policies, chunk_policies, sources, env, arrays, level, shrink, max_timesteps,
                        horizon, log)
    finally:
        for policy in chunk_policies.values():
            if hasattr(policy, "close"):
                policy.close()


def _run_all(config, policies, chunk_policies, sources, env, arrays, level, shrink, max_timesteps, horizon, log):
    """Every method at every latency, once the policies are loaded (or connected) and checked."""

    # Everything is checked: from here on the command writes.
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "results.csv", out / "results.md"
    csv_path.unlink(missing_ok=True)  # a live run starts over (it does not resume)
    step_fn = make_step(env)
    # Compile the environment step before any clock starts.
    warm = KinetixRobot(env, arrays, step_fn, 1, config.seed, keep_states=False)
    warm.act(np.zeros(env.action_dim, np.float32))

    log(f"level {level.name} (shrink={shrink}) at {config.control_hz:g} Hz, H={horizon}, replan={config.replan}, "
        f"{config.episodes} episode(s) per run")
    rows = []
    for method in config.methods:
        _, max_delay = policies[method]
        chunk_policy = chunk_policies[method]
        for extra_ms in config.extra_latency_ms:
            policy = ClipDelay(chunk_policy, max_delay) if max_delay is not None else chunk_policy
            name = f"{method}_plus{extra_ms:g}ms"
            log(f"  {name}: running ...")
            row = {"method": method, "extra_latency_ms": float(extra_ms), "policy": sources[method],
                   **run_one(policy, env, arrays, step_fn, config, extra_ms, horizon, out / name)}
            rows.append(row)
            log(f"  {name}: solved {row['solved']}/{row['episodes']}, delay p50 {_fmt(row['delay_ticks_p50'])} "
                f"ticks, starved {row['starvation_ticks']} ticks, seam jump mean {_fmt(row['seam_jump_mean'])}, "
                f"jitter p99 {_fmt(row['jitter_ms_p99'])} ms")
            if config.remote is not None:
                log(f"    round trip p50: server compute {_fmt(row['server_compute_ms_p50'])} ms, batch queue "
                    f"{_fmt(row['server_queue_ms_p50'])} ms, transport {_fmt(row['transport_ms_p50'])} ms")
            if row["delay_clipped"]:
                log(f"    (the delay estimate exceeded the model's trained max {max_delay} on {row['delay_clipped']} "
                    f"call(s) and was clipped to it)")
            results.append_rows(csv_path, [row], COLUMNS)
            atomic_write_text(md_path, markdown_table(rows))
    recorded = config if config.api_key is None else dataclasses.replace(config, api_key="(not recorded)")
    write_json(out / results.RUN_FILE, {"config": recorded, "level": level.name, "shrink": shrink,
                                        "max_timesteps": max_timesteps, "policies": sources})
    return rows
