"""The stages of ``rtchunk reproduce`` for one level, each a thin call of the library function that does
the work (``expert.train_on_levels``, ``collect.record_datasets``, ``bc.train_policy``, ``sweep.run``) with the
level's directories and the run's seed; each returns the record its ``done/<stage>.json`` keeps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from rtchunk.kinetix import results
from rtchunk.kinetix.bc import BCConfig
from rtchunk.kinetix.reproduce.config import ReproduceConfig
from rtchunk.kinetix.reproduce.layout import LevelDirs
from rtchunk.kinetix.sweep import EvalConfig

Log = Callable[[str], None]


def _banner(message: str) -> str:
    bar = "!" * 78
    return f"{bar}\n{message}\n{bar}"


def seed_rows(run_dir: Path, level: str, round_index: int, threshold: float) -> list[dict]:
    """How far each seed of an expert run got on ``level``: best solve rate (the checkpoint data would use:
    ties go to the later one) and at which step, the first step at the threshold, the last solve rate."""
    stats = results.read_rows(Path(run_dir) / "stats.csv")
    by_seed: dict[int, list[dict]] = {}
    for row in stats:
        if row["level"] == level:
            by_seed.setdefault(int(row["seed"]), []).append(row)
    out = []
    for seed, rows in sorted(by_seed.items()):
        rows.sort(key=lambda r: int(r["update"]))
        rates = [float(r["solve_rate"]) for r in rows]
        best = max(range(len(rows)), key=lambda i: (rates[i], i))
        first = next((i for i, r in enumerate(rates) if r >= threshold), None)
        out.append({
            "level": level, "round": round_index, "seed": seed, "run": str(run_dir),
            "best_solve_rate": rates[best], "best_env_steps": int(rows[best]["env_steps"]),
            "first_env_steps_at_threshold": "" if first is None else int(rows[first]["env_steps"]),
            "final_solve_rate": rates[-1], "final_env_steps": int(rows[-1]["env_steps"]),
            "checkpoints": len(rows), "reached_threshold": rates[best] >= threshold,
        })
    return out


EXPERT_COLUMNS = ("level", "round", "seed", "run", "best_solve_rate", "best_env_steps",
                  "first_env_steps_at_threshold", "final_solve_rate", "final_env_steps", "checkpoints",
                  "reached_threshold")


def _expert_runs(config: ReproduceConfig, dirs: LevelDirs) -> list[Path]:
    """The expert runs a level has so far (round 0 first)."""
    runs = []
    for r in range(1 + config.extra_seed_rounds):
        if (dirs.experts(r) / results.RUN_FILE).is_file():
            runs.append(dirs.experts(r))
    return runs


def pooled_selection(config: ReproduceConfig, dirs: LevelDirs) -> list[dict]:
    """The solving seeds of all of a level's expert runs (``expert.select_experts`` entries)."""
    from rtchunk.kinetix import expert

    chosen = []
    for run in _expert_runs(config, dirs):
        if expert.checkpoint_dirs(run):
            chosen += expert.select_experts(run, config.threshold).get(dirs.name, [])
    return chosen


def run_experts(config: ReproduceConfig, level_file: Path, dirs: LevelDirs, log: Log) -> dict:
    """Expert rounds until ``min_experts`` seeds solve (or the rounds run out); writes experts.csv."""
    import dataclasses as dc

    from rtchunk.kinetix import expert
    from rtchunk.kinetix import levels as levels_lib

    env_config = expert.expert_env(config.experts, shrink=config.shrink, max_timesteps=config.max_timesteps)
    level = None
    rows: list[dict] = []
    for r in range(1 + config.extra_seed_rounds):
        solving = sum(row["reached_threshold"] for row in rows)
        if solving >= config.min_experts:
            break
        if r > 0:
            log(f"{dirs.name}: {solving} of {len(rows)} seeds reached solve rate {config.threshold:.2f} (needs "
                f"{config.min_experts}): training {config.experts.num_seeds} more (round {r})")
        settings = dc.replace(config.experts, seed=config.seed + 1000 * r, progress=config.progress)
        if settings.stop_at_solve_rate is not None:  # stop once the level has enough experts, not all
            settings = dc.replace(settings, stop_at_solved_seeds=min(settings.num_seeds, config.min_experts - solving))
        if not expert.run_finished(dirs.experts(r), settings):  # else read it: no physics to trace
            if level is None:
                level = levels_lib.load_level(level_file)
            expert.train_on_levels([level], env_config, settings, dirs.experts(r))
        rows += seed_rows(dirs.experts(r), dirs.name, r, config.threshold)
    results.write_rows(dirs.experts_csv, rows, EXPERT_COLUMNS)
    solving = sum(row["reached_threshold"] for row in rows)
    record = {"seeds": len(rows), "solving": solving, "threshold": config.threshold,
              "min_experts": config.min_experts, "excluded": solving < config.min_experts}
    if record["excluded"]:
        best = ", ".join(f"{row['best_solve_rate']:.2f}" for row in rows)
        record["message"] = (f"level {dirs.name}: only {solving} of {len(rows)} seeds reached {config.threshold:.2f}: "
                             f"excluded (best solve rate per seed: {best})")
        log(_banner("EXCLUDED: " + record["message"]))
    else:
        log(f"{dirs.name}: {solving} of {len(rows)} seeds reached solve rate {config.threshold:.2f}")
    return record


def run_data(config: ReproduceConfig, level_file: Path, dirs: LevelDirs, log: Log) -> dict:
    from rtchunk.kinetix import collect

    chosen = pooled_selection(config, dirs)
    summary = collect.record_datasets(
        dirs.experts(0), dirs.data, steps_per_level=config.data.steps_per_level, num_envs=config.data.num_envs,
        threshold=config.threshold, level_dir=config.level_dir, seed=config.seed, progress=config.progress,
        log=log, selection={dirs.name: chosen})
    return summary[dirs.name]


def bc_config(config: ReproduceConfig, dirs: LevelDirs) -> BCConfig:
    return dataclasses.replace(config.bc, data_dir=dirs.data, out_dir=dirs.policy, seed=config.seed,
                               progress=config.progress)


def finetune_config(config: ReproduceConfig, dirs: LevelDirs) -> BCConfig:
    return dataclasses.replace(config.finetune, data_dir=dirs.data, out_dir=dirs.policy_rtc, init_from=dirs.policy,
                               model=config.bc.model, seed=config.seed + 1, progress=config.progress)


def _train(bc_settings: BCConfig, dirs: LevelDirs, out: Path) -> dict:
    from rtchunk.kinetix import bc, policy_store

    bc.train_policy(bc_settings)
    last = policy_store.last_epoch(out, dirs.name)
    return {"checkpoint": str(policy_store.epoch_dir(out, dirs.name, last)), "epochs": last + 1}


def run_policy(config: ReproduceConfig, level_file: Path, dirs: LevelDirs, log: Log) -> dict:
    return _train(bc_config(config, dirs), dirs, dirs.policy)


def run_finetune(config: ReproduceConfig, level_file: Path, dirs: LevelDirs, log: Log) -> dict:
    if not config.fine_tunes:
        log(f"{dirs.name}: no training-time-RTC fine-tune (trained_prefix is not among --eval.methods)")
        return {"skipped": "trained_prefix is not evaluated"}
    return _train(finetune_config(config, dirs), dirs, dirs.policy_rtc)


def weak_checkpoint(config: ReproduceConfig, dirs: LevelDirs) -> Path:
    from rtchunk.kinetix import policy_store

    return policy_store.epoch_dir(dirs.policy, dirs.name, config.weak_epoch)


def eval_configs(config: ReproduceConfig, level_file: Path, dirs: LevelDirs) -> list[EvalConfig]:
    """The level's sweeps: s = max(d, 1) over the delays, then every s at ``horizon_sweep_delay``. They share
    one run directory (same settings; rows are keyed by method, d and s, so the shared point runs once)."""
    base = dataclasses.replace(
        config.eval, levels=(str(level_file),), level_dir=config.level_dir, out=dirs.eval, policy_dir=dirs.policy,
        weak_policy_dir=weak_checkpoint(config, dirs) if config.uses_weak_policy else None,
        trained_prefix_policy_dir=dirs.policy_rtc if config.fine_tunes else None,
        shrink=config.shrink, max_timesteps=config.max_timesteps, seed=config.seed, progress=config.progress)
    sweeps = [dataclasses.replace(base, shortest_horizon_only=True)]
    if config.horizon_sweep_delay is not None:
        sweeps.append(dataclasses.replace(base, delays=(config.horizon_sweep_delay,)))
    return sweeps


def run_eval(config: ReproduceConfig, level_file: Path, dirs: LevelDirs, log: Log) -> dict:
    from rtchunk.kinetix import sweep

    path = None
    for sweep_config in eval_configs(config, level_file, dirs):
        path = sweep.run(sweep_config, log=log)
    return {"results": str(path), "rows": len(results.read_rows(path, results.COLUMNS))}


def run_diagnostics(config: ReproduceConfig, level_file: Path, dirs: LevelDirs, log: Log) -> dict:
    from rtchunk.kinetix.reproduce import diagnose

    return diagnose.run_diagnostics(config, dirs, weak_checkpoint(config, dirs))


STAGE_FUNCTIONS = {"experts": run_experts, "data": run_data, "policy": run_policy, "finetune": run_finetune,
                   "eval": run_eval, "diagnostics": run_diagnostics}
STAGE_TITLES = {"experts": "PPO experts", "data": "expert data (mixture)", "policy": "flow policy (BC)",
                "finetune": "training-time RTC fine-tune", "eval": "simulated-delay evaluation",
                "diagnostics": "multimodality and guidance diagnostics"}


