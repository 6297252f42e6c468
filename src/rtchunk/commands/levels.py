"""``rtchunk levels list|show|shrink``: what levels exist, what a level holds, and what shrinking it gives."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Union

import tyro

from rtchunk.kinetix import levels as levels_lib


@dataclasses.dataclass(frozen=True)
class List:
    """List the levels shipped inside kinetix-env and where the paper's 12 come from."""

    level_dir: Path | None = None
    """Also list the level files in this directory."""
    all: bool = False
    """List every packaged level (default: only the large ``l/`` ones)."""


@dataclasses.dataclass(frozen=True)
class Show:
    """Describe levels: slots used, shape roles, motor and thruster bindings."""

    levels: tuple[str, ...] = ("l/h17_unicycle",)
    level_dir: Path | None = None
    json: bool = False

    def __post_init__(self):
        if not self.levels:
            raise ValueError("--levels must name at least one level")


@dataclasses.dataclass(frozen=True)
class Shrink:
    """Slots each level needs after shrinking; with --episodes, measure the shrunk physics' faithfulness."""

    levels: tuple[str, ...] = ("l/h17_unicycle",)
    level_dir: Path | None = None
    episodes: int = 0
    """Open-loop episodes to compare full vs shrunk physics on (0: only count slots)."""
    seed: int = 0

    def __post_init__(self):
        if not self.levels:
            raise ValueError("--levels must name at least one level")
        if not isinstance(self.episodes, int) or self.episodes < 0:
            raise ValueError(f"--episodes must be an integer >= 0, got {self.episodes!r}")


Command = Union[
    Annotated[List, tyro.conf.subcommand("list", prefix_name=False)],
    Annotated[Show, tyro.conf.subcommand("show", prefix_name=False)],
    Annotated[Shrink, tyro.conf.subcommand("shrink", prefix_name=False)],
]


def _list(cmd: List) -> None:
    if cmd.level_dir is not None and not Path(cmd.level_dir).is_dir():
        raise ValueError(f"--level-dir {cmd.level_dir} is not a directory")
    names = levels_lib.list_packaged()
    shown = names if cmd.all else [n for n in names if n.startswith("l/")]
    print(f"kinetix-env levels ({levels_lib.packaged_level_dir()}):")
    for name in shown:
        print(f"  {name}{'   (paper benchmark)' if Path(name).name in levels_lib.PAPER_LEVELS else ''}")
    if not cmd.all:
        print(f"  ... and {len(names) - len(shown)} more in m/ and s/ (--all)")
    missing = [n for n in levels_lib.PAPER_LEVELS if f"l/{n}" not in names]
    print(f"paper levels not shipped with kinetix-env (pass --level-dir with your copies): {', '.join(missing)}")
    if cmd.level_dir is not None:
        files = sorted(Path(cmd.level_dir).glob("*.json"))
        print(f"{cmd.level_dir}: {', '.join(f.stem for f in files) or 'no *.json files'}")


def _show(cmd: Show) -> None:
    out = [levels_lib.describe(lvl) for lvl in levels_lib.load_levels(list(cmd.levels), level_dir=cmd.level_dir)]
    if cmd.json:
        print(json.dumps(out, indent=2))
        return
    for d in out:
        used, slots = d["used"], d["slots"]
        print(f"{d['name']}  ({d['source']})")
        print("  used/slots: " + ", ".join(f"{k} {used[k]}/{slots['num_' + k]}" for k in used))
        print(f"  shape roles: {d['shape_roles']}   motor bindings: {d['motor_bindings']}   "
              f"thruster bindings: {d['thruster_bindings']}")
        print(f"  action_dim {d['action_dim']}, gravity {d['gravity']}, frame_skip {d['frame_skip']}, "
              f"episode {d['max_timesteps']} steps")


def _shrink(cmd: Shrink) -> None:
    from rtchunk.kinetix import shrink

    level_list = levels_lib.load_levels(list(cmd.levels), level_dir=cmd.level_dir)
    for lvl in level_list:
        print(f"{lvl.name}: shrinks to {shrink.used_slots(lvl)} (polygons/circles/joints/thrusters) "
              f"from {shrink.SlotCounts(*(getattr(lvl.static_env_params, f) for f in levels_lib.SLOT_FIELDS))}")
    if len(level_list) > 1:
        print(f"common layout for all of them: {shrink.common_counts(level_list)}")
    if cmd.episodes:
        print(f"faithfulness on {cmd.episodes} random open-loop episodes (same actions, no action noise):")
        for lvl in level_list:
            f = shrink.faithfulness(lvl, episodes=cmd.episodes, seed=cmd.seed)
            print(f"  {f.level}: same outcome {f.outcome_match:.1%}, same outcome and length {f.exact_match:.1%}; "
                  f"solved {f.solved_full:.1%} full vs {f.solved_shrunk:.1%} shrunk, failed {f.failed_full:.1%} vs "
                  f"{f.failed_shrunk:.1%}; positions agree (1e-3) for a median {f.median_agree_steps:.0f} steps")


def main(command: Annotated[Command, tyro.conf.OmitArgPrefixes]) -> int:
    {List: _list, Show: _show, Shrink: _shrink}[type(command)](command)
    return 0
