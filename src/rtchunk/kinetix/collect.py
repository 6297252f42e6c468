"""Rolling out a mixture of experts to record a behaviour-cloning dataset.

Every environment follows one expert per episode, drawn uniformly from the level's selected experts
and redrawn when the episode ends. Experts act with their mean action; the environment adds its action
noise (std 0.1), so the data covers small deviations the way the papers' data does. What is recorded is
the single-frame observation the flow policy will see (``policy_obs``), the commanded action, and the
episode statistics.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rtchunk.kinetix import parallel, ppo
from rtchunk.kinetix.dataset import Dataset


def make_collector(env, num_motors: int, policy_obs: Callable, segment: int):
    """``run(carry, experts, level) -> (carry, record)``: ``segment`` steps of all environments.

    carry = (obs, env_state, expert_index [E], rng); experts are stacked params [K, ...].
    """

    def step(carry, _):
        obs, state, index, rng, experts, level = carry
        rng, k_env, k_pick = jax.random.split(rng, 3)
        # Every expert acts on the whole batch and each environment keeps its own expert's action: K batched
        # matrix products, where gathering one weight copy per environment moved [E, obs, hidden] every step.
        means = jax.vmap(ppo.policy_mean, in_axes=(0, None))(experts, obs)  # [K, E, A]
        mean = jnp.take_along_axis(means, index[None, :, None], axis=0)[0]
        action = ppo.squash(mean, num_motors)
        seen = jax.vmap(policy_obs, in_axes=(0, 0, None))(obs, state, level)
        next_obs, state, _, done, info = env.step_batch(k_env, state, action, level)
        num_experts = jax.tree.leaves(experts)[0].shape[0]
        fresh = jax.random.randint(k_pick, index.shape, 0, num_experts)
        index = jnp.where(done, fresh, index)
        record = (seen, action, done, info["returned_episode_solved"], info["returned_episode_returns"],
                  info["returned_episode_lengths"])
        return (next_obs, state, index, rng, experts, level), record

    @jax.jit
    def run(carry, experts, level):
        (obs, state, index, rng, *_), record = jax.lax.scan(step, (*carry, experts, level), None, length=segment)
        return (obs, state, index, rng), record

    return run


def collect(
    env,
    level,
    experts,
    *,
    num_motors: int,
    num_envs: int,
    num_steps: int,
    rng: jax.Array,
    policy_obs: Callable = lambda obs, state, level: obs,
    segment: int = 128,
    progress: bool = True,
    desc: str = "collect",
) -> Dataset:
    """``num_envs`` environments for ``num_steps`` steps each, driven by the stacked ``experts``."""
    if num_envs < 1 or num_steps < 1:
        raise ValueError(f"num_envs and num_steps must be >= 1, got {num_envs} and {num_steps}")
    num_experts = jax.tree.leaves(experts)[0].shape[0]
    if num_experts < 1:
        raise ValueError("no experts to collect data with")
    k_reset, k_pick, k_run = jax.random.split(rng, 3)
    obs, state = env.reset_batch(k_reset, level, num_envs)
    carry = (obs, state, jax.random.randint(k_pick, (num_envs,), 0, num_experts), k_run)
    # Environments are split over this process's devices (the keys are drawn for the whole batch, so the
    # data does not depend on the split).
    envs_sharding = parallel.level_sharding(num_envs)
    carry = (*jax.device_put(carry[:3], envs_sharding), carry[3])
    # Segments of equal length that add up to num_steps (or just over): no step is simulated in vain.
    num_segments = math.ceil(num_steps / min(segment, num_steps))
    segment = math.ceil(num_steps / num_segments)
    run = make_collector(env, num_motors, policy_obs, segment)
    parts = []
    with tqdm(total=num_steps * num_envs, desc=desc, unit="step", unit_scale=True, disable=not progress) as bar:
        done_steps = 0
        while done_steps < num_steps:
            carry, record = run(carry, experts, level)
            take = min(segment, num_steps - done_steps)
            parts.append(jax.tree.map(lambda x: np.asarray(x[:take]), record))
            done_steps += take
            bar.update(take * num_envs)
    # [T, E, ...] -> [E, T, ...]
    obs, action, done, solved, ret, length = (np.swapaxes(np.concatenate(xs), 0, 1) for xs in zip(*parts))
    return Dataset(obs.astype(np.float32), action.astype(np.float32), done.astype(bool), solved.astype(bool),
                   ret.astype(np.float32), length.astype(np.int32))


def record_datasets(
    expert_dir: Path,
    out: Path,
    *,
    steps_per_level: int,
    num_envs: int,
    threshold: float,
    level_dir: Path | None = None,
    seed: int = 0,
    max_experts: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
    selection: dict[str, list[dict]] | None = None,
) -> dict[str, dict]:
    """One dataset per level of an expert run (``rtchunk generate-data``), in ``out/<level>``.

    For each level, every seed's best checkpoint that reaches ``threshold`` joins a mixture of experts (the
    first ``max_experts`` seeds of them, when given: how multimodal the data is); a level without one is
    reported and skipped, and so is a level whose dataset exists already (an
    interrupted run picks up where it stopped). Returns a summary per level; ``log`` gets a line per level.
    ``selection`` (``expert.select_experts``'s format) replaces the selection from ``expert_dir``: e.g. experts
    pooled from several expert runs of the same levels and settings (``rtchunk reproduce``'s extra seeds).
    """
    from rtchunk import checkpoints
    from rtchunk.kinetix import dataset, expert
    from rtchunk.kinetix import envs as envs_lib
    from rtchunk.kinetix import levels as levels_lib

    if max_experts is not None and max_experts < 1:
        raise ValueError(f"max_experts must be >= 1 or None, got {max_experts}")
    if selection is None:
        selection = expert.select_experts(expert_dir, threshold)
    selection = {name: chosen[:max_experts] for name, chosen in selection.items()}
    info = expert.trained_levels(expert_dir)
    missing = sorted(set(selection) - set(info))
    if missing:
        raise ValueError(f"{expert_dir}: the run file names no level file for {', '.join(missing)}")
    mine = parallel.my_share(sorted(selection))
    sources = {}
    for name in mine:
        source = Path(info[name]["source"])
        sources[name] = Path(level_dir) / source.name if level_dir is not None else source
        if selection[name] and not (Path(out) / name / checkpoints.META).is_file():
            levels_lib.resolve(sources[name])  # a level file that moved is an error before anything is written
    per_env = -(-steps_per_level // num_envs)
    report = {}
    for i, name in enumerate(mine):
        chosen = selection[name]
        target = Path(out) / name
        if not chosen:
            log(f"{name}: no expert reached solve rate {threshold:.2f}; skipped (train longer or lower --threshold)")
            report[name] = {"experts": 0}
            continue
        if (target / checkpoints.META).is_file():
            meta = checkpoints.load_meta(target)
            log(f"{name}: dataset exists ({meta['summary']['transitions']:,} transitions), skipped")
            report[name] = {"experts": len(chosen), **meta["summary"]}
            continue
        spec = info[name]
        level = levels_lib.load_level(sources[name])
        env_config = envs_lib.EnvConfig(**spec["env"])
        env, (arrays,) = envs_lib.make_env([level], env_config)
        like = ppo.init_params(jax.random.key(0), env.obs_dim, env.action_dim, ppo.PPOConfig(**spec["ppo"]))
        experts = [expert.load_expert_params(sel, like) for sel in chosen]
        stacked = jax.tree.map(lambda *x: np.stack(x), *experts)
        data = collect(
            env, arrays, stacked, num_motors=spec["num_motors"], num_envs=num_envs, num_steps=per_env,
            rng=jax.random.fold_in(jax.random.key(seed), i),
            # The experts see a history of frames and their last action; the flow policy sees one frame.
            policy_obs=lambda obs, state, level: env.flow_observation(state, level),
            progress=progress, desc=name,
        )
        dataset.save(target, data, {
            "level": name, "level_source": str(sources[name]), "experts": chosen, "threshold": threshold,
            "max_experts": max_experts,
            "env": dataclasses.replace(env_config, obs_history=1, prev_action=False, dense_reward=False,
                                       compact_obs=False),
        })
        report[name] = {"experts": len(chosen), **data.summary()}
        log(f"{name}: {len(chosen)} expert(s), {data.num_transitions:,} transitions, expert solve rate in the "
            f"data {report[name]['solve_rate']:.3f} over {report[name]['episodes']} episodes")
    return report
