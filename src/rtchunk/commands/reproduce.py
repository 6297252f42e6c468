"""``rtchunk reproduce``: the papers' whole Kinetix protocol over a list of levels, resumable per stage and level
(``rtchunk.kinetix.reproduce``): experts (with extra seeds for a level short of solving ones, or its loud
exclusion) -> mixture data -> BC -> training-time-RTC fine-tune -> the sweep at d = 0..4 (s = max(d, 1)) and
at d = 1 for every s -> multimodality and guidance diagnostics -> a report per level and pooled.

Run it again after an interruption and it continues; a finished run only prints its report.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from rtchunk.commands import log
from rtchunk.kinetix import ppo
from rtchunk.kinetix.bc import BCConfig
from rtchunk.kinetix.expert import TrainerSettings
from rtchunk.kinetix.reproduce import (PAPER_METHODS, PER_LEVEL, DataSettings, DiagnosticsSettings, ReproduceConfig,
                                       run)
from rtchunk.kinetix.sweep import EvalConfig
from rtchunk.methods import MethodSettings
from rtchunk.model_config import ModelConfig

CPU_MODEL = ModelConfig(channel_dim=128, channel_hidden_dim=256, token_hidden_dim=32, num_layers=2)
"""The demo's model: 8x cheaper per channel-mixing layer than the papers' 256x4 (docs/pipeline.md)."""
SMOKE_MODEL = ModelConfig(channel_dim=16, channel_hidden_dim=32, token_hidden_dim=8, num_layers=1, horizon=4)


def _bc(**kwargs) -> BCConfig:
    return BCConfig(data_dir=PER_LEVEL, out_dir=PER_LEVEL, **kwargs)


PRESETS = {
    # The papers' settings (GPUs): 8 seeds x 65M PPO steps, 1M transitions, the 256x4 Mixer for 32 epochs,
    # training-time RTC for 8 epochs from epoch 24, 2048 environments per point; the 12 levels need --level-dir.
    "paper": ReproduceConfig(),
    # Two of the smallest levels (shrunk, both in kinetix-env; --level-dir for the papers' versions) on a
    # 2-core CPU in well under 3 hours: docs/pipeline.md has the estimate per stage and why not four.
    "cpu": ReproduceConfig(
        out_dir=Path("runs/reproduce-cpu"),
        levels=("h17_unicycle", "hard_lunar_lander"),
        shrink=True,
        # 64 environments per seed (4,096 steps an update): on h17_unicycle 3 of 4 seeds solved by 164k steps,
        # against 262k with 128 and 590k with 256, at ~70 % of the steps/s (docs/results.md, expert budget).
        experts=TrainerSettings(
            num_seeds=4,
            ppo=ppo.PPOConfig(num_envs=64, num_steps=64, num_minibatches=4, ent_coef=0.01, total_timesteps=327_680),
            checkpoint_every=8, num_eval_envs=64, compact_obs=True),
        min_experts=4,
        extra_seed_rounds=1,
        data=DataSettings(steps_per_level=100_000, num_envs=256),
        # At this scale the last weights of an epoch are a lottery in closed loop (one run's checkpoints after
        # 6..10 epochs solved 0.76, 1.00, 0.98, 1.00, 0.04 at d = 0), so each epoch's policy is an average of
        # the weights (EMA 0.999: 0.99, 1.00, 1.00 after 6, 8, 10; docs/results.md). A departure from the
        # papers, who keep the last weights of a far longer run. The fine-tune starts from BC's epoch 8 of 10
        # (so both trained 10 epochs) and warms up like BC (the papers' fine-tune warms up too).
        bc=_bc(model=CPU_MODEL, batch_size=256, num_epochs=10, warmup_steps=200, ema_decay=0.999),
        finetune=_bc(model=CPU_MODEL, batch_size=256, num_epochs=2, init_epoch=7, warmup_steps=200, simulated_delay=5,
                     ema_decay=0.999),
        weak_epoch=0,
        eval=EvalConfig(methods=PAPER_METHODS, num_envs=1024,
                        method_settings=MethodSettings(bid_samples=4, bid_top_k=2)),
        diagnostics=DiagnosticsSettings(num_obs=512, num_samples=8),
    ),
    # Toy size for the tests (seconds to minutes): every stage and every method, numbers meaningless.
    "smoke": ReproduceConfig(
        out_dir=Path("runs/reproduce-smoke"),
        levels=("l/h17_unicycle",),
        shrink=True,
        max_timesteps=48,
        experts=TrainerSettings(
            num_seeds=2,
            ppo=ppo.PPOConfig(num_envs=16, num_steps=48, num_minibatches=4, ent_coef=0.01, total_timesteps=16 * 48 * 2),
            checkpoint_every=1, num_eval_envs=0, compact_obs=True),
        threshold=0.0,
        min_experts=2,
        extra_seed_rounds=1,
        data=DataSettings(steps_per_level=16 * 48, num_envs=16),
        bc=_bc(model=SMOKE_MODEL, batch_size=16, num_epochs=2, warmup_steps=0, max_steps_per_epoch=4),
        finetune=_bc(model=SMOKE_MODEL, batch_size=16, num_epochs=1, init_epoch=0, warmup_steps=0,
                     max_steps_per_epoch=4, simulated_delay=3),
        weak_epoch=0,
        eval=EvalConfig(methods=PAPER_METHODS, delays=(0, 2), num_envs=8, fast_compile=True,
                        method_settings=MethodSettings(bid_samples=2, bid_top_k=1), video_envs=2,
                        video_rows=("naive:2",)),
        diagnostics=DiagnosticsSettings(num_obs=16, num_samples=2),
    ),
}


def command_line() -> str:
    """This process's command line as a user would type it."""
    args = sys.argv[1:]
    return shlex.join(["rtchunk", *args]) if args else "rtchunk reproduce"


def main(config: ReproduceConfig) -> int:
    try:
        summary = run(config, command=command_line(), log=log)
    except KeyboardInterrupt:
        log(f"\ninterrupted: run the same command to continue (finished stages are kept in {config.out_dir})")
        return 130
    print(summary.read_text())
    print(f"report: {summary} (plots, CSVs and report.md beside it)")
    return 0
