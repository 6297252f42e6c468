"""``rtchunk demo``: the papers' whole pipeline on one Kinetix level, sized for a 2-core laptop CPU.

PPO experts -> expert data -> a flow policy by behaviour cloning -> a training-time-RTC fine-tune ->
a simulated-delay evaluation of naive, RTC, hard masking, training-time RTC and BID at d = 0..3 with
s = max(d, 1) -> results CSV, plots, a markdown table and a short video. Every stage is one of the
project's commands with smaller settings and writes under ``--out-dir``; every stage resumes, so
running the demo again after an interruption continues where it stopped (and a finished demo only
re-prints its summary).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

from rtchunk.commands import log
from rtchunk.kinetix.paper import EPISODE_STEPS
from rtchunk.model_config import ModelConfig

DEMO_MODEL = ModelConfig(channel_dim=128, channel_hidden_dim=256, token_hidden_dim=32, num_layers=2)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    out_dir: Path = Path("runs/demo")
    level: str = "h17_unicycle"
    """A level name shipped with kinetix-env, or a path (see `rtchunk levels list`)."""
    level_dir: Path | None = None
    shrink: bool = True
    """Simulate the level compacted to its used slots (h17_unicycle: identical outcomes, ~4x faster)."""
    max_timesteps: int = EPISODE_STEPS
    expert_seeds: int = 2
    expert_envs: int = 256
    expert_steps: int = 524_288
    """PPO environment steps per seed (32 updates; measured: 0 % at 15 updates, 100 % deterministic at 30)."""
    expert_eval_envs: int = 64
    """Environments per checkpoint evaluation of the experts (0: statistics of the training episodes)."""
    expert_threshold: float = 0.65
    """Experts below this solve rate are left out of the data (the papers: 0.65)."""
    data_steps: int = 100_000
    data_envs: int = 256
    model: ModelConfig = DEMO_MODEL
    bc_epochs: int = 6
    """Passes over the data (100k transitions at batch 256: 391 updates each). Measured on this level, the solve
    rate after epochs 1-8 swings: 0.79, 0.99, 0.63, 0.00, 0.98, 1.00, 1.00, 0.98 (naive, d = 0, 128
    environments); the policy sits on a knife edge, so stopping earlier is a lottery."""
    bc_warmup_steps: int = 200
    bc_batch: int = 256
    finetune_epochs: int = 2
    """Training-time-RTC fine-tune epochs, from the last BC epoch (the papers: 8 after epoch 24 of 32)."""
    steps_per_epoch: int | None = None
    """Cap on updates per epoch (None: one pass over the data)."""
    simulated_delay: int = 5
    """Training-time RTC fine-tune: delays 0..simulated_delay-1 (the papers: 5)."""
    methods: tuple[str, ...] = ("naive", "rtc", "hard_mask", "trained_prefix", "bid")
    delays: tuple[int, ...] = (0, 1, 2, 3)
    eval_envs: int = 256
    bid_samples: int = 4
    """BID's candidates per chunk (the paper: 32; at s = 1 each costs a full sampling pass per step)."""
    video_envs: int = 4
    video_methods: tuple[str, ...] = ("naive", "rtc")
    """Methods shown in a video each, at the largest delay."""
    seed: int = 0

    def __post_init__(self):
        # The stages check their own settings too, but only when they start: a bad value for the last stage
        # must not cost the earlier ones.
        from rtchunk.methods import check_method_names

        check_method_names(self.methods, "--methods")
        check_method_names(self.video_methods, "--video-methods", allowed=self.methods)
        if not self.delays or any(d < 0 for d in self.delays):
            raise ValueError(f"--delays must be one or more integers >= 0, got {list(self.delays)}")
        for name in ("max_timesteps", "expert_seeds", "expert_envs", "expert_steps", "data_steps", "data_envs",
                     "bc_epochs", "bc_batch", "finetune_epochs", "eval_envs", "bid_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.simulated_delay <= self.model.horizon:
            raise ValueError(f"--simulated-delay must be in [1, H={self.model.horizon}], got {self.simulated_delay}")
        if max(self.delays) > self.model.horizon - 1:
            raise ValueError(f"--delays must be below H={self.model.horizon}, got {max(self.delays)}")


PRESETS = {
    "cpu": DemoConfig(),
    # Seconds-to-minutes: every stage at toy size (the end-to-end test). The numbers mean nothing.
    "smoke": DemoConfig(
        out_dir=Path("runs/demo-smoke"), max_timesteps=48, expert_seeds=1, expert_envs=16, expert_steps=16 * 48 * 2,
        expert_eval_envs=0, expert_threshold=0.0, data_steps=16 * 48, data_envs=16,
        model=ModelConfig(channel_dim=16, channel_hidden_dim=32, token_hidden_dim=8, num_layers=1),
        bc_epochs=1, bc_warmup_steps=0, bc_batch=16, finetune_epochs=1, steps_per_epoch=8, methods=("naive", "trained_prefix"), delays=(0, 2),
        eval_envs=8, bid_samples=2, video_envs=2, video_methods=("naive",),
    ),
}


def _stage(title: str, timings: dict, name: str):
    class Stage:
        def __enter__(self):
            print(f"\n=== {title} ===", flush=True)
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.start, 1)
            if exc[0] is None:
                print(f"--- {title}: {timings[name]:.0f} s", flush=True)

    return Stage()


def run(config: DemoConfig) -> dict:
    """Run (or resume) every stage; returns the paths of what was written."""
    from rtchunk.commands import generate_data, train_expert, train_policy
    from rtchunk.kinetix import expert, ppo, report, sweep
    from rtchunk.kinetix.bc import BCConfig
    from rtchunk.methods import MethodSettings

    out = Path(config.out_dir)
    paths = {name: out / name for name in ("experts", "data", "policy", "policy_rtc", "eval")}
    timings: dict[str, float] = {}
    started = time.perf_counter()

    with _stage("1/6 PPO experts", timings, "experts"):
        ppo_config = ppo.PPOConfig(num_envs=config.expert_envs, num_steps=min(64, config.max_timesteps),
                                   num_minibatches=4, ent_coef=0.01, total_timesteps=config.expert_steps)
        updates = ppo_config.num_updates
        train_expert.main(train_expert.ExpertConfig(
            out_dir=paths["experts"], levels=(config.level,), level_dir=config.level_dir, shrink=config.shrink,
            max_timesteps=config.max_timesteps,
            trainer=expert.TrainerSettings(num_seeds=config.expert_seeds, ppo=ppo_config,
                                           checkpoint_every=max(1, updates // 4),
                                           num_eval_envs=config.expert_eval_envs,
                                           seed=config.seed),
        ))

    with _stage("2/6 expert data", timings, "data"):
        selection = expert.select_experts(paths["experts"], config.expert_threshold)
        threshold = config.expert_threshold
        if not any(selection.values()):
            best = max(s["solve_rate"] for s in expert.select_experts(paths["experts"], 0.0)[_level_name(config)])
            print(f"WARNING: no expert reached solve rate {threshold:.2f} (best {best:.2f}); the demo uses the best "
                  f"checkpoints anyway. Train longer (--expert-steps) for a meaningful benchmark.")
            threshold = best
        generate_data.main(generate_data.GenerateConfig(expert_dir=paths["experts"], out_dir=paths["data"],
                                              steps_per_level=config.data_steps, num_envs=config.data_envs,
                                              threshold=threshold, level_dir=config.level_dir, seed=config.seed))

    with _stage("3/6 flow policy (behaviour cloning)", timings, "policy"):
        train_policy.main(train_policy.TrainPolicyConfig(bc=BCConfig(
            data_dir=paths["data"], out_dir=paths["policy"], model=config.model, batch_size=config.bc_batch,
            num_epochs=config.bc_epochs, max_steps_per_epoch=config.steps_per_epoch, warmup_steps=config.bc_warmup_steps,
            seed=config.seed), quick_eval_envs=0))

    with _stage("4/6 training-time RTC fine-tune", timings, "policy_rtc"):
        train_policy.main(train_policy.TrainPolicyConfig(bc=BCConfig(
            data_dir=paths["data"], out_dir=paths["policy_rtc"], model=config.model, batch_size=config.bc_batch,
            num_epochs=config.finetune_epochs, max_steps_per_epoch=config.steps_per_epoch, warmup_steps=0,
            simulated_delay=config.simulated_delay,
            init_from=paths["policy"], seed=config.seed + 1), quick_eval_envs=0))

    eval_config = sweep.EvalConfig(
        levels=(config.level,), level_dir=config.level_dir, out=paths["eval"], methods=config.methods,
        delays=config.delays, shortest_horizon_only=True, num_envs=config.eval_envs, policy_dir=paths["policy"],
        trained_prefix_policy_dir=paths["policy_rtc"], # BID runs without a weak policy here, so its K only has to fit N.
        method_settings=MethodSettings(bid_samples=config.bid_samples, bid_top_k=min(3, config.bid_samples)),
        shrink=config.shrink,
        max_timesteps=config.max_timesteps, seed=config.seed, video_envs=config.video_envs,
        # Videos come from the evaluation's own rollouts: no extra compile per method.
        video_rows=tuple(f"{m}:{max(config.delays)}" for m in config.video_methods),
    )
    with _stage("5/6 simulated-delay evaluation", timings, "eval"):
        results = sweep.run(eval_config, log=log)

    with _stage("6/6 report and video", timings, "report"):
        report_path = report.write_report(paths["eval"])
        videos = sorted((paths["eval"] / "videos").glob("*.mp4"))

    timings["total"] = round(time.perf_counter() - started, 1)
    written = {"results": results, "report": report_path, "plots": sorted(paths["eval"].glob("*.png")),
               "videos": videos, "experts": paths["experts"], "data": paths["data"], "policy": paths["policy"],
               "policy_rtc": paths["policy_rtc"]}
    summary = {"timings_s": timings, "config": config, "written": written, "results": _headline(results)}
    from rtchunk.files import atomic_write_text, to_jsonable

    atomic_write_text(out / "summary.json", json.dumps(to_jsonable(summary), indent=2, default=str))
    _print_summary(summary, out)
    return written


def _level_name(config: DemoConfig) -> str:
    return Path(config.level).stem


def _headline(results: Path) -> list[dict]:
    with open(results) as f:
        return [{k: row[k] for k in ("method", "d", "s", "solve_rate", "solve_rate_low", "solve_rate_high",
                                     "num_envs", "max_delta_action", "seam_jump_mean")} for row in csv.DictReader(f)]


def _print_summary(summary: dict, out: Path) -> None:
    rows = summary["results"]
    delays = sorted({int(r["d"]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    print("\nSolve rate (first episode of each environment, Wilson 95 % interval), s = max(d, 1):")
    width = 26
    print("method".ljust(16) + "".join(f"d={d}".ljust(width) for d in delays))
    for m in methods:
        cells = []
        for d in delays:
            r = next((r for r in rows if r["method"] == m and int(r["d"]) == d), None)
            cells.append("-" if r is None else
                         f"{float(r['solve_rate']):.2f} [{float(r['solve_rate_low']):.2f}, "
                         f"{float(r['solve_rate_high']):.2f}]")
        print(m.ljust(16) + "".join(c.ljust(width) for c in cells))
    print("\nSeam jump (mean ||a_t - a_(t-1)|| where a new chunk takes over; lower is smoother):")
    print("method".ljust(16) + "".join(f"d={d}".ljust(10) for d in delays))
    for m in methods:
        cells = []
        for d in delays:
            r = next((r for r in rows if r["method"] == m and int(r["d"]) == d), None)
            cells.append("-" if r is None else f"{float(r['seam_jump_mean']):.3f}")
        print(m.ljust(16) + "".join(c.ljust(10) for c in cells))
    t = summary["timings_s"]
    print("\nwall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()))
    w = summary["written"]
    print(f"\nresults CSV:    {w['results']}\nreport (table): {w['report']}")
    for p in w["plots"]:
        print(f"plot:           {p}")
    for p in w["videos"]:
        print(f"video:          {p}")
    print(f"experts, data, policies: {w['experts']}, {w['data']}, {w['policy']}, {w['policy_rtc']}")
    print(f"everything:     {out}")


def main(config: DemoConfig = DemoConfig()) -> int:
    run(config)
    return 0
