"""``rtchunk sample-demo``: every sampling method on a randomly initialised flow policy, in seconds.

It shows what each method does with the previous chunk: how far the new chunk's frozen prefix
(the d actions that execute during inference) and its soft overlap land from the previous chunk,
and what a chunk costs relative to Naive. No training, no environment.
"""

from __future__ import annotations

import dataclasses
import time

from rtchunk.methods import DEFAULT_NUM_STEPS, METHOD_NAMES, MethodSettings, execution, make_method
from rtchunk.model_config import ModelConfig


@dataclasses.dataclass(frozen=True)
class SampleDemoConfig:
    batch: int = 16
    obs_dim: int = 16
    action_dim: int = 4
    inference_delay: int = 2
    """d: actions of the previous chunk that execute while the new one is computed."""
    execute_horizon: int = 3
    """s: actions executed per chunk; guidance ends at H - s."""
    num_steps: int = DEFAULT_NUM_STEPS
    method_settings: MethodSettings = MethodSettings(bid_samples=16)
    """The methods' knobs (BID samples 16 candidates here)."""
    seed: int = 0

    def __post_init__(self):
        horizon = ModelConfig().horizon
        for name in ("batch", "obs_dim", "action_dim", "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.execute_horizon <= horizon:
            raise ValueError(f"--execute-horizon must be in [1, H={horizon}], got {self.execute_horizon}")
        if not 0 <= self.inference_delay <= horizon - self.execute_horizon:
            raise ValueError(f"--inference-delay must be in [0, H - execute_horizon = "
                             f"{horizon - self.execute_horizon}], got {self.inference_delay}")


def main(config: SampleDemoConfig = SampleDemoConfig()) -> int:
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp

    from rtchunk.model import FlowPolicy
    from rtchunk.sampling import sample_chunk

    model = ModelConfig()
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

    # Temporal ensembling samples like naive (it differs in how chunks are executed), so it is left out.
    methods = {name: make_method(name, config.method_settings, rng=k_bid) for name in METHOD_NAMES
               if execution(name) == "latest"}
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
        label = name + ("*" if name == "trained_prefix" else "")
        print(f"{label:<16} {frozen:>18.4f} {soft:>16.4f} {ms:>9.2f} {ms / base:>8.2f}")
    print("* trained_prefix expects a model trained with prefix conditioning; here it only shows the exact prefix.")
    return 0
