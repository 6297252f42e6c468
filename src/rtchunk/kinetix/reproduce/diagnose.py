"""The reproduction's diagnostics stage: for a level's BC, weak and fine-tuned policies, how multimodal their
chunks are and how much RTC's guidance (and the trained prefix) changes them, on observations from the data
(``rtchunk.diagnostics`` holds the measures)."""

from __future__ import annotations

from pathlib import Path

from rtchunk.kinetix import results
from rtchunk.kinetix.reproduce.config import ReproduceConfig
from rtchunk.kinetix.reproduce.layout import LevelDirs

DIAGNOSTIC_COLUMNS = ("level", "policy", "checkpoint", "metric", "method", "d", "s", "mean", "std", "num_obs")


def diagnostic_points(config: ReproduceConfig) -> list[tuple[int, int]]:
    """(d, s) at which guidance is measured: the sweep's s = max(d, 1) points."""
    return [(d, max(d, 1)) for d in config.eval.delays]


def observation_pairs(done, num: int, back: int, rng):
    """``num`` (env, t) pairs with t >= back and no episode end among steps t - back .. t - 1 (so the
    observation ``back`` steps earlier belongs to the same episode)."""
    import numpy as np

    e, t = done.shape
    ended = np.concatenate([np.zeros((e, 1), np.int64), np.cumsum(done, axis=1)], axis=1)  # ends before step t
    steps = np.arange(back, t)
    same = ended[:, steps] - ended[:, steps - back] == 0  # [E, T - back]
    env_idx, step_idx = np.nonzero(same)
    if len(env_idx) == 0:
        raise ValueError(f"the dataset has no episode longer than {back} steps")
    pick = rng.choice(len(env_idx), size=num, replace=len(env_idx) < num)
    return env_idx[pick], steps[step_idx[pick]]


def measure_policy(policy, data_obs, env_idx, step_idx, points, methods, key, *, num_samples: int,
                   num_steps: int) -> list[tuple]:
    """A policy's figures on the observations ``data_obs[env_idx, step_idx]`` ([E, T, O] data): its chunk
    spread, and for every (d, s) in ``points`` and (name, method) in ``methods`` the guidance change, given the
    naive chunk sampled s steps earlier in the same episode, shifted by s, as the previous chunk (its entries
    past the end hold its last action, as the controller would). Rows of (metric, method, d, s, values)."""
    import jax
    import numpy as np

    from rtchunk import diagnostics

    obs = data_obs[env_idx, step_idx]
    k_spread, k_prev, k_change = jax.random.split(key, 3)
    spread = diagnostics.chunk_spread(policy, obs, k_spread, num_samples=num_samples, num_steps=num_steps)
    out = [("chunk_spread", "", "", "", spread)]
    for d, s in points:
        chunk = naive_chunks(policy, data_obs[env_idx, step_idx - s], jax.random.fold_in(k_prev, s), num_steps)
        prev = np.concatenate([chunk[:, s:], np.repeat(chunk[:, -1:], s, axis=1)], axis=1)
        for name, method in methods:
            change = diagnostics.guidance_change(policy, obs, prev, jax.random.fold_in(k_change, d), method,
                                                 inference_delay=d, execute_horizon=s, num_steps=num_steps)
            out.append(("guidance_change", name, d, s, change))
    return out


def run_diagnostics(config: ReproduceConfig, dirs: LevelDirs, weak: Path) -> dict:
    """Chunk spread and guidance change per policy, on observations from the level's data."""
    import jax
    import numpy as np

    from rtchunk.kinetix import dataset, policy_store
    from rtchunk.methods import make_method

    data, _ = dataset.load(dirs.data / dirs.name)
    points = diagnostic_points(config)
    env_idx, step_idx = observation_pairs(data.done, config.diagnostics.num_obs, max(s for _, s in points),
                                          np.random.default_rng(config.seed))
    policies = {"bc": policy_store.find_checkpoint(dirs.policy, dirs.name)}
    if config.uses_weak_policy:  # the weak policy and the fine-tuned one only where the sweep uses them
        policies["weak"] = weak
    if config.fine_tunes:
        policies["finetuned_rtc"] = policy_store.find_checkpoint(dirs.policy_rtc, dirs.name)
    rtc = make_method("rtc", config.eval.method_settings)
    key = jax.random.key(config.seed)
    rows = []
    for i, (policy_name, path) in enumerate(policies.items()):
        policy, _ = policy_store.load_policy(path)
        methods = [("rtc", rtc)] + ([("trained_prefix", make_method("trained_prefix"))]
                                    if policy_name == "finetuned_rtc" else [])
        for metric, method, d, s, values in measure_policy(
                policy, data.obs, env_idx, step_idx, points, methods, jax.random.fold_in(key, i),
                num_samples=config.diagnostics.num_samples, num_steps=config.eval.num_flow_steps):
            values = np.asarray(values)
            rows.append({"level": dirs.name, "policy": policy_name, "checkpoint": str(path), "metric": metric,
                         "method": method, "d": d, "s": s, "mean": float(values.mean()), "std": float(values.std()),
                         "num_obs": int(values.size)})
    results.write_rows(dirs.diagnostics, rows, DIAGNOSTIC_COLUMNS)
    return {"rows": len(rows), "spread": {r["policy"]: r["mean"] for r in rows if r["metric"] == "chunk_spread"}}


_NAIVE = {}


def naive_chunks(policy, obs, rng, num_steps: int):
    """[N, H, A] naive chunks for observations [N, O] (numpy)."""
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rtchunk.methods import Naive
    from rtchunk.sampling import sample_chunk

    if "fn" not in _NAIVE:
        def sample(graphdef, params, obs, rng, steps):
            model = nnx.merge(graphdef, params)
            noise = jax.random.normal(rng, (obs.shape[0], model.config.horizon, model.action_dim))
            return sample_chunk(model.velocity_fn(obs), noise, Naive(), num_steps=steps)

        _NAIVE["fn"] = jax.jit(sample, static_argnums=(0, 4))
    graphdef, params = nnx.split(policy)
    return np.asarray(_NAIVE["fn"](graphdef, params, jnp.asarray(obs, jnp.float32), rng, num_steps))


