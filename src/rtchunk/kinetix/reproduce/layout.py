"""Where a reproduction run keeps each level's stages, and what a finished stage left behind."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rtchunk.files import read_json


@dataclasses.dataclass(frozen=True)
class LevelDirs:
    root: Path
    name: str

    def experts(self, round_index: int) -> Path:
        return self.root / ("experts" if round_index == 0 else f"experts_round_{round_index}")

    @property
    def experts_csv(self) -> Path:
        return self.root / "experts.csv"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def policy(self) -> Path:
        return self.root / "policy"

    @property
    def policy_rtc(self) -> Path:
        return self.root / "policy_rtc"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def diagnostics(self) -> Path:
        return self.root / "diagnostics.csv"

    def done(self, stage: str) -> Path:
        return self.root / "done" / f"{stage}.json"


def level_dirs(out_dir: Path, name: str) -> LevelDirs:
    return LevelDirs(Path(out_dir) / "levels" / name, name)


def stage_record(out_dir: Path, name: str, stage: str) -> dict | None:
    """What a finished stage of a level left behind (None: not finished)."""
    path = level_dirs(out_dir, name).done(stage)
    return read_json(path, "stage record") if path.is_file() else None


def report_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "report"


def excluded(out_dir: Path, name: str) -> str | None:
    """The message of a level the experts stage excluded (None: not excluded, or not decided yet)."""
    record = stage_record(out_dir, name, "experts")
    if record and record["summary"].get("excluded"):
        return record["summary"]["message"]
    return None
