"""Kinetix benchmark speed, measured side by side in one run and printed as ratios.

1. Raw environment steps/s at batch 256 on h17_unicycle: full (12/4/6/2 slots) vs shrunk (6/2/2/1).
2. The same, shrunk, on 1 vs 2 JAX devices (environments sharded; 2 CPU host devices by default).
3. Harness overhead: wall time of a naive evaluation divided by (environment time + policy time) measured
   separately for the same work (same environments, steps and number of chunks, one device).

Targets (issue 3): shrunk >= 3x full, 2 devices >= 1.7x one, harness overhead <= 1.2x.

    python benchmarks/bench_kinetix.py [--batch 256] [--steps 64] [--rounds 3]
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import flax.nnx as nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from rtchunk import FlowPolicy, ModelConfig, Naive, delays  # noqa: E402
from rtchunk.kinetix import chunk_fns, envs, harness, levels  # noqa: E402


def paper_h17() -> str:
    for candidate in (os.environ.get("RTCHUNK_PAPER_LEVELS"), Path(__file__).resolve().parents[2] / "shared/levels/paper",
                      "/work/shared/levels/paper"):
        if candidate and (Path(candidate) / "h17_unicycle.json").is_file():
            return str(Path(candidate) / "h17_unicycle.json")
    return "l/h17_unicycle"


def timed(fn, *args, rounds: int) -> float:
    """Median seconds per call after one compile-and-warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def env_rollout(env, batch: int, steps: int, devices):
    """Jitted: ``steps`` steps of ``batch`` environments with random actions, sharded over ``devices``."""
    mesh = jax.sharding.Mesh(np.array(devices), ("env",))

    def local(level, keys):
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, level)

        def step(carry, t):
            state, total = carry
            k = jax.vmap(jax.random.fold_in, (0, None))(keys, t)
            action = jax.vmap(lambda kk: jax.random.uniform(kk, (env.action_dim,), minval=-1, maxval=1))(k)
            obs, state, reward, done, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(k, state, action, level)
            return (state, total + reward.sum() + obs[:, 0].sum()), None

        (_, total), _ = jax.lax.scan(step, (state, jnp.float32(0)), jnp.arange(steps))
        return total[None]

    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("env")), out_specs=P("env"), check_vma=False))
    keys = jax.random.split(jax.random.key(0), batch)
    return fn, keys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=64, help="environment steps per timed call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--execute-horizon", type=int, default=4)
    args = parser.parse_args()
    devices = jax.devices()
    print(f"devices: {len(devices)} x {devices[0].platform}; batch {args.batch}; {args.steps} steps per call; "
          f"median of {args.rounds}")
    level = levels.load_level(paper_h17())
    print(f"level: {level.source}")

    # 1. full vs shrunk --------------------------------------------------------------------------------
    rates = {}
    for shrink in (False, True):
        env, (arrays,) = envs.make_env([level], envs.EnvConfig(shrink=shrink))
        fn, keys = env_rollout(env, args.batch, args.steps, devices[:1])
        seconds = timed(fn, arrays, keys, rounds=args.rounds)
        rates[shrink] = args.batch * args.steps / seconds
        print(f"  {'shrunk' if shrink else 'full  '} ({envs.slot_counts(env)}): {rates[shrink]:8.0f} env steps/s (1 device)")
    print(f"shrunk / full: {rates[True] / rates[False]:.2f}x   (target >= 3)")

    # 2. one vs two devices ----------------------------------------------------------------------------
    env, (arrays,) = envs.make_env([level], envs.EnvConfig(shrink=True))
    if len(devices) >= 2:
        fn, keys = env_rollout(env, args.batch, args.steps, devices[:2])
        two = args.batch * args.steps / timed(fn, arrays, keys, rounds=args.rounds)
        print(f"  shrunk on 2 devices: {two:8.0f} env steps/s")
        print(f"2 devices / 1 device: {two / rates[True]:.2f}x   (target >= 1.7)")
    else:
        print("2 devices / 1 device: skipped (only one JAX device)")

    # 3. harness overhead ------------------------------------------------------------------------------
    s = args.execute_horizon
    env, (arrays,) = envs.make_env([level], envs.EnvConfig(shrink=True, max_timesteps=args.steps))
    policy = FlowPolicy(env.obs_dim, env.action_dim, ModelConfig(), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(policy)
    chunk_fn = chunk_fns.policy_chunk_fn(graphdef, Naive())
    config = harness.HarnessConfig(num_envs=args.batch, horizon=policy.config.horizon, max_devices=1)
    spec = harness.delay_spec(delays.FixedDelay(1), s, config.horizon)
    rollout_fn, _ = harness.compiled_rollout(env, chunk_fn, config)
    keys = jax.random.split(jax.random.key(0), args.batch)
    t_eval = timed(rollout_fn, params, arrays, spec, keys, rounds=args.rounds)
    chunks = 1 + len(range(0, args.steps, s))

    env_fn, env_keys = env_rollout(env, args.batch, args.steps, devices[:1])
    t_env = timed(env_fn, arrays, env_keys, rounds=args.rounds)

    @jax.jit
    def policy_time(params, obs, key):
        def one(total, k):
            noise = jax.random.normal(k, (args.batch, config.horizon, env.action_dim))
            chunk = chunk_fn(params, obs + total, noise, None, jnp.zeros(args.batch, jnp.int32), s, k)
            return total + chunk.mean(), None

        return jax.lax.scan(one, jnp.float32(0), jax.random.split(key, chunks))[0]

    obs = jnp.zeros((args.batch, env.obs_dim))
    t_policy = timed(policy_time, params, obs, jax.random.key(1), rounds=args.rounds)
    print(f"  naive eval (d=1, s={s}, {chunks} chunks, paper-size policy): {t_eval:.3f} s; "
          f"environment alone {t_env:.3f} s; policy alone {t_policy:.3f} s")
    print(f"harness overhead: {t_eval / (t_env + t_policy):.2f}x   (target <= 1.2)")


if __name__ == "__main__":
    main()
