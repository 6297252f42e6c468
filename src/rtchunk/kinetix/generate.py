"""``rtchunk generate-data``: record expert data for behaviour cloning, one dataset per level.

For each level, every seed's best checkpoint that reaches the solve-rate threshold (the papers: 0.65)
joins a mixture of experts; seeds that never reach it are left out, and a level with no such seed is
reported and skipped. A level whose dataset already exists is skipped too, so an interrupted run picks up
where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from rtchunk import checkpoints
from rtchunk.kinetix import collect, dataset, expert, parallel, ppo


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    expert_dir: Path = Path("runs/experts")
    """Output of `rtchunk train-expert`."""
    out_dir: Path | None = None
    """Default: <expert_dir>/data."""
    steps_per_level: int = 1_000_000
    num_envs: int = 1024
    threshold: float = 0.65
    """Minimum solve rate of an expert checkpoint (the papers: 0.65)."""
    level_dir: Path | None = None
    """Where the level files are, if they moved since training."""
    seed: int = 0
    progress: bool = True
    distributed: parallel.DistributedConfig = parallel.DistributedConfig()

    def __post_init__(self):
        if self.steps_per_level < 1 or self.num_envs < 1:
            raise ValueError(f"steps_per_level and num_envs must be >= 1, got {self.steps_per_level}, {self.num_envs}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


PRESETS = {
    "paper": GenerateConfig(),
    "cpu": GenerateConfig(steps_per_level=100_000, num_envs=256),
}


def output_dir(config: GenerateConfig) -> Path:
    return Path(config.out_dir) if config.out_dir is not None else Path(config.expert_dir) / "data"


def _level_info(expert_dir: Path) -> dict[str, dict]:
    """For every trained level: its source file, env config and network settings (from run.json)."""
    info = {}
    for run in expert.run_dirs(expert_dir):
        body = json.loads((run / expert.RUN_FILE).read_text())
        for name, source in zip(body["names"], body["level_specs"]):
            info[name] = {"source": source, "env": body["env"], "ppo": body["settings"]["ppo"],
                          "num_motors": body["num_motors"]}
    return info


def main(config: GenerateConfig) -> int:
    from rtchunk.kinetix import envs as envs_lib
    from rtchunk.kinetix import levels as levels_lib

    parallel.initialize(config.distributed)
    selection = expert.select_experts(config.expert_dir, config.threshold)
    info = _level_info(config.expert_dir)
    out = output_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    per_env = -(-config.steps_per_level // config.num_envs)
    report = {}
    for i, name in enumerate(parallel.my_share(sorted(selection))):
        chosen = selection[name]
        target = out / name
        if not chosen:
            print(f"{name}: no expert reached solve rate {config.threshold:.2f}; skipped (train longer or lower "
                  f"--threshold)")
            report[name] = {"experts": 0}
            continue
        if (target / checkpoints.META).is_file():
            meta = checkpoints.load_meta(target)
            print(f"{name}: dataset exists ({meta['summary']['transitions']:,} transitions), skipped")
            report[name] = {"experts": len(chosen), **meta["summary"]}
            continue
        spec = info[name]
        source = Path(spec["source"])
        if config.level_dir is not None:
            source = Path(config.level_dir) / source.name
        level = levels_lib.load_level(source)
        env_config = envs_lib.EnvConfig(**{k: v for k, v in spec["env"].items()})
        env, (arrays,) = envs_lib.make_env([level], env_config)
        ppo_config = ppo.PPOConfig(**spec["ppo"])
        like = ppo.init_params(jax.random.key(0), env.obs_dim, env.action_dim, ppo_config)
        experts = [expert.load_expert_params(sel, like) for sel in chosen]
        stacked = jax.tree.map(lambda *x: np.stack(x), *experts)
        data = collect.collect(
            env, arrays, stacked, num_motors=spec["num_motors"], num_envs=config.num_envs, num_steps=per_env,
            rng=jax.random.fold_in(jax.random.key(config.seed), i),
            # The experts see a history of frames and their last action; the flow policy sees one frame.
            policy_obs=lambda obs, state: state.history[-1],
            progress=config.progress, desc=name,
        )
        dataset.save(target, data, {
            "level": name, "level_source": str(source), "experts": chosen, "threshold": config.threshold,
            "env": dataclasses.replace(env_config, obs_history=1, prev_action=False, dense_reward=False),
        })
        report[name] = {"experts": len(chosen), **data.summary()}
        print(f"{name}: {len(chosen)} expert(s), {data.num_transitions:,} transitions, expert solve rate in the "
              f"data {report[name]['solve_rate']:.3f} over {report[name]['episodes']} episodes")
    checkpoints.atomic_write_text(out / f"summary{parallel.process_subdir() and '_' + parallel.process_subdir()}.json",
                                  json.dumps(report, indent=2))
    print(f"datasets: {out}")
    return 0
