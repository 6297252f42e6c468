"""The benchmark harness: many environments executing action chunks under inference delay, jitted.

Execution model (per environment, the papers' Algorithm 1 with a simulated clock). An inference starts
at step t0 from the observation o_t0; its chunk covers steps t0 .. t0+H-1 and becomes available after
the *actual* delay d (sampled per environment per chunk). Until then the controller keeps executing the
chunk it has; from t0+d on it executes the new chunk. The next inference starts at t0 + max(s, d): after
s actions, or later when the inference itself took longer (the cycle stretches; an inference cannot
start before the last one ends). With d <= s every cycle executes d actions of the previous chunk and
s - d of the new one, and the new chunk is shifted by s, as in the papers. When the newest chunk has
run out (or arrives already past its end), the controller holds its last action and counts a starved
step (``rtchunk.execution``, the rule the runtime follows too). The first chunk is computed
synchronously from o_0 (no previous chunk).

The sampler is told an *estimate* of the delay: the estimator (default: max of the last 10 observed
delays, the paper's Algorithm 1) over that environment's observed delays, starting from
``initial_estimate``, clipped to ``told_max`` (``rtchunk.methods.told_delay_bound``: H - s for the
methods that freeze a prefix of the previous chunk, H for the others); ``p_violate`` counts how often
the actual delay broke d <= H - s. The previous chunk handed to the sampler is the chunk being
executed, shifted to the new chunk's first step, with entries past its end filled with the last
executed action (what the controller would hold).

Temporal ensembling (``execution="ensemble"``) keeps every chunk that still covers the current step and
executes their weighted average, weights exp(-decay * k) for the k-th chunk of the environment (older
chunks weigh more, as in ACT), counting only chunks that have arrived.

The policy enters as a chunk function (``rtchunk.kinetix.chunk_fns``) with the weights passed as
``params``, so one compiled rollout serves every level and every checkpoint of the same shapes.
Execute horizon, delay distribution, told-delay bound and initial estimate are traced arguments: a
sweep over d and s compiles the rollout once. Randomness is drawn per environment from that
environment's own key, so results do not depend on how environments are split over devices (except
BID's extra candidates, which the sampler draws for the whole per-device batch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import PartitionSpec as P

from rtchunk import delays as delays_lib
from rtchunk import metrics
from rtchunk.execution import executed_action
from rtchunk.kinetix.chunk_fns import ChunkFn

Execution = Literal["latest", "ensemble"]


# -- configuration -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HarnessConfig:
    """The static part of an evaluation (changing it recompiles)."""

    num_envs: int = 2048
    horizon: int = 8
    rollout_steps: int | None = None
    """Steps per rollout (default: the environment's episode length, so every first episode ends)."""
    execution: Execution = "latest"
    ensemble_decay: float = 0.01
    """Temporal ensembling: weight exp(-decay * k) for the k-th chunk (ACT's m)."""
    estimator: delays_lib.DelayEstimator = delays_lib.MaxEstimator()
    record_states: int = 0
    """Keep the physics states of this many environments (per device) for videos (``--video-envs``)."""
    max_devices: int | None = None
    """Shard environments over at most this many devices (default: all that divide num_envs)."""
    fast_compile: bool = False
    """Compile without XLA optimisation: several times faster compiles, slower steps (tests, smoke runs)."""

    def __post_init__(self):
        if not isinstance(self.num_envs, int) or self.num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {self.num_envs!r}")
        if not isinstance(self.horizon, int) or self.horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {self.horizon!r}")
        if self.rollout_steps is not None and (not isinstance(self.rollout_steps, int) or self.rollout_steps < 1):
            raise ValueError(f"rollout_steps must be an integer >= 1, got {self.rollout_steps!r}")
        if self.execution not in ("latest", "ensemble"):
            raise ValueError(f"execution must be 'latest' or 'ensemble', got {self.execution!r}")
        if not (math.isfinite(self.ensemble_decay) and self.ensemble_decay >= 0):
            raise ValueError(f"ensemble_decay must be a finite number >= 0, got {self.ensemble_decay}")
        if self.record_states < 0:
            raise ValueError(f"record_states must be >= 0, got {self.record_states}")


@struct.dataclass
class DelaySpec:
    """The traced part of an evaluation: execute horizon, the delay distribution, what the sampler is told."""

    execute_horizon: jax.Array  # int32 []
    delay_values: jax.Array  # int32 [K]
    delay_probs: jax.Array  # float32 [K]
    initial_estimate: jax.Array  # int32 []
    told_max: jax.Array  # int32 []: the sampler is told min(estimate, told_max)


def delay_spec(profile: delays_lib.DelayProfile, execute_horizon: int, horizon: int,
               initial_estimate: int | None = None, told_max: int | None = None) -> DelaySpec:
    """Check s and the profile against H and pack them as arrays (the initial estimate defaults to the median).

    ``told_max``: the largest delay the sampler is told, ``rtchunk.methods.told_delay_bound(method, H, s)``
    (default: H, for a policy that may be told any delay).

    The support is padded with zero-probability entries to 8 values (or the next power of two), so fixed
    and stochastic profiles share one compiled rollout.
    """
    if not isinstance(execute_horizon, (int, np.integer)) or not 1 <= execute_horizon <= horizon:
        raise ValueError(f"execute_horizon must be an integer in [1, horizon={horizon}], got {execute_horizon!r}")
    values, probs = delays_lib.support(profile)
    if initial_estimate is None:
        initial_estimate = delays_lib.quantile(profile, 0.5)
    if not isinstance(initial_estimate, (int, np.integer)) or initial_estimate < 0:
        raise ValueError(f"initial_estimate must be an integer >= 0, got {initial_estimate!r}")
    told_max = horizon if told_max is None else told_max
    if not isinstance(told_max, (int, np.integer)) or not 0 <= told_max <= horizon:
        raise ValueError(f"told_max must be an integer in [0, horizon={horizon}], got {told_max!r}")
    size = max(8, 1 << (len(values) - 1).bit_length())
    pad = size - len(values)
    return DelaySpec(
        execute_horizon=np.int32(execute_horizon),
        delay_values=np.concatenate([values, np.zeros(pad)]).astype(np.int32),
        delay_probs=np.concatenate([probs, np.zeros(pad)]).astype(np.float32),
        initial_estimate=np.int32(initial_estimate),
        told_max=np.int32(told_max),
    )


# -- the rollout -------------------------------------------------------------------------------------


@struct.dataclass
class Records:
    """What happened at every step ([T, B] unless noted; B = all environments)."""

    action: Any  # [T, B, A] commanded (before the environment's action noise)
    done: Any
    starved: Any  # the controller held its last action
    switched: Any  # the action came from a different chunk than the step before
    cycle_start: Any  # an inference started at this step
    delay: Any  # actual delay of that inference (valid where cycle_start)
    told_delay: Any  # delay the sampler was told (valid where cycle_start)
    first_return: Any  # [B] return of the first episode
    first_length: Any  # [B]
    first_solved: Any  # [B]
    first_done: Any  # [B] the first episode ended within the rollout
    states: Any = None  # physics states [T, N] of the first N environments per device (record_states)


@struct.dataclass
class _Buffer:
    actions: jax.Array  # [B, K, H, A]
    origin: jax.Array  # [B, K] step of the chunk's index 0
    arrival: jax.Array  # [B, K] step from which it may execute
    seq: jax.Array  # [B, K] 1, 2, ... per environment; 0 = empty slot


def _take_index(actions, index):
    """actions [B, K, H, A] at per-(b, k) index [B, K] -> [B, K, A]."""
    return jnp.take_along_axis(actions, index[:, :, None, None], axis=2)[:, :, 0]


def _make_local_rollout(env, chunk_fn, config: HarnessConfig, steps: int):
    horizon, action_dim = config.horizon, env.action_dim
    slots = horizon + 1 if config.execution == "ensemble" else 2
    window = config.estimator.window

    def rollout(params, level, spec: DelaySpec, keys):
        batch = keys.shape[0]
        # One independent stream per environment and purpose, indexed by step.
        per_env = lambda purpose: jax.vmap(lambda k: jax.random.fold_in(k, purpose))(keys)  # noqa: E731
        env_keys, noise_keys, delay_keys = per_env(0), per_env(1), per_env(2)
        policy_key = jax.random.fold_in(keys[0], 3)
        at_step = lambda ks, t: jax.vmap(jax.random.fold_in, (0, None))(ks, t)  # noqa: E731
        s = spec.execute_horizon
        told_max = spec.told_max
        logits = jnp.log(spec.delay_probs)

        def noise_at(t):
            return jax.vmap(lambda k: jax.random.normal(k, (horizon, action_dim)))(at_step(noise_keys, t))

        # Step indices run 0 .. steps-1; index ``steps`` draws the randomness of the synchronous first chunk.
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(at_step(env_keys, steps), level)
        first = chunk_fn(params, obs, noise_at(steps), None, jnp.zeros(batch, jnp.int32), s,
                         jax.random.fold_in(policy_key, steps))
        if first.shape != (batch, horizon, action_dim):
            raise ValueError(f"chunk_fn returned chunks of shape {first.shape[1:]}, expected [horizon, action_dim] = "
                             f"[{horizon}, {action_dim}] (HarnessConfig.horizon must be the policy's horizon)")
        empty = jnp.zeros((batch, slots, horizon, action_dim), jnp.float32)
        buf = _Buffer(
            actions=empty.at[:, 0].set(first.astype(jnp.float32)),
            origin=jnp.zeros((batch, slots), jnp.int32),
            arrival=jnp.zeros((batch, slots), jnp.int32),
            seq=jnp.zeros((batch, slots), jnp.int32).at[:, 0].set(1),
        )
        carry = dict(
            env_state=env_state, obs=obs, buf=buf,
            next_start=jnp.zeros(batch, jnp.int32),
            history=jnp.full((batch, window), spec.initial_estimate, jnp.int32),
            last_action=first[:, 0].astype(jnp.float32),
            last_seq=jnp.ones(batch, jnp.int32),
            ep_done=jnp.zeros(batch, bool), ep_return=jnp.zeros(batch, jnp.float32),
            ep_length=jnp.zeros(batch, jnp.int32), ep_solved=jnp.zeros(batch, bool),
        )

        def launch(carry, t, start):
            """Start inferences where ``start``: sample the delays, tell the estimate, compute the chunks."""
            buf = carry["buf"]
            newest = jnp.argmax(buf.seq, axis=1)  # [B]
            pick = lambda x: jnp.take_along_axis(x, newest[:, None], axis=1)[:, 0]  # noqa: E731
            cur = jnp.take_along_axis(buf.actions, newest[:, None, None, None], axis=1)[:, 0]  # [B, H, A]
            offset = t - pick(buf.origin)
            position = offset[:, None] + jnp.arange(horizon)[None]
            prev = jnp.take_along_axis(cur, jnp.minimum(position, horizon - 1)[:, :, None], axis=1)
            # Past the chunk's end the controller will hold the last action it executed: the chunk's own last
            # entry while the chunk still runs, the action held now when it ran out already (or arrived stale).
            held = jnp.where((offset < horizon)[:, None], cur[:, -1], carry["last_action"])
            prev = executed_action(prev, position, horizon, held[:, None], jnp)[0]
            estimate = jnp.asarray(config.estimator.estimate(carry["history"]), jnp.int32)
            told = jnp.clip(estimate, 0, told_max)
            chunk = chunk_fn(params, carry["obs"], noise_at(t), prev, told, s, jax.random.fold_in(policy_key, t))
            delay = jax.vmap(lambda k: jax.random.categorical(k, logits))(at_step(delay_keys, t))
            delay = spec.delay_values[delay]
            oldest = jnp.argmin(buf.seq, axis=1)  # an empty slot (seq 0) or the oldest chunk, which covers nothing
            write = start[:, None] & (jnp.arange(slots)[None] == oldest[:, None])  # [B, K]
            buf = _Buffer(
                actions=jnp.where(write[:, :, None, None], chunk.astype(jnp.float32)[:, None], buf.actions),
                origin=jnp.where(write, t, buf.origin),
                arrival=jnp.where(write, t + delay[:, None], buf.arrival),
                seq=jnp.where(write, pick(buf.seq)[:, None] + 1, buf.seq),
            )
            history = jnp.where(
                start[:, None], jnp.concatenate([carry["history"][:, 1:], delay[:, None]], axis=1), carry["history"]
            )
            next_start = jnp.where(start, t + jnp.maximum(s, delay), carry["next_start"])
            return buf, history, next_start, jnp.where(start, delay, -1), jnp.where(start, told, -1)

        def no_launch(carry, t, start):
            none = jnp.full(start.shape, -1, jnp.int32)
            return carry["buf"], carry["history"], carry["next_start"], none, none

        def step(carry, t):
            start = carry["next_start"] == t
            # Only steps where some environment starts an inference pay for one (with fixed delays: every
            # s-th step, all environments at once).
            buf, history, next_start, delay, told = jax.lax.cond(jnp.any(start), launch, no_launch, carry, t, start)

            # -- the action executed at step t ----------------------------------------------------------
            index = t - buf.origin  # [B, K]
            arrived = (buf.seq > 0) & (buf.arrival <= t)
            values = _take_index(buf.actions, jnp.minimum(index, horizon - 1))  # [B, K, A]
            if config.execution == "latest":
                src = jnp.argmax(jnp.where(arrived, buf.seq, -1), axis=1)
                action, starved = executed_action(
                    jnp.take_along_axis(values, src[:, None, None], axis=1)[:, 0],
                    jnp.take_along_axis(index, src[:, None], axis=1)[:, 0], horizon, carry["last_action"], jnp)
                # A held action still comes from the chunk it was executed from.
                src_seq = jnp.where(starved, carry["last_seq"], jnp.take_along_axis(buf.seq, src[:, None], axis=1)[:, 0])
            else:
                covers = arrived & (index < horizon)
                logit = jnp.where(covers, -config.ensemble_decay * buf.seq.astype(jnp.float32), -jnp.inf)
                weight = jax.nn.softmax(jnp.where(covers.any(1, keepdims=True), logit, 0.0), axis=1)
                starved = ~covers.any(1)
                action = jnp.where(starved[:, None], carry["last_action"], jnp.sum(weight[..., None] * values, axis=1))
                src_seq = jnp.where(starved, carry["last_seq"], jnp.max(jnp.where(covers, buf.seq, -1), axis=1))
            switched = src_seq != carry["last_seq"]

            # -- the environment ------------------------------------------------------------------------
            obs, env_state, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                at_step(env_keys, t), carry["env_state"], action, level
            )
            ending = done & ~carry["ep_done"]
            new = dict(
                env_state=env_state, obs=obs, buf=buf, next_start=next_start, history=history,
                last_action=action, last_seq=src_seq,
                ep_done=carry["ep_done"] | done,
                ep_return=jnp.where(ending, info["returned_episode_returns"], carry["ep_return"]),
                ep_length=jnp.where(ending, info["returned_episode_lengths"], carry["ep_length"]),
                ep_solved=jnp.where(ending, info["returned_episode_solved"], carry["ep_solved"]),
            )
            out = dict(action=action, done=done, starved=starved, switched=switched, cycle_start=start,
                       delay=delay, told_delay=told)
            if config.record_states:
                out["states"] = jax.tree.map(lambda x: x[: config.record_states], carry["env_state"].physics)
            return new, out

        carry, out = jax.lax.scan(step, carry, jnp.arange(steps, dtype=jnp.int32))
        return Records(
            action=out["action"], done=out["done"], starved=out["starved"], switched=out["switched"],
            cycle_start=out["cycle_start"], delay=out["delay"], told_delay=out["told_delay"],
            first_return=carry["ep_return"], first_length=carry["ep_length"], first_solved=carry["ep_solved"],
            first_done=carry["ep_done"], states=out.get("states"),
        )

    return rollout


def _devices_for(num_envs: int, max_devices: int | None):
    devices = jax.devices()
    n = min(len(devices), max_devices or len(devices))
    while num_envs % n:
        n -= 1
    return devices[:n]


@functools.lru_cache(maxsize=32)
def compiled_rollout(env, chunk_fn, config: HarnessConfig):
    """The jitted, sharded rollout ``(params, level, spec, keys [B]) -> Records`` for these static parts."""
    steps = config.rollout_steps or int(env.env_params.max_timesteps)
    local = _make_local_rollout(env, chunk_fn, config, steps)
    devices = _devices_for(config.num_envs, config.max_devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("env",))
    per_step, per_env = P(None, "env"), P("env")
    out_specs = Records(
        action=per_step, done=per_step, starved=per_step, switched=per_step, cycle_start=per_step,
        delay=per_step, told_delay=per_step, first_return=per_env, first_length=per_env,
        first_solved=per_env, first_done=per_env, states=per_step if config.record_states else None,
    )
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), per_env), out_specs=out_specs,
                            check_vma=False)
    options = {"xla_backend_optimization_level": 0} if config.fast_compile else None
    return jax.jit(sharded, compiler_options=options), len(devices)


def precompile(jobs: list[tuple], workers: int = 2) -> int:
    """Compile the rollouts of several evaluations side by side (``rtchunk.kinetix.parallel.precompile``);
    ``jobs``: ``(env, level, chunk_fn, params, execute_horizon, profile, config, initial_estimate)`` as for
    ``evaluate``. Returns how many were compiled."""
    from rtchunk.kinetix.parallel import precompile as compile_calls

    calls = []
    for env, level, chunk_fn, params, execute_horizon, profile, config, initial_estimate in jobs:
        spec = delay_spec(profile, execute_horizon, config.horizon, initial_estimate)
        fn, _ = compiled_rollout(env, chunk_fn, config)
        calls.append((fn, (params, level, spec, jax.random.split(jax.random.key(0), config.num_envs))))
    return compile_calls(calls, workers)


def rollout(env, level, chunk_fn: ChunkFn, params, spec: DelaySpec, rng: jax.Array,
            config: HarnessConfig = HarnessConfig()) -> Records:
    """Run ``config.num_envs`` environments of ``level`` for one episode length; Records as numpy."""
    if spec.execute_horizon > config.horizon:
        raise ValueError(f"execute_horizon must be <= horizon={config.horizon}, got {int(spec.execute_horizon)}")
    fn, _ = compiled_rollout(env, chunk_fn, config)
    keys = jax.random.split(rng, config.num_envs)
    return jax.device_get(fn(params, level, spec, keys))


# -- metrics -----------------------------------------------------------------------------------------


def first_episode_mask(done: np.ndarray) -> np.ndarray:
    """[T, B]: steps up to and including the end of each environment's first episode."""
    done = np.asarray(done, bool)
    steps = done.shape[0]
    end = np.where(done.any(axis=0), done.argmax(axis=0), steps - 1)
    return np.arange(steps)[:, None] <= end[None, :]


def summarize(records: Records, horizon: int, execute_horizon: int) -> dict[str, float]:
    """The per-configuration metrics (first episode of each environment only)."""
    valid = first_episode_mask(records.done)
    num_envs = valid.shape[1]
    solved = int(np.sum(records.first_solved))
    low, high = metrics.wilson_interval(solved, num_envs)
    starts = np.asarray(records.cycle_start, bool) & valid
    d = np.asarray(records.delay)[starts]
    told = np.asarray(records.told_delay)[starts]
    pct = metrics.percentiles(d)
    actions = np.swapaxes(np.asarray(records.action), 0, 1)  # [B, T, A]
    smooth = metrics.smoothness(actions, valid.T)
    seams = metrics.seam_summary(metrics.seam_jumps(actions, np.asarray(records.switched).T, valid.T))
    starved = np.asarray(records.starved, bool) & valid
    return {
        "num_envs": num_envs,
        "solved": solved,
        "solve_rate": solved / num_envs,
        "solve_rate_low": low,
        "solve_rate_high": high,
        "return_mean": float(np.mean(records.first_return)),
        "length_mean": float(np.mean(records.first_length)),
        "episodes_finished": float(np.mean(records.first_done)),
        "chunks": int(starts.sum()),
        "d_mean": float(d.mean()) if d.size else math.nan,
        "d_p50": pct["p50"],
        "d_p95": pct["p95"],
        "d_p99": pct["p99"],
        "told_d_mean": float(told.mean()) if told.size else math.nan,
        "p_violate": float(np.mean(d > horizon - execute_horizon)) if d.size else math.nan,
        "starvation_steps": int(starved.sum()),
        "starvation_rate": float(starved.sum() / valid.sum()),
        **smooth,
        **seams,
    }


@dataclasses.dataclass
class Evaluation:
    metrics: dict[str, float]
    records: Records
    seconds: float


def evaluate(env, level, chunk_fn: ChunkFn, params, *, execute_horizon: int,
             profile: delays_lib.DelayProfile = delays_lib.FixedDelay(0), rng: jax.Array | None = None,
             config: HarnessConfig = HarnessConfig(), initial_estimate: int | None = None,
             told_max: int | None = None) -> Evaluation:
    """Roll out and summarize one configuration (the rollout compiles once per env/chunk_fn/config)."""
    spec = delay_spec(profile, execute_horizon, config.horizon, initial_estimate, told_max)
    rng = jax.random.key(0) if rng is None else rng
    start = time.perf_counter()
    records = rollout(env, level, chunk_fn, params, spec, rng, config)
    seconds = time.perf_counter() - start
    return Evaluation(summarize(records, config.horizon, execute_horizon), records, seconds)
