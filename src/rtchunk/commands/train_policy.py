"""``rtchunk train-policy``: flow policies by behaviour cloning on expert data, optionally with training-time
RTC (``rtchunk.kinetix.bc``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import tyro

from rtchunk.kinetix import parallel
from rtchunk.kinetix.bc import BCConfig, process_file, quick_evaluator, train_policy
from rtchunk.kinetix.tracking import Tracker
from rtchunk.model_config import ModelConfig


@dataclasses.dataclass(frozen=True)
class TrainPolicyConfig:
    bc: Annotated[BCConfig, tyro.conf.arg(name="")] = BCConfig(data_dir=Path("runs/experts/data"),
                                                               out_dir=Path("runs/bc"))
    quick_eval_envs: int = 128
    """Environments for the per-epoch quick evaluation (naive sampling, d=0, s=H/2); 0 turns it off."""
    distributed: parallel.DistributedConfig = parallel.DistributedConfig()
    wandb_project: str | None = None
    """Also send the per-epoch statistics to this Weights & Biases project (needs the [wandb] extra)."""

    def __post_init__(self):
        if self.quick_eval_envs < 0:
            raise ValueError(f"--quick-eval-envs must be >= 0, got {self.quick_eval_envs}")


PRESETS = {
    "paper": TrainPolicyConfig(),
    "cpu": TrainPolicyConfig(
        bc=BCConfig(data_dir=Path("runs/experts/data"), out_dir=Path("runs/bc"),
                    model=ModelConfig(channel_dim=128, channel_hidden_dim=256, token_hidden_dim=32, num_layers=2),
                    batch_size=256, num_epochs=8, warmup_steps=200, max_steps_per_epoch=400)
    ),
}


def main(config: TrainPolicyConfig) -> int:
    parallel.initialize(config.distributed)
    evaluate = quick_evaluator(config.quick_eval_envs, config.bc.seed) if config.quick_eval_envs > 0 else None
    out_dir = Path(config.bc.out_dir)
    tracker = Tracker(config.wandb_project, run_name=f"policy {out_dir.resolve()}", config=config, step_key="epoch",
                      directory=out_dir)
    try:
        out = train_policy(config.bc, evaluate, log=tracker.log)
    finally:
        tracker.finish()
    print(f"flow policies: {out}/<level>/epoch_XXX (stats in {out / process_file('stats.csv')})")
    return 0
