"""``rtchunk sample-demo``: every sampling method on a randomly initialised flow policy, in seconds.

It shows what each method does with the previous chunk: how far the new chunk's frozen prefix
(the d actions that execute during inference) and its soft overlap land from the previous chunk,
and what a chunk costs relative to Naive. No training, no environment.
"""

from __future__ import annotations

import dataclasses
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from rtchunk.model import FlowPolicy, ModelConfig
from rtchunk.sampling import BID, RTC, HardMask, JacobianFree, Naive, TrainedPrefix, sample_chunk


@dataclasses.dataclass(frozen=True)
class SampleDemoConfig:
    batch: int = 16
    obs_dim: int = 16
    action_dim: int = 4
    inference_delay: int = 2
    """d: actions of the previous chunk that execute while the new one is computed."""
    execute_horizon: int = 3
    """s: actions executed per chunk; guidance ends at H - s."""
    num_steps: int = 5
    seed: int = 0


def main(config: SampleDemoConfig = SampleDemoConfig()) -> int:
    model = ModelConfig()
    if not 0 <= config.inference_delay <= model.horizon - config.execute_horizon:
        raise ValueError(
            f"inference_delay must be in [0, H - execute_horizon = {model.horizon - config.execute_horizon}], "
            f"got {config.inference_delay}"
        )
    policy = FlowPolicy(config.obs_dim, config.action_dim, model, rngs=nnx.Rngs(config.seed))
    graphdef, weights = nnx.split(policy)
    # A fresh policy's adaLN-zero blocks are the identity, so its tokens would not interact and the
    # methods could not differ beyond the frozen prefix; small random modulation stands in for training.
    leaves, treedef = jax.tree.flatten(weights)
    keys = jax.random.split(jax.random.key(config.seed + 1), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    weights = jax.tree.unflatten(treedef, leaves)
    k_obs, k_prev, k_noise, k_bid = jax.random.split(jax.random.key(config.seed), 4)
    obs = jax.random.normal(k_obs, (config.batch, config.obs_dim))
    prev = jax.random.normal(k_prev, (config.batch, model.horizon, config.action_dim))
    noise = jax.random.normal(k_noise, prev.shape)
    d, s, h = config.inference_delay, config.execute_horizon, model.horizon

    methods = {
        "naive": Naive(),
        "rtc (exp)": RTC(),
        "rtc (linear)": RTC(schedule="linear"),
        "hard mask": HardMask(),
        "jacobian-free": JacobianFree(),
        "trained prefix*": TrainedPrefix(),
        "bid (N=16)": BID(rng=k_bid, num_samples=16),
    }
    print(f"H={h}  d={d}  s={s}  batch={config.batch}  flow steps={config.num_steps}  (random weights, untrained)")
    print(f"{'method':<16} {'|new-prev| frozen':>18} {'|new-prev| soft':>16} {'ms/chunk':>9} {'x naive':>8}")
    base = None
    for name, method in methods.items():

        @jax.jit
        def run(weights, obs, noise, prev, method=method):
            fn = nnx.merge(graphdef, weights).velocity_fn(obs)
            return sample_chunk(fn, noise, method, prev_chunk=prev, inference_delay=d, execute_horizon=s,
                                num_steps=config.num_steps)

        chunk = run(weights, obs, noise, prev).block_until_ready()
        start = time.perf_counter()
        for _ in range(5):
            run(weights, obs, noise, prev).block_until_ready()
        ms = (time.perf_counter() - start) / 5 * 1e3
        base = base or ms
        frozen = float(jnp.abs(chunk[:, :d] - prev[:, :d]).mean()) if d else float("nan")
        soft = float(jnp.abs(chunk[:, d : h - s] - prev[:, d : h - s]).mean()) if h - s > d else float("nan")
        print(f"{name:<16} {frozen:>18.4f} {soft:>16.4f} {ms:>9.2f} {ms / base:>8.2f}")
    print("* trained prefix expects a model trained with prefix conditioning; here it only shows the exact prefix.")
    return 0
