"""``rtchunk train-expert``: PPO experts on Kinetix levels, seeds x levels at once, with checkpoints and
resume (``rtchunk.kinetix.expert``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import tyro

from rtchunk.kinetix import parallel, ppo
from rtchunk.kinetix.expert import CHECKPOINTS, TrainerSettings, expert_env, train_on_levels
from rtchunk.kinetix.paper import EPISODE_STEPS, PAPER_LEVELS
from rtchunk.kinetix.tracking import Tracker


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    out_dir: Path = Path("runs/experts")
    levels: tuple[str, ...] = ()
    """Level names or paths (empty = the papers' 12; four of them need --level-dir)."""
    level_dir: Path | None = None
    """Where your copies of the level files live (looked up before the ones in kinetix-env)."""
    shrink: bool = False
    """Simulate each level compacted to the slots it uses (faster; see `rtchunk levels shrink`)."""
    max_timesteps: int = EPISODE_STEPS
    """Episode length (the papers: 256)."""
    trainer: Annotated[TrainerSettings, tyro.conf.arg(name="")] = TrainerSettings()
    distributed: parallel.DistributedConfig = parallel.DistributedConfig()
    wandb_project: str | None = None
    """Also send the statistics to this Weights & Biases project (needs the [wandb] extra)."""

    def __post_init__(self):
        if self.max_timesteps < 1:
            raise ValueError(f"--max-timesteps must be >= 1, got {self.max_timesteps}")
        if self.trainer.compact_obs and not self.shrink:
            raise ValueError("--compact-obs observes the shrunk level: it needs --shrink")


PRESETS = {
    "paper": ExpertConfig(),
    # One level, shrunk, sized for a 2-core laptop: the demo's first stage.
    "cpu": ExpertConfig(
        levels=("h17_unicycle",),
        shrink=True,
        trainer=TrainerSettings(
            num_seeds=2,
            ppo=ppo.PPOConfig(num_envs=256, num_steps=64, num_minibatches=4, total_timesteps=1_500_000, ent_coef=0.01),
            checkpoint_every=15,
            num_eval_envs=64,
        ),
    ),
}


def main(config: ExpertConfig) -> int:
    import jax

    from rtchunk.kinetix import levels as levels_lib

    levels_lib.level_files(list(config.levels) or list(PAPER_LEVELS), config.level_dir)  # fail fast on a bad name
    parallel.initialize(config.distributed)
    all_levels = levels_lib.load_levels(list(config.levels) or list(PAPER_LEVELS), level_dir=config.level_dir)
    mine = parallel.my_share(all_levels)
    if not mine:
        print(f"process {jax.process_index()} has no level to train ({len(all_levels)} levels, "
              f"{jax.process_count()} processes)")
        return 0
    env_config = expert_env(config.trainer, shrink=config.shrink, max_timesteps=config.max_timesteps)
    out = Path(config.out_dir) / parallel.process_subdir()
    total = config.trainer.ppo.num_updates * config.trainer.ppo.steps_per_update
    print(f"training {config.trainer.num_seeds} seeds x {len(mine)} level(s) ({', '.join(l.name for l in mine)}) for "
          f"{total:,} env steps each on {jax.local_device_count()} device(s); writing to {out}")
    tracker = Tracker(config.wandb_project, run_name=f"experts {out.resolve()}", config=config, step_key="env_steps",
                      group_keys=("level", "seed"), directory=out)
    try:
        train_on_levels(mine, env_config, config.trainer, out, log=tracker.log)
    finally:
        tracker.finish()
    print(f"expert checkpoints and stats: {out / CHECKPOINTS}, {out / 'stats.csv'}")
    return 0
