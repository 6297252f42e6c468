"""The toy-size reproduction run that tests/test_kinetix_reproduce.py checks (``reproduce_smoke_run`` in
conftest.py, one run for the session): interrupted after the data stage, then resumed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

LEVEL = "h17_unicycle"


class Interrupt(KeyboardInterrupt):
    pass


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    """Every file below ``root`` with its modification time and size."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()}


def smoke_config(out: Path):
    from rtchunk.commands.reproduce import PRESETS

    return dataclasses.replace(PRESETS["smoke"], progress=False, out_dir=out)


def interrupted_then_resumed(out: Path):
    """(out, summary, stages finished before the interruption, experts+data files before and after the resumed
    run, the two runs' logs)."""
    from rtchunk.kinetix import reproduce

    config = smoke_config(out)

    def stop_after_data(stage, level):
        if stage == "data":
            raise Interrupt

    first_log: list[str] = []
    try:
        reproduce.run(config, command="rtchunk reproduce --preset smoke", log=first_log.append,
                      after_stage=stop_after_data)
    except Interrupt:
        pass
    else:
        raise AssertionError("the run was not interrupted")
    finished_stages = {s for s in reproduce.STAGES if reproduce.stage_record(out, LEVEL, s)}
    dirs = reproduce.level_dirs(out, LEVEL)
    before = {**snapshot(dirs.experts(0)), **snapshot(dirs.data)}
    second_log: list[str] = []
    summary = reproduce.run(config, command="rtchunk reproduce --preset smoke", log=second_log.append)
    after = {**snapshot(dirs.experts(0)), **snapshot(dirs.data)}
    return out, summary, finished_stages, before, after, first_log, second_log
