"""``rtchunk demo``: the papers' protocol (``rtchunk reproduce``) on one Kinetix level, sized for a 2-core laptop
CPU: PPO experts (several seeds; more are trained if too few solve, never a mixture of one) -> their mixture's
data -> a flow policy by behaviour cloning -> naive and RTC at d = 0..4 with s = max(d, 1) -> the report
(tables, plots), the diagnostics and a video per method at the largest delay.

It is ``rtchunk reproduce`` with the presets below, so it resumes the same way (run it again after an
interruption; a finished demo only prints its report) and takes the same flags.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rtchunk.commands import reproduce
from rtchunk.kinetix.reproduce import DataSettings, DiagnosticsSettings, ReproduceConfig
from rtchunk.kinetix.sweep import EvalConfig

DEMO_METHODS = ("naive", "rtc")
"""What the demo compares. Left out for time (``rtchunk reproduce`` runs them): training-time RTC (its
fine-tune and evaluation cost ~4 of the demo's minutes), hard masking (as costly as RTC, and within RTC's
intervals in the demo's runs), BID (N extra policy passes a chunk), temporal ensembling, and the sweep over
s at d = 1."""

_CPU = reproduce.PRESETS["cpu"]
PRESETS = {
    "cpu": dataclasses.replace(
        _CPU,
        out_dir=Path("runs/demo"),
        levels=("h17_unicycle",),
        # Eight seeds of 32 environments each, of which four must solve (docs/results.md: with one expert's
        # data no method beats naive, with four they separate); the round stops as soon as four have solved
        # (on h17_unicycle 5 of 8 by 98k steps: the smaller the batch a seed, the fewer steps it needs), and
        # a failing round costs a second round of eight new seeds (stopping at the seeds still missing)
        # rather than a mixture of one. Checkpoints every 16 updates, each judged on 16 episodes (evaluating
        # eight seeds on 32 episodes cost about 40 % of the 16 updates before it).
        experts=dataclasses.replace(
            _CPU.experts, num_seeds=8, num_eval_envs=16, checkpoint_every=16, stop_at_solve_rate=_CPU.threshold,
            ppo=dataclasses.replace(_CPU.experts.ppo, num_envs=32, total_timesteps=131_072)),
        min_experts=4,
        extra_seed_rounds=1,
        data=DataSettings(steps_per_level=100_000, num_envs=256),
        # The cpu preset's BC for 6 epochs instead of 10 (for time; with the average of the weights every
        # epoch's policy solves d = 0, docs/results.md "Ablation: which epoch?").
        bc=dataclasses.replace(_CPU.bc, num_epochs=6),
        eval=EvalConfig(methods=DEMO_METHODS, num_envs=128, video_envs=4,
                        video_rows=tuple(f"{m}:4" for m in ("naive", "rtc"))),
        horizon_sweep_delay=None,
        diagnostics=DiagnosticsSettings(num_obs=256, num_samples=8),
    ),
    # The end-to-end test's size: every stage, seconds to minutes, numbers meaningless (the same run as
    # `rtchunk reproduce --preset smoke`, which adds a video).
    "smoke": reproduce.PRESETS["smoke"],
}
DEFAULT_PRESET = "cpu"


def main(config: ReproduceConfig = PRESETS["cpu"]) -> int:
    code = reproduce.main(config)
    if code == 0:
        videos = sorted((Path(config.out_dir) / "levels").glob("*/eval/videos/*.mp4"))
        for path in videos:
            print(f"video: {path}")
    return code
