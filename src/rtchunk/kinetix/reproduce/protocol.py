"""Running the protocol: check a run against its files, then do what is left, resumably."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from rtchunk.files import read_json, to_jsonable, write_json
from rtchunk.kinetix import results
from rtchunk.kinetix.reproduce.config import STAGES, ReproduceConfig, resume_key
from rtchunk.kinetix.reproduce.layout import excluded, level_dirs, report_dir, stage_record
from rtchunk.kinetix.reproduce.stages import STAGE_FUNCTIONS, STAGE_TITLES, Log
from rtchunk.kinetix.reproduce.summary import write_summary


LEVEL_STAGES = STAGES[1:]
"""The stages each level goes through on its own once every level's experts are known."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """The levels of a run, checked (files found, names unique), and what is still to do."""

    config: ReproduceConfig
    level_files: list[Path]

    @property
    def names(self) -> list[str]:
        return [f.stem for f in self.level_files]

    def todo(self) -> list[tuple[str, str]]:
        """(stage, level) pairs not finished yet, in the order they run: the experts of every level first (the
        expert table, and which levels are excluded, are known early), then one level at a time through the
        other stages (each level's results are complete, and reported, before the next level starts)."""
        order = [("experts", name) for name in self.names]
        order += [(stage, name) for name in self.names for stage in LEVEL_STAGES]
        return [(stage, name) for stage, name in order if stage_record(self.config.out_dir, name, stage) is None]


def plan(config: ReproduceConfig) -> Plan:
    """Check a run against the files it reads, without JAX or Kinetix: a ``ValueError`` for anything wrong."""
    from rtchunk.kinetix.levels import level_files

    files = level_files(config.levels, config.level_dir)
    names = [f.stem for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--levels names level(s) {', '.join(twice)} more than once")
    results.check_run_file(Path(config.out_dir) / results.RUN_FILE, resume_key(config))
    return Plan(config, files)


def run(config: ReproduceConfig, *, command: str = "", log: Log = lambda message: None,
        after_stage: Callable[[str, str], None] | None = None) -> Path:
    """Run (or resume) the protocol; returns the report's summary.md, which is rewritten whenever a level
    finishes (so an unfinished run already reports its finished levels). ``after_stage(stage, level)`` is
    called after each stage finishes for a level (and its record is written); ``command`` goes into the
    report."""
    from tqdm.auto import tqdm

    checked = plan(config)
    out = Path(config.out_dir)
    todo = checked.todo()
    summary = report_dir(out) / "summary.md"
    report_record = report_dir(out) / "done.json"
    finished = not any(excluded(out, name) is None for _, name in todo)
    if finished and report_record.is_file() and read_json(report_record, "report record").get("levels") == checked.names:
        return summary  # a finished run: its report is all there is to do

    # Everything is checked: from here on the run writes.
    info = read_json(out / results.RUN_FILE, "run file") if (out / results.RUN_FILE).is_file() else {}
    results.write_run_file(out / results.RUN_FILE, resume_key(config), config=to_jsonable(config),
                           first_command=info.get("first_command", command))
    with open(out / "invocations.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}  {command}\n")
    files = dict(zip(checked.names, checked.level_files))

    def do(stage: str, name: str) -> None:
        reason = excluded(out, name)
        if reason is not None:
            log(f"{name}: {stage} skipped ({reason})")
            return
        dirs = level_dirs(out, name)
        started = time.perf_counter()
        record = STAGE_FUNCTIONS[stage](config, files[name], dirs, log)
        seconds = round(time.perf_counter() - started, 1)
        write_json(dirs.done(stage), {"stage": stage, "level": name, "seconds": seconds,
                                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": record})
        log(f"--- {stage} {name}: {seconds:.0f} s")
        if after_stage is not None:
            after_stage(stage, name)

    groups = [("experts", [n for s, n in todo if s == "experts"])]
    groups += [(name, [s for s, n in todo if n == name and s != "experts"]) for name in checked.names]
    total = len(checked.names)
    for index, (group, items) in enumerate(groups):
        if not items:
            continue
        if group == "experts":
            log(f"\n=== {STAGE_TITLES['experts']}: {', '.join(items)} ===")
            bar = tqdm(total=total, initial=total - len(items), desc="experts", unit="level",
                       disable=not config.progress, position=0)
            with bar:
                for name in items:
                    do("experts", name)
                    bar.update()
            write_summary(config, checked.names, files, command)  # the expert table, before any level's results
            continue
        if excluded(out, group) is not None:
            continue
        log(f"\n=== level {index} of {total}: {group} ({', '.join(STAGE_TITLES[s] for s in items)}) ===")
        bar = tqdm(total=len(LEVEL_STAGES), initial=len(LEVEL_STAGES) - len(items), desc=f"{group}", unit="stage",
                   disable=not config.progress, position=0)
        with bar:
            for stage in items:
                bar.set_postfix_str(stage)
                do(stage, group)
                bar.update()
        write_summary(config, checked.names, files, command)
    path = write_summary(config, checked.names, files, command)
    write_json(report_record, {"levels": checked.names, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return path
