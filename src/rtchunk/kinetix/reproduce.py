"""The papers' whole Kinetix protocol over a list of levels (``rtchunk reproduce``), resumable per stage and level.

For every level, in stages (each stage over all levels before the next, so that the expert table of every
level is known early):

1. ``experts``: ``experts.num_seeds`` PPO seeds (``rtchunk.kinetix.expert``). Seeds whose best checkpoint
   reaches ``threshold`` join the data's mixture. With fewer than ``min_experts`` of them, up to
   ``extra_seed_rounds`` more runs of as many new seeds follow; a level that still has too few is
   excluded, loudly, in the log and in the report (never a silent mixture of one expert).
2. ``data``: a mixture of the solving experts, a new expert per episode (``collect.record_datasets``).
3. ``policy``: behaviour cloning (``bc.train_policy``); every epoch is kept, and ``weak_epoch``'s
   checkpoint is BID's weak policy (the papers: an early checkpoint).
4. ``finetune``: training-time RTC, fine-tuned from the BC run's epoch ``finetune.init_epoch``.
5. ``eval``: the simulated-delay sweep (``sweep.run``) at d in ``eval.delays`` with s = max(d, 1), then at
   d = ``horizon_sweep_delay`` with every s (1 .. H - d); both sweeps write one results CSV per level.
6. ``diagnostics``: for the BC, weak and fine-tuned policies, on observations from the level's data:
   how multimodal the chunks are (``rtchunk.diagnostics.chunk_spread``) and how much RTC's guidance (and,
   for the fine-tuned model, the trained prefix) changes the chunk (``guidance_change``), given the naive
   chunk sampled s steps earlier in the same episode, shifted by s, as the previous chunk.

Then the report, per level and pooled over levels: ``rtchunk.kinetix.report``'s plots and tables on all
levels' rows, plus ``summary.md`` (Wilson intervals at d = 0..4 and at d = 1 for every s, seam jumps and max
||Δ²a||, the diagnostics, the expert table, exclusions, the command and seed).

Resuming: every stage function resumes by itself (checkpoints, finished CSV rows); on top, a stage that
finished for a level leaves ``levels/<level>/done/<stage>.json`` and is not called again. ``run.json``
holds the settings (all but the level list), which a resumed run must share. A finished run, run again,
only reads its report back.

Layout::

    <out>/run.json, invocations.txt
    <out>/levels/<level>/experts[_round_R]/      train-expert runs (round 0, then extra seeds)
    <out>/levels/<level>/experts.csv             how far each seed got
    <out>/levels/<level>/data/<level>/           the dataset
    <out>/levels/<level>/policy/<level>/epoch_XXX, policy_rtc/<level>/epoch_XXX
    <out>/levels/<level>/eval/results.csv, diagnostics.csv, done/<stage>.json
    <out>/report/summary.md, report.md, solve_rate_vs_delay.png, solve_rate_vs_horizon.png,
                 results.csv, experts.csv, diagnostics.csv
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Callable, Sequence

from rtchunk.files import atomic_write_text, read_json, to_jsonable, write_json
from rtchunk.kinetix import results
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
        if self.finetune.init_epoch is not None and not 0 <= self.finetune.init_epoch < epochs:
            raise ValueError(f"--finetune.init-epoch must be in [0, --bc.num-epochs - 1 = {epochs - 1}] (0-based), "
                             f"got {self.finetune.init_epoch}")
        if not 0 <= self.weak_epoch < epochs:
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
        if "trained_prefix" in self.eval.methods:
            told = max((*self.eval.delays, *((self.horizon_sweep_delay,) if self.horizon_sweep_delay else ())))
            if told > self.finetune.simulated_delay - 1:
                raise ValueError(f"--finetune.simulated-delay must be > {told} (the largest delay trained_prefix is "
                                 f"evaluated at), got {self.finetune.simulated_delay}")

    @property
    def horizon(self) -> int:
        return self.bc.model.horizon


def resume_key(config: ReproduceConfig) -> dict:
    """The settings every stage's outputs depend on (the level list may grow between runs)."""
    body = to_jsonable(config)
    for volatile in ("levels", "out_dir", "progress"):
        body.pop(volatile)
    for nested in ("experts", "bc", "finetune", "eval"):  # the top-level --progress overrides theirs
        body[nested].pop("progress")
    return body


# -- where things are -----------------------------------------------------------------------------------


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


# -- the stages ------------------------------------------------------------------------------------------


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


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


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


def round_finished(run_dir: Path, settings: TrainerSettings) -> bool:
    """Whether an expert run reached its last update (then it is read, not resumed: no physics to trace)."""
    from rtchunk import checkpoints
    from rtchunk.kinetix import expert

    done = expert.checkpoint_dirs(run_dir)
    return bool(done) and int(checkpoints.load_meta(done[-1])["update"]) >= settings.ppo.num_updates


def run_experts(config: ReproduceConfig, level_file: Path, dirs: LevelDirs, log: Log) -> dict:
    """Expert rounds until ``min_experts`` seeds solve (or the rounds run out); writes experts.csv."""
    import dataclasses as dc

    from rtchunk.kinetix import envs as envs_lib
    from rtchunk.kinetix import expert
    from rtchunk.kinetix import levels as levels_lib

    env_config = dc.replace(envs_lib.EXPERT_ENV, shrink=config.shrink, max_timesteps=config.max_timesteps)
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
        if not round_finished(dirs.experts(r), settings):
            if level is None:
                level = levels_lib.load_level(level_file)
            expert.train_on_levels([level], env_config, settings, dirs.experts(r))
        rows += seed_rows(dirs.experts(r), dirs.name, r, config.threshold)
    _write_csv(dirs.experts_csv, rows, EXPERT_COLUMNS)
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
    return _train(finetune_config(config, dirs), dirs, dirs.policy_rtc)


def weak_checkpoint(config: ReproduceConfig, dirs: LevelDirs) -> Path:
    from rtchunk.kinetix import policy_store

    return policy_store.epoch_dir(dirs.policy, dirs.name, config.weak_epoch)


def eval_configs(config: ReproduceConfig, level_file: Path, dirs: LevelDirs) -> list[EvalConfig]:
    """The level's sweeps: s = max(d, 1) over the delays, then every s at ``horizon_sweep_delay``. They share
    one run directory (same settings; rows are keyed by method, d and s, so the shared point runs once)."""
    methods = config.eval.methods
    base = dataclasses.replace(
        config.eval, levels=(str(level_file),), level_dir=config.level_dir, out=dirs.eval, policy_dir=dirs.policy,
        weak_policy_dir=weak_checkpoint(config, dirs) if "bid" in methods else None,
        trained_prefix_policy_dir=dirs.policy_rtc if "trained_prefix" in methods else None,
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


DIAGNOSTIC_COLUMNS = ("level", "policy", "checkpoint", "metric", "method", "d", "s", "mean", "std", "num_obs")


def diagnostic_points(config: ReproduceConfig) -> list[tuple[int, int]]:
    """(d, s) at which guidance is measured: the sweep's s = max(d, 1) points."""
    return [(d, max(d, 1)) for d in config.eval.delays]


def _observation_pairs(done, num: int, back: int, rng):
    """``num`` (env, t) pairs with t >= back and no episode end among steps t - back .. t - 1 (so the
    observation ``back`` steps earlier belongs to the same episode)."""
    import numpy as np

    e, t = done.shape
    ended = np.concatenate([np.zeros((e, 1), np.int64), np.cumsum(done, axis=1)], axis=1)  # ends before step t
    steps = np.arange(back, t)
    same = ended[:, steps] - ended[:, steps - back] == 0  # [E, T - back]
    env_idx, step_idx = np.nonzero(same)
    if len(env_idx) == 0:
        raise ValueError(f"the dataset has no episode longer than {back} steps")
    pick = rng.choice(len(env_idx), size=num, replace=len(env_idx) < num)
    return env_idx[pick], steps[step_idx[pick]]


def run_diagnostics(config: ReproduceConfig, level_file: Path, dirs: LevelDirs, log: Log) -> dict:
    """Chunk spread and guidance change per policy, on observations from the level's data."""
    import jax
    import numpy as np

    from rtchunk import diagnostics
    from rtchunk.kinetix import dataset, policy_store
    from rtchunk.methods import make_method

    data, _ = dataset.load(dirs.data / dirs.name)
    points = diagnostic_points(config)
    back = max(s for _, s in points)
    env_idx, step_idx = _observation_pairs(data.done, config.diagnostics.num_obs, back,
                                           np.random.default_rng(config.seed))
    obs = data.obs[env_idx, step_idx]
    num_steps = config.eval.num_flow_steps
    policies = {"bc": policy_store.find_checkpoint(dirs.policy, dirs.name), "weak": weak_checkpoint(config, dirs),
                "finetuned_rtc": policy_store.find_checkpoint(dirs.policy_rtc, dirs.name)}
    rtc = make_method("rtc", config.eval.method_settings)
    key = jax.random.key(config.seed)
    rows = []

    def row(policy_name, path, metric, values, method="", d="", s=""):
        values = np.asarray(values)
        rows.append({"level": dirs.name, "policy": policy_name, "checkpoint": str(path), "metric": metric,
                     "method": method, "d": d, "s": s, "mean": float(values.mean()), "std": float(values.std()),
                     "num_obs": int(values.size)})

    for i, (policy_name, path) in enumerate(policies.items()):
        policy, _ = policy_store.load_policy(path)
        k_spread, k_prev, k_change = jax.random.split(jax.random.fold_in(key, i), 3)
        spread = diagnostics.chunk_spread(policy, obs, k_spread, num_samples=config.diagnostics.num_samples,
                                          num_steps=num_steps)
        row(policy_name, path, "chunk_spread", spread)
        methods = [("rtc", rtc)] + ([("trained_prefix", make_method("trained_prefix"))]
                                    if policy_name == "finetuned_rtc" else [])
        for d, s in points:
            # The previous chunk: the naive chunk sampled s steps earlier in the same episode, shifted by s (its
            # entries past the end hold its last action, as the controller would).
            earlier = data.obs[env_idx, step_idx - s]
            chunk = naive_chunks(policy, earlier, jax.random.fold_in(k_prev, s), num_steps)
            prev = np.concatenate([chunk[:, s:], np.repeat(chunk[:, -1:], s, axis=1)], axis=1)
            for method_name, method in methods:
                change = diagnostics.guidance_change(policy, obs, prev, jax.random.fold_in(k_change, d), method,
                                                     inference_delay=d, execute_horizon=s, num_steps=num_steps)
                row(policy_name, path, "guidance_change", change, method_name, d, s)
    _write_csv(dirs.diagnostics, rows, DIAGNOSTIC_COLUMNS)
    return {"rows": len(rows), "spread": {r["policy"]: r["mean"] for r in rows if r["metric"] == "chunk_spread"}}


_NAIVE = {}


def naive_chunks(policy, obs, rng, num_steps: int):
    """[N, H, A] naive chunks for observations [N, O] (numpy)."""
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rtchunk.methods import Naive
    from rtchunk.sampling import sample_chunk

    if "fn" not in _NAIVE:
        def sample(graphdef, params, obs, rng, steps):
            model = nnx.merge(graphdef, params)
            noise = jax.random.normal(rng, (obs.shape[0], model.config.horizon, model.action_dim))
            return sample_chunk(model.velocity_fn(obs), noise, Naive(), num_steps=steps)

        _NAIVE["fn"] = jax.jit(sample, static_argnums=(0, 4))
    graphdef, params = nnx.split(policy)
    return np.asarray(_NAIVE["fn"](graphdef, params, jnp.asarray(obs, jnp.float32), rng, num_steps))


STAGE_FUNCTIONS = {"experts": run_experts, "data": run_data, "policy": run_policy, "finetune": run_finetune,
                   "eval": run_eval, "diagnostics": run_diagnostics}
STAGE_TITLES = {"experts": "PPO experts", "data": "expert data (mixture)", "policy": "flow policy (BC)",
                "finetune": "training-time RTC fine-tune", "eval": "simulated-delay evaluation",
                "diagnostics": "multimodality and guidance diagnostics"}


# -- the protocol --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """The levels of a run, checked (files found, names unique), and what is still to do."""

    config: ReproduceConfig
    level_files: list[Path]

    @property
    def names(self) -> list[str]:
        return [f.stem for f in self.level_files]

    def todo(self) -> list[tuple[str, str]]:
        """(stage, level) pairs not finished yet, leaving out levels an earlier stage excluded."""
        out = []
        for stage in STAGES:
            for name in self.names:
                if stage_record(self.config.out_dir, name, stage) is None:
                    out.append((stage, name))
        return out


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


def excluded(config: ReproduceConfig, name: str) -> str | None:
    """The message of a level the experts stage excluded (None: not excluded, or not decided yet)."""
    record = stage_record(config.out_dir, name, "experts")
    if record and record["summary"].get("excluded"):
        return record["summary"]["message"]
    return None


def run(config: ReproduceConfig, *, command: str = "", log: Log = lambda message: None,
        after_stage: Callable[[str, str], None] | None = None) -> Path:
    """Run (or resume) the protocol; returns the report's summary.md. ``after_stage(stage, level)`` is called
    after each stage finishes for a level (and its record is written); ``command`` goes into the report."""
    from tqdm.auto import tqdm

    checked = plan(config)
    out = Path(config.out_dir)
    todo = checked.todo()
    summary = report_dir(out) / "summary.md"
    report_record = report_dir(out) / "done.json"
    finished = not any(excluded(config, name) is None for stage, name in todo)
    if finished and report_record.is_file() and read_json(report_record, "report record").get("levels") == checked.names:
        return summary  # a finished run: its report is all there is to do

    # Everything is checked: from here on the run writes.
    info = read_json(out / results.RUN_FILE, "run file") if (out / results.RUN_FILE).is_file() else {}
    results.write_run_file(out / results.RUN_FILE, resume_key(config), config=to_jsonable(config),
                           first_command=info.get("first_command", command))
    with open(out / "invocations.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}  {command}\n")
    files = dict(zip(checked.names, checked.level_files))
    for index, stage in enumerate(STAGES):
        names = [n for s, n in todo if s == stage]
        if not names:
            continue
        log(f"\n=== {index + 1}/{len(STAGES)} {STAGE_TITLES[stage]}: {', '.join(names)} ===")
        bar = tqdm(total=len(checked.names), initial=len(checked.names) - len(names), desc=f"{index + 1}/6 {stage}",
                   unit="level", disable=not config.progress, position=0)
        try:
            for name in names:
                dirs = level_dirs(out, name)
                reason = excluded(config, name)
                if reason is not None:
                    log(f"{name}: skipped ({reason})")
                    bar.update()
                    continue
                started = time.perf_counter()
                record = STAGE_FUNCTIONS[stage](config, files[name], dirs, log)
                seconds = round(time.perf_counter() - started, 1)
                write_json(dirs.done(stage), {"stage": stage, "level": name, "seconds": seconds,
                                              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": record})
                log(f"--- {stage} {name}: {seconds:.0f} s")
                bar.update()
                if after_stage is not None:
                    after_stage(stage, name)
        finally:
            bar.close()
    path = write_summary(config, checked.names, files, command)
    write_json(report_record, {"levels": checked.names, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return path


# -- the report --------------------------------------------------------------------------------------------


def _read_all(paths: Sequence[Path], columns=None) -> list[dict]:
    return [row for p in paths for row in results.read_rows(p, columns)]


def _fmt(value: str, digits: int = 3) -> str:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def horizon_table(rates, panel: str, d: int) -> str | None:
    """Rows: methods; columns: every s at delay d (solve rate [Wilson 95 %])."""
    from rtchunk.kinetix import report

    keys = [k for k in rates if k[0] == panel and k[2] == d]
    if not keys:
        return None
    ss = sorted({k[3] for k in keys})
    body = [[m] + [str(rates[(panel, m, d, s)]) if (panel, m, d, s) in rates else "" for s in ss]
            for m in report._method_order({k[1] for k in keys})]
    return report._table(["method"] + [f"s={s}" for s in ss], body)


def smoothness_table(rows: list[dict], levels: list[str]) -> str | None:
    """Rows: methods; columns: d at s = max(d, 1): mean seam jump (mean over levels) / max ||Δ²a|| (max over
    levels)."""
    from rtchunk.kinetix import report

    rows = [r for r in rows if r["profile"] == "fixed" and r["level"] in levels and int(r["s"]) == max(int(r["d"]), 1)]
    if not rows:
        return None
    ds = sorted({int(r["d"]) for r in rows})
    body = []
    for method in report._method_order({r["method"] for r in rows}):
        cells = []
        for d in ds:
            rs = [r for r in rows if r["method"] == method and int(r["d"]) == d]
            seams = [float(r["seam_jump_mean"]) for r in rs if r["seam_jump_mean"] != ""]
            dd = [float(r["max_ddelta_action"]) for r in rs if r["max_ddelta_action"] != ""]
            cells.append(f"{sum(seams) / len(seams):.3f} / {max(dd):.3f}" if seams and dd else "")
        body.append([method] + cells)
    return report._table(["method"] + [f"d={d}, s={max(d, 1)}" for d in ds], body)


def diagnostics_table(rows: list[dict]) -> str | None:
    from rtchunk.kinetix import report

    if not rows:
        return None
    points = sorted({(int(r["d"]), int(r["s"])) for r in rows if r["metric"] == "guidance_change"})
    body = []
    for level in sorted({r["level"] for r in rows}):
        for policy in dict.fromkeys(r["policy"] for r in rows if r["level"] == level):
            mine = [r for r in rows if r["level"] == level and r["policy"] == policy]
            spread = next((r for r in mine if r["metric"] == "chunk_spread"), None)
            for method in dict.fromkeys(r["method"] for r in mine if r["metric"] == "guidance_change"):
                cells = []
                for d, s in points:
                    r = next((r for r in mine if r["method"] == method and (int(r["d"]), int(r["s"])) == (d, s)), None)
                    cells.append("" if r is None else _fmt(r["mean"]))
                body.append([level, policy, _fmt(spread["mean"]) if spread else "", method] + cells)
    return report._table(["level", "policy", "chunk spread", "guidance change of"] + [f"d={d}, s={s}" for d, s in points],
                         body)


def expert_table(rows: list[dict]) -> str | None:
    if not rows:
        return None
    from rtchunk.kinetix import report

    body = [[r["level"], r["round"], r["seed"], _fmt(r["best_solve_rate"], 2), f"{int(r['best_env_steps']):,}",
             f"{int(r['first_env_steps_at_threshold']):,}" if r["first_env_steps_at_threshold"] else "never",
             _fmt(r["final_solve_rate"], 2), "yes" if r["reached_threshold"] == "True" else "no"] for r in rows]
    return report._table(["level", "round", "seed", "best solve rate", "at env step", "first at threshold",
                          "final solve rate", "in the mixture"], body)


def write_summary(config: ReproduceConfig, names: list[str], files: dict[str, Path], command: str) -> Path:
    """The report over every level with results: ``kinetix.report``'s plots and tables on all levels' rows,
    and summary.md around them."""
    from rtchunk.kinetix import report

    out = report_dir(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_info = read_json(Path(config.out_dir) / results.RUN_FILE, "run file")
    exclusions = {n: excluded(config, n) for n in names if excluded(config, n)}
    complete = [n for n in names if n not in exclusions and all(
        stage_record(config.out_dir, n, s) is not None for s in STAGES)]
    incomplete = [n for n in names if n not in exclusions and n not in complete]
    dirs = {n: level_dirs(config.out_dir, n) for n in names}

    expert_rows = _read_all([dirs[n].experts_csv for n in names if dirs[n].experts_csv.is_file()])
    _write_csv(out / "experts.csv", expert_rows, EXPERT_COLUMNS)
    diag_rows = _read_all([dirs[n].diagnostics for n in complete])
    _write_csv(out / "diagnostics.csv", diag_rows, DIAGNOSTIC_COLUMNS)
    eval_rows = _read_all([p for n in complete for p in results.iter_result_files(dirs[n].eval)], results.COLUMNS)
    _write_csv(out / "results.csv", eval_rows, results.COLUMNS)

    parts = ["# Kinetix reproduction", ""]
    if exclusions:
        parts += ["**Levels excluded: too few experts reached the threshold.**", ""]
        parts += [f"- **{message}**" for message in exclusions.values()] + [""]
    if incomplete:
        parts += [f"Not finished yet: {', '.join(incomplete)}.", ""]
    parts += [f"- command: `{run_info.get('first_command') or command}`",
              f"- seed: {config.seed}; settings: `{Path(config.out_dir) / results.RUN_FILE}`",
              f"- levels: {', '.join(f'{n} ({files[n]})' for n in names)}",
              f"- experts: {config.experts.num_seeds} seeds x {config.experts.ppo.total_timesteps:,} steps per round, "
              f"threshold {config.threshold:.2f}, at least {config.min_experts} solving seeds "
              f"(up to {config.extra_seed_rounds} extra round(s)); data: {config.data.steps_per_level:,} transitions; "
              f"BC {config.bc.num_epochs} epochs, training-time RTC {config.finetune.num_epochs} epochs from epoch "
              f"{config.finetune.init_epoch if config.finetune.init_epoch is not None else config.bc.num_epochs - 1} "
              f"(0-based); BID's weak policy: epoch {config.weak_epoch}",
              f"- evaluation: {config.eval.num_envs} environments per point, first episode of each counted; solve "
              f"rates with Wilson 95 % intervals", ""]
    if eval_rows:
        report.write_report(out)
        rates = report.fixed_rates(eval_rows)
        panel = report.AVERAGE if len(complete) > 1 else complete[0]
        title = "pooled over " + ", ".join(complete) if len(complete) > 1 else complete[0]
        parts += ["![solve rate vs delay](solve_rate_vs_delay.png)",
                  "![solve rate vs execute horizon](solve_rate_vs_horizon.png)", "",
                  "Plots and per-level tables: [report.md](report.md); rows: [results.csv](results.csv).", ""]
        table = report.delay_table(rates, panel)
        if table:
            parts += [f"## Solve rate, s = max(d, 1) ({title})", "", table, ""]
        if config.horizon_sweep_delay is not None:
            d1 = config.horizon_sweep_delay
            for p in ([panel] + (complete if len(complete) > 1 else [])):
                table = horizon_table(rates, p, d1)
                if table:
                    parts += [f"## Solve rate at d = {d1}, every s ({p})", "", table, ""]
        table = smoothness_table(eval_rows, complete)
        if table:
            parts += [f"## Mean seam jump / max ||Δ²a|| of executed actions, s = max(d, 1) ({title}: seam jumps "
                      f"averaged, ||Δ²a|| the largest)", "", table, ""]
            if len(complete) > 1:
                for n in complete:
                    parts += [f"### {n}", "", smoothness_table(eval_rows, [n]), ""]
    else:
        parts += ["No level has evaluation results.", ""]
    table = diagnostics_table(diag_rows)
    if table:
        parts += ["## Multimodality and guidance", "",
                  "Chunk spread: mean distance ||a - a'|| over the whole chunk between chunks sampled with different "
                  "noise for the same observation (observations from the data). Guidance change: ||guided chunk - "
                  "naive chunk|| from the same noise, given the naive chunk sampled s steps earlier (shifted by s) "
                  "as the previous chunk. [diagnostics.csv](diagnostics.csv)", "", table, ""]
    table = expert_table(expert_rows)
    if table:
        parts += ["## Experts (how far each seed got)", "", table, "", "[experts.csv](experts.csv)", ""]
    path = out / "summary.md"
    atomic_write_text(path, "\n".join(parts))
    return path
