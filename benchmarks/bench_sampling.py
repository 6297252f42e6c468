"""Per-chunk wall time of every sampling method with the papers' default MLP-Mixer, as ratios to Naive.

All variants are timed side by side (interleaved, median over rounds) in one run, so the ratios hold
on a loaded machine even where absolute times move. Also reported: what the split input projection
(observation projected once per chunk) and the broadcast-time hint (one time embedding per flow step)
save compared with the paper code's way of computing the same function.

    python benchmarks/bench_sampling.py            # batch 1 and 256
    python benchmarks/bench_sampling.py --rounds 5 --batches 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import flax.nnx as nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rtchunk import BID, RTC, FlowPolicy, HardMask, JacobianFree, ModelConfig, Naive, TrainedPrefix  # noqa: E402
from rtchunk import sample_chunk  # noqa: E402

TARGETS = {"rtc (exp)": 2.5, "trained prefix": 1.1, "jacobian-free": 1.2}


def build_variants(graphdef, d: int, s: int, num_steps: int):
    """name -> jitted fn(weights, obs, noise, prev, rng) -> chunk."""

    def make(method_fn, velocity="split"):
        @jax.jit
        def run(weights, obs, noise, prev, rng):
            policy = nnx.merge(graphdef, weights)
            if velocity == "split":
                fn = policy.velocity_fn(obs)
            elif velocity == "no hint":  # the contract's [B, H] time: one embedding per token
                split_fn = policy.velocity_fn(obs)
                fn = lambda x, t: split_fn(x, t)  # noqa: E731
            else:  # the paper code: concatenate and project the observation at every flow step
                fn = lambda x, t: policy.velocity_unsplit(obs, x, t)  # noqa: E731
            return sample_chunk(fn, noise, method_fn(rng), prev_chunk=prev, inference_delay=d, execute_horizon=s,
                                num_steps=num_steps)

        return run

    return {
        "naive": make(lambda r: Naive()),
        "rtc (exp)": make(lambda r: RTC()),
        "hard mask": make(lambda r: HardMask()),
        "jacobian-free": make(lambda r: JacobianFree()),
        "trained prefix": make(lambda r: TrainedPrefix()),
        "bid (N=16)": make(lambda r: BID(rng=r, num_samples=16)),
        "naive, no time hint": make(lambda r: Naive(), "no hint"),
        "naive, unsplit input proj": make(lambda r: Naive(), "unsplit"),
        "rtc, unsplit input proj": make(lambda r: RTC(), "unsplit"),
    }


def bench(batch: int, rounds: int, obs_dim: int, action_dim: int, num_steps: int, d: int, s: int):
    config = ModelConfig()
    policy = FlowPolicy(obs_dim, action_dim, config, rngs=nnx.Rngs(0))
    graphdef, weights = nnx.split(policy)
    k = jax.random.split(jax.random.key(0), 4)
    obs = jax.random.normal(k[0], (batch, obs_dim))
    noise = jax.random.normal(k[1], (batch, config.horizon, action_dim))
    prev = jax.random.normal(k[2], noise.shape)
    variants = build_variants(graphdef, d, s, num_steps)
    for fn in variants.values():  # compile
        fn(weights, obs, noise, prev, k[3]).block_until_ready()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn(weights, obs, noise, prev, k[3]).block_until_ready()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--obs-dim", type=int, default=679, help="Kinetix symbolic-flat size of the paper's levels")
    parser.add_argument("--action-dim", type=int, default=6)
    parser.add_argument("--num-steps", type=int, default=5)
    parser.add_argument("--inference-delay", type=int, default=2)
    parser.add_argument("--execute-horizon", type=int, default=3)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s); default model "
          f"(256 ch x 4 layers, H=8), obs {args.obs_dim}, action {args.action_dim}, {args.num_steps} flow steps, "
          f"d={args.inference_delay}, s={args.execute_horizon}")
    for batch in args.batches:
        ms = bench(batch, args.rounds, args.obs_dim, args.action_dim, args.num_steps, args.inference_delay,
                   args.execute_horizon)
        print(f"\nbatch {batch}: median of {args.rounds} interleaved rounds")
        print(f"  {'method':<28}{'ms/chunk':>10}{'x naive':>9}  target")
        for name, t in ms.items():
            target = TARGETS.get(name)
            verdict = "" if target is None else f"<= {target}  {'ok' if t / ms['naive'] <= target else 'MISSED'}"
            print(f"  {name:<28}{t:>10.2f}{t / ms['naive']:>9.2f}  {verdict}")
        print(f"  speed-up of the split input projection: naive {ms['naive, unsplit input proj'] / ms['naive']:.2f}x, "
              f"rtc {ms['rtc, unsplit input proj'] / ms['rtc (exp)']:.2f}x")
        print(f"  speed-up of the broadcast-time hint (naive): {ms['naive, no time hint'] / ms['naive']:.2f}x")


if __name__ == "__main__":
    main()
