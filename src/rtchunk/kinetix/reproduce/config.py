"""The settings of ``rtchunk reproduce``: one frozen config nesting every stage's own config, checked once, and
the part of it a resumed run must share."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rtchunk.files import to_jsonable
from rtchunk.kinetix.bc import BCConfig
from rtchunk.kinetix.expert import TrainerSettings
from rtchunk.kinetix.paper import EPISODE_STEPS, PAPER_LEVELS
from rtchunk.kinetix.sweep import EvalConfig

STAGES = ("experts", "data", "policy", "finetune", "eval", "diagnostics")
PAPER_METHODS = ("naive", "rtc", "hard_mask", "bid", "temporal_ensembling", "trained_prefix")
"""The methods of the papers' Figure 5."""
PER_LEVEL = Path("(set per level by rtchunk reproduce)")
"""The directories of the nested stage configs: each stage's are set per level."""

# Fields of the nested stage configs that tie the stages together: reproduce sets them (per level, or from
# its own --seed, --shrink, ...), so a value given for one is an error rather than silently replaced.
_BC_FIXED = ("data_dir", "out_dir", "levels", "init_from", "seed")
_EVAL_FIXED = ("levels", "level_dir", "out", "execute_horizons", "shortest_horizon_only", "policy_dir",
               "weak_policy_dir", "trained_prefix_policy_dir", "model", "shrink", "max_timesteps", "seed", "shard")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The expert data of each level (``rtchunk generate-data``'s sizes)."""

    steps_per_level: int = 1_000_000
    num_envs: int = 1024

    def __post_init__(self):
        for name in ("steps_per_level", "num_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class DiagnosticsSettings:
    """How the multimodality and guidance figures are measured."""

    num_obs: int = 1024
    """Observations drawn from the level's data (at least H steps into an episode)."""
    num_samples: int = 8
    """Chunks per observation for the spread (all pairs are compared)."""

    def __post_init__(self):
        if self.num_obs < 1:
            raise ValueError(f"num_obs must be >= 1, got {self.num_obs}")
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 (pairs of samples), got {self.num_samples}")


def _default_bc() -> BCConfig:
    return BCConfig(data_dir=PER_LEVEL, out_dir=PER_LEVEL)


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """The protocol's settings; defaults are the papers' (``--preset paper``)."""

    out_dir: Path = Path("runs/reproduce")
    levels: tuple[str, ...] = PAPER_LEVELS
    """Level names or files (names are looked up in --level-dir, then in kinetix-env); more can be added to a
    run later: each level's stages are its own."""
    level_dir: Path | None = None
    """Your copies of the papers' level files (four of the 12 do not ship with kinetix-env)."""
    shrink: bool = False
    """Simulate every level compacted to its used slots, in every stage (faster; see `rtchunk levels shrink`)."""
    max_timesteps: int = EPISODE_STEPS
    seed: int = 0
    """The one seed every stage derives its own from (expert round r: seed + 1000 r; fine-tune: seed + 1)."""
    experts: TrainerSettings = TrainerSettings()
    """PPO experts per level (the papers: 8 seeds x 65M steps); --experts.seed is set from --seed."""
    threshold: float = 0.65
    """A seed whose best checkpoint reaches this solve rate joins the data's mixture (the papers: 0.65)."""
    min_experts: int = 4
    """Fewer solving seeds than this: train more (--extra-seed-rounds), then exclude the level."""
    extra_seed_rounds: int = 1
    """At most this many more expert runs of --experts.num-seeds new seeds for a level short of experts."""
    data: DataSettings = DataSettings()
    bc: BCConfig = dataclasses.field(default_factory=_default_bc)
    """Behaviour cloning (the papers: the 256x4 MLP-Mixer, 32 epochs); directories and seed are set per level."""
    finetune: BCConfig = dataclasses.field(default_factory=lambda: dataclasses.replace(
        _default_bc(), num_epochs=8, init_epoch=23, simulated_delay=5))
    """Training-time RTC, from the BC run's epoch --finetune.init-epoch (the papers: 8 epochs from epoch 24,
    delays 0..4); its model is the BC policy's (--finetune.model is not used)."""
    weak_epoch: int = 3
    """The BC epoch (0-based) whose checkpoint is BID's weak policy."""
    eval: EvalConfig = EvalConfig(methods=PAPER_METHODS)
    """The sweep's methods, delays (s = max(d, 1)), environments and method settings; levels, policies,
    directories and the execute horizons are set per level."""
    horizon_sweep_delay: int | None = 1
    """Also evaluate every s = 1 .. H - d at this delay (the papers' Figure 5, bottom left); None: skip."""
    diagnostics: DiagnosticsSettings = DiagnosticsSettings()
    progress: bool = True

    def __post_init__(self):
        if not self.levels:
            raise ValueError("--levels must name at least one level")
        if self.max_timesteps < 1:
            raise ValueError(f"--max-timesteps must be >= 1, got {self.max_timesteps}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.extra_seed_rounds < 0:
            raise ValueError(f"--extra-seed-rounds must be >= 0, got {self.extra_seed_rounds}")
        most = self.experts.num_seeds * (1 + self.extra_seed_rounds)
        if not 1 <= self.min_experts <= most:
            raise ValueError(f"--min-experts must be in [1, {most}] (--experts.num-seeds x (1 + --extra-seed-rounds)), "
                             f"got {self.min_experts}")
        if self.experts.compact_obs and not self.shrink:
            raise ValueError("--experts.compact-obs observes the shrunk level: it needs --shrink")
        stop = self.experts.stop_at_solve_rate
        if stop is not None and stop < self.threshold:
            raise ValueError(f"--experts.stop-at-solve-rate must be in [--threshold = {self.threshold}, 1] or None "
                             f"(it would stop before the seeds qualify), got {stop}")
        if self.experts.stop_at_solved_seeds is not None:
            raise ValueError("--experts.stop-at-solved-seeds is set by rtchunk reproduce (each round stops once the "
                             "level has --min-experts solving seeds); leave it out")
        if self.experts.seed != TrainerSettings().seed:
            raise ValueError("--experts.seed is set from --seed by rtchunk reproduce; leave it out")
        template = _default_bc()
        for prefix, cfg in (("bc", self.bc), ("finetune", self.finetune)):
            for name in _BC_FIXED:
                if getattr(cfg, name) != getattr(template, name):
                    raise ValueError(f"--{prefix}.{name.replace('_', '-')} is set by rtchunk reproduce; leave it out")
        if self.bc.simulated_delay is not None:
            raise ValueError("--bc.simulated-delay must be None: the BC policy is plain (training-time RTC is "
                             "--finetune)")
        if self.bc.init_epoch is not None:
            raise ValueError("--bc.init-epoch must be None: the BC policy starts from scratch")
        if self.finetune.simulated_delay is None:
            raise ValueError("--finetune.simulated-delay must be set (training-time RTC: delays 0..D-1)")
        epochs = self.bc.num_epochs
        # The fine-tune's start and BID's weak policy are checked only where the sweep uses them.
        if self.fine_tunes and self.finetune.init_epoch is not None and not 0 <= self.finetune.init_epoch < epochs:
            raise ValueError(f"--finetune.init-epoch must be in [0, --bc.num-epochs - 1 = {epochs - 1}] (0-based), "
                             f"got {self.finetune.init_epoch}")
        if self.uses_weak_policy and not 0 <= self.weak_epoch < epochs:
            raise ValueError(f"--weak-epoch must be in [0, --bc.num-epochs - 1 = {epochs - 1}] (0-based), "
                             f"got {self.weak_epoch}")
        eval_template = EvalConfig()
        for name in _EVAL_FIXED:
            if getattr(self.eval, name) != getattr(eval_template, name):
                raise ValueError(f"--eval.{name.replace('_', '-')} is set by rtchunk reproduce; leave it out")
        horizon = self.bc.model.horizon
        if not self.eval.delays:
            raise ValueError("--eval.delays must name at least one delay")
        if max(self.eval.delays) > horizon // 2:
            raise ValueError(f"--eval.delays must be <= H/2 = {horizon // 2} (s = max(d, 1) and d <= H - s), got "
                             f"{max(self.eval.delays)}")
        if self.horizon_sweep_delay is not None and not 0 <= self.horizon_sweep_delay <= horizon - 1:
            raise ValueError(f"--horizon-sweep-delay must be in [0, H - 1 = {horizon - 1}] or None, got "
                             f"{self.horizon_sweep_delay}")
        if self.fine_tunes:
            told = max((*self.eval.delays, *((self.horizon_sweep_delay,) if self.horizon_sweep_delay else ())))
            if told > self.finetune.simulated_delay - 1:
                raise ValueError(f"--finetune.simulated-delay must be > {told} (the largest delay trained_prefix is "
                                 f"evaluated at), got {self.finetune.simulated_delay}")

    @property
    def horizon(self) -> int:
        return self.bc.model.horizon

    @property
    def fine_tunes(self) -> bool:
        """Whether the fine-tune stage trains (only trained_prefix evaluates its model)."""
        return "trained_prefix" in self.eval.methods

    @property
    def uses_weak_policy(self) -> bool:
        """Whether BID's weak policy (BC epoch ``weak_epoch``) is evaluated."""
        return "bid" in self.eval.methods


def resume_key(config: ReproduceConfig) -> dict:
    """The settings every stage's outputs depend on (the level list may grow between runs)."""
    body = to_jsonable(config)
    for volatile in ("levels", "out_dir", "progress"):
        body.pop(volatile)
    for nested in ("experts", "bc", "finetune", "eval"):  # the top-level --progress overrides theirs
        body[nested].pop("progress")
    return body

