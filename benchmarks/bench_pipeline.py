"""Training-pipeline speed on this machine, printed as rates and ratios measured side by side in one run.

1. PPO environment steps/s (rollout + PPO epochs, the expert stage) on shrunk h17_unicycle with the
   paper's expert environment stack, one learner of 256 environments x 64 steps, on 1 device and as
   2 learners sharded over 2 devices (how `rtchunk train-expert` runs seeds on a CPU); the experts
   observing the full layout (the papers') and the compacted level (``--experts.compact-obs``).
2. Behaviour-cloning samples/s (flow-matching value-and-grad + AdamW, batch 512, the paper's model and
   the demo's), with the split input projection (the observation projected once per sample) vs the
   paper's concatenate-then-project, with one flow time per token instead of per sample, with
   training-time RTC's prefix conditioning, and with each batch split over both devices.
3. The demo's wall time per stage, read from a finished `rtchunk demo` run (``--demo-dir``).

    python benchmarks/bench_pipeline.py [--ppo-updates 4] [--bc-steps 20] [--demo-dir runs/demo] [--skip-ppo]
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import flax.nnx as nnx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from rtchunk.commands.reproduce import CPU_MODEL as DEMO_MODEL  # noqa: E402
from rtchunk.kinetix import envs, levels, parallel, ppo  # noqa: E402
from rtchunk.model import FlowPolicy, ModelConfig, TrainingDelays, flow_matching_loss  # noqa: E402

OBS, ACT = 679, 6  # h17_unicycle's policy observation and action sizes


def _timed(fn, *args, rounds: int) -> float:
    out = fn(*args)
    jax.block_until_ready(out)  # compile and warm up
    start = time.perf_counter()
    for _ in range(rounds):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / rounds


def bench_ppo(updates: int) -> dict[str, float]:
    level = levels.load_level("l/h17_unicycle")
    config = ppo.PPOConfig(num_envs=256, num_steps=64, num_minibatches=4, total_timesteps=256 * 64 * updates)
    out = {}
    for compact, learners in ((False, 1), (False, 2), (True, 1), (True, 2)):
        env, (arrays,) = envs.make_env([level], dataclasses.replace(envs.EXPERT_ENV, shrink=True, compact_obs=compact))
        update = jax.vmap(ppo.make_update(env, config, env.num_motors))
        placement = parallel.level_sharding(learners)
        lv = jax.device_put(jax.tree.map(lambda x: np.stack([np.asarray(x)] * learners), arrays), placement)
        keys = jax.random.split(jax.random.key(0), learners)
        runner = jax.device_put(jax.jit(jax.vmap(lambda k, l: ppo.init_runner(k, env, l, config)))(keys, lv), placement)
        many = jax.jit(lambda r, l: jax.lax.scan(lambda c, _: update(c, l), r, None, length=updates)[0])
        seconds = _timed(many, runner, lv, rounds=1)
        observed = f"compact observation ({env.obs_dim} inputs)" if compact else f"full layout ({env.obs_dim} inputs)"
        out[f"{observed}, {learners} learner(s) on {min(learners, jax.device_count())} device(s)"] = \
            learners * updates * config.steps_per_update / seconds
    return out


class _PerTokenTime:
    """The policy given one flow time per token ([B, H], as training did before 2026-12-01): it then embeds
    and modulates every token's time, not every sample's."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, obs, x_t, tau):
        return self.policy(obs, x_t, jnp.broadcast_to(tau, x_t.shape[:2]))


class _Unsplit:
    """The policy called the way the paper's code does it: observation concatenated to every token."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, obs, x_t, tau):
        return self.policy.velocity_unsplit(obs, x_t, tau)


def bench_bc(model: ModelConfig, steps: int, batch: int = 512) -> dict[str, float]:
    policy = FlowPolicy(OBS, ACT, model, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(policy)
    optimizer = optax.chain(optax.clip_by_global_norm(10.0), optax.adamw(3e-4, weight_decay=1e-2))
    rng = np.random.default_rng(0)
    obs = jnp.asarray(rng.normal(size=(steps, batch, OBS)), jnp.float32)
    actions = jnp.asarray(rng.normal(size=(steps, batch, model.horizon, ACT)), jnp.float32)

    def make(wrap, delays, split_batch=None):
        def train(params, opt_state, obs, actions):
            def one(carry, xs):
                p, s = carry
                o, a, i = xs
                if split_batch is not None:  # as bc.train_policy does for one level on two devices
                    o, a = (jax.lax.with_sharding_constraint(x, split_batch) for x in (o, a))
                loss_fn = lambda q: flow_matching_loss(wrap(nnx.merge(graphdef, q)), jax.random.key(i), o, a, delays)  # noqa: E731
                loss, grads = jax.value_and_grad(loss_fn)(p)
                updates, s = optimizer.update(grads, s, p)
                return (optax.apply_updates(p, updates), s), loss

            return jax.lax.scan(one, (params, opt_state), (obs, actions, jnp.arange(steps)))[1]

        return jax.jit(train)

    opt_state = optimizer.init(params)
    variants = {
        "split input projection": make(lambda p: p, None),
        "unsplit (paper's code)": make(_Unsplit, None),
        "per-token flow time": make(_PerTokenTime, None),
        "split + training-time RTC": make(lambda p: p, TrainingDelays(max_delay=4)),
    }
    split = parallel.batch_sharding(1, batch)
    if split is not None:
        variants["batch split over 2 devices"] = make(lambda p: p, None, split)
    return {name: steps * batch / _timed(fn, params, opt_state, obs, actions, rounds=2) for name, fn in variants.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ppo-updates", type=int, default=4)
    parser.add_argument("--bc-steps", type=int, default=20)
    parser.add_argument("--demo-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--skip-ppo", action="store_true", help="only behaviour cloning and the demo's stages")
    args = parser.parse_args()
    print(f"JAX {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}")
    if not args.skip_ppo:
        report_ppo(args.ppo_updates)
    report_bc(args.bc_steps)
    report_demo(args.demo_dir)


def report_ppo(updates: int) -> None:
    print("\nPPO environment steps/s (rollout + 4 epochs x 4 minibatches), shrunk h17_unicycle, 256 envs x 64 steps:")
    rates = bench_ppo(updates)
    for name, sps in rates.items():
        print(f"  {name:<60} {sps:>10,.0f} steps/s")
    full_one, full_two, compact_one, compact_two = rates.values()
    print(f"  2 learners on 2 devices vs 1: {full_two / full_one:.2f}x the throughput (full layout), "
          f"{compact_two / compact_one:.2f}x (compact)")
    print(f"  compact observation vs full layout: {compact_one / full_one:.2f}x (1 learner), "
          f"{compact_two / full_two:.2f}x (2 learners)")


def report_bc(steps: int) -> None:
    for label, model in (("paper model 256/512/64 x 4 layers", ModelConfig()),
                         ("demo model 128/256/32 x 2 layers", DEMO_MODEL)):
        print(f"\nBehaviour cloning samples/s, batch 512, {label} (one device unless split):")
        rates = bench_bc(model, steps)
        base = rates["split input projection"]
        for name, sps in rates.items():
            print(f"  {name:<28} {sps:>9,.0f} samples/s  ({base / sps:.2f}x the time of split)" if name != "split input projection"
                  else f"  {name:<28} {sps:>9,.0f} samples/s")


def report_demo(demo_dir: Path) -> None:
    records = sorted((demo_dir / "levels").glob("*/done/*.json"), key=lambda p: p.stat().st_mtime)
    if records:
        print(f"\nDemo wall time per stage ({demo_dir}/levels/<level>/done/):")
        for path in records:
            data = json.loads(path.read_text())
            print(f"  {data['level']:<16} {data['stage']:<12} {data['seconds']:>7.0f} s")
    else:
        print(f"\n(no finished demo at {demo_dir}: run `rtchunk demo` for its stage times)")


if __name__ == "__main__":
    main()
