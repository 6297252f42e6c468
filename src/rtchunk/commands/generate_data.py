"""``rtchunk generate-data``: record expert data for behaviour cloning, one dataset per level
(``rtchunk.kinetix.collect.record_datasets``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rtchunk.files import write_json
from rtchunk.kinetix import parallel


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
    max_experts: int | None = None
    """Use at most this many of the solving experts per level (default: all; the papers: 8)."""
    seed: int = 0
    progress: bool = True
    distributed: parallel.DistributedConfig = parallel.DistributedConfig()

    def __post_init__(self):
        for flag, value in (("--steps-per-level", self.steps_per_level), ("--num-envs", self.num_envs)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.max_experts is not None and self.max_experts < 1:
            raise ValueError(f"--max-experts must be >= 1 (or left out: all), got {self.max_experts}")

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else Path(self.expert_dir) / "data"


PRESETS = {
    "paper": GenerateConfig(),
    "cpu": GenerateConfig(steps_per_level=100_000, num_envs=256),
}


def main(config: GenerateConfig) -> int:
    from rtchunk.kinetix.collect import record_datasets

    parallel.initialize(config.distributed)
    out = config.output_dir
    report = record_datasets(config.expert_dir, out, steps_per_level=config.steps_per_level, num_envs=config.num_envs,
                             threshold=config.threshold, level_dir=config.level_dir, seed=config.seed,
                             max_experts=config.max_experts,
                             progress=config.progress, log=print)
    sub = parallel.process_subdir()
    write_json(out / f"summary{'_' + sub if sub else ''}.json", report)
    print(f"datasets: {out}")
    return 0
