"""The simulated-delay sweep behind ``rtchunk eval``: levels x methods x delays x execute horizons, one CSV
row each, resumable.

``EvalConfig`` holds the settings (checked when it is built); ``run`` first checks everything that can be
checked without starting JAX or Kinetix (level files, checkpoints, the grid against the policy's chunk
horizon, an existing run in the output directory), then loads the levels and policies, and only then
writes: ``<out>/run.json`` (the settings a resumed sweep must match) and one row of
``<out>/results.csv`` per finished configuration (``rtchunk.kinetix.results``). A rerun skips the rows
already there, so an interrupted sweep resumes where it stopped; ``shard='i/n'`` evaluates every n-th
row only (for several processes or machines), writing ``results.shard-i-of-n.csv``.

Policies: ``policy_dir`` is anything ``rtchunk.kinetix.policy_store`` finds a checkpoint in. Without it
the sweep evaluates a randomly initialised policy and says so loudly: that only exercises the pipeline.
Environments are sharded over all JAX devices (``rtchunk`` asks XLA for 2 CPU devices).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from rtchunk import delays as delays_lib
from rtchunk.files import to_jsonable
from rtchunk.kinetix import grid as grid_lib
from rtchunk.kinetix import policy_store, results
from rtchunk.kinetix.paper import EPISODE_STEPS, PAPER_LEVELS
from rtchunk.methods import DEFAULT_NUM_STEPS, METHOD_NAMES, MethodSettings, TrainedPrefix, check_method_names
from rtchunk.methods import execution as method_execution
from rtchunk.methods import told_delay_bound
from rtchunk.model_config import ModelConfig

DEFAULT_METHODS = tuple(m for m in METHOD_NAMES if m != "trained_prefix")
"""Every method that runs on a plain BC policy (trained_prefix needs a model trained for it)."""
RANDOM_INIT = "random-init"


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    levels: tuple[str, ...] = PAPER_LEVELS
    """Level files, directories or names (names are looked up in --level-dir, then inside kinetix-env)."""
    level_dir: Path | None = None
    """Directory holding your copies of the level files (e.g. the paper's 12)."""
    out: Path = Path("runs/eval")
    """Run directory: results.csv, run.json, videos/."""
    methods: tuple[str, ...] = DEFAULT_METHODS
    """Any of: naive rtc rtc_linear hard_mask jacobian_free bid temporal_ensembling trained_prefix."""
    delays: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Fixed delays d for the 'fixed' profile."""
    execute_horizons: tuple[int, ...] = ()
    """Execute horizons s; empty = the papers' grid s = max(d, 1) .. H - d."""
    shortest_horizon_only: bool = False
    """With an empty --execute-horizons, evaluate only s = max(d, 1) for each d (the papers' headline plot)."""
    profiles: tuple[str, ...] = ("fixed",)
    """'fixed' (uses --delays), or a stochastic profile spec (see rtchunk.kinetix.grid.parse_profile)."""
    estimator: delays_lib.DelayEstimator = delays_lib.MaxEstimator()
    """What the sampler is told, per environment, from the delays it observed (default: the max of the last 10)."""
    initial_estimate: int | None = None
    """Delay estimate before any delay was observed (default: the profile's median)."""
    num_envs: int = 2048
    num_flow_steps: int = DEFAULT_NUM_STEPS
    policy_dir: Path | None = None
    """Checkpoint (or directory of per-level checkpoints, or a train-policy run); empty = a randomly
    initialised policy."""
    weak_policy_dir: Path | None = None
    """BID's weak policy (optional; same layout as --policy-dir)."""
    trained_prefix_policy_dir: Path | None = None
    """Policy for the trained_prefix rows: a model fine-tuned with training-time RTC (same layout as
    --policy-dir; default: --policy-dir itself)."""
    model: ModelConfig = ModelConfig()
    """Model sizes for the randomly initialised policy (ignored with --policy-dir)."""
    method_settings: MethodSettings = MethodSettings()
    """The methods' knobs: guidance weight, BID's N and K, temporal ensembling's decay."""
    shrink: bool = False
    """Simulate levels compacted to their used slots (faster, not bit-identical: see rtchunk levels shrink)."""
    max_timesteps: int = EPISODE_STEPS
    seed: int = 0
    shard: str = ""
    """'i/n': evaluate only rows i, i+n, i+2n, ... (0-based)."""
    video_envs: int = 0
    """Write an mp4 of this many environments for every row (videos/)."""
    video_rows: tuple[str, ...] = ()
    """With --video-envs: only rows matching one of these 'method' or 'method:d' entries get a video
    (empty: every row). Recording stays on for every row, so no row compiles a second rollout."""
    fast_compile: bool = False
    """Compile without XLA optimisation: much faster compiles, slower steps (smoke runs)."""
    progress: bool = True

    def __post_init__(self):
        if not self.levels:
            raise ValueError("levels must name at least one level")
        if not self.methods:
            raise ValueError("methods must name at least one method")
        check_method_names(self.methods, "--methods")
        for d in self.delays:
            _check_int("delays", d, 0)
        for s in self.execute_horizons:
            _check_int("execute_horizons", s, 1)
        if not self.profiles:
            raise ValueError("profiles must name at least one profile ('fixed' for the --delays grid)")
        for spec in self.profiles:
            if spec != "fixed":
                try:
                    grid_lib.parse_profile(spec)
                except ValueError as e:
                    raise ValueError(f"--profiles: {e}") from None
        if self.initial_estimate is not None:
            _check_int("initial_estimate", self.initial_estimate, 0)
        _check_int("num_envs", self.num_envs, 1)
        _check_int("num_flow_steps", self.num_flow_steps, 1)
        _check_int("max_timesteps", self.max_timesteps, 1)
        _check_int("video_envs", self.video_envs, 0)
        results.parse_shard(self.shard)
        for entry in self.video_rows:
            method, _, d = entry.partition(":")
            check_method_names(method, "--video-rows")
            if d and not d.isdigit():
                raise ValueError(f"video_rows must hold 'method' or 'method:d' entries, got {entry!r}")


def wants_video(video_rows: tuple[str, ...], method: str, d: str) -> bool:
    """Whether a row (method, d as written in the CSV) is selected by ``video_rows``."""
    return not video_rows or method in video_rows or f"{method}:{d}" in video_rows


# -- what a sweep will run: checked before JAX or Kinetix start -------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sweep, checked: level files, each level's checkpoints, the grid, the rows still to do."""

    config: EvalConfig
    level_files: list[Path]
    policies: dict[str, list[policy_store.PolicyInfo | None]]  # "policy" / "weak" / "trained_prefix" -> per level
    horizon: int
    points: list[grid_lib.GridPoint]
    path: Path
    todo: list[tuple[tuple[str, ...], str, grid_lib.GridPoint, int]]  # (row key, method, point, level index)
    done: set[tuple[str, ...]]

    @property
    def names(self) -> list[str]:
        return [f.stem for f in self.level_files]

    @property
    def remaining(self):
        return [t for t in self.todo if t[0] not in self.done]


def _describe_all(directory: Path | None, names: list[str]) -> list[policy_store.PolicyInfo | None]:
    if directory is None:
        return [None] * len(names)
    return [policy_store.describe(policy_store.find_checkpoint(directory, name)) for name in names]


def _max_told(point: grid_lib.GridPoint, horizon: int, initial: int | None) -> int:
    """The largest delay trained_prefix may be told at this grid point."""
    top = delays_lib.max_delay(point.profile)
    if initial is not None:
        top = max(top, initial)
    return min(top, told_delay_bound(TrainedPrefix(), horizon, point.s))


def check_trained_prefix(policy: policy_store.PolicyInfo | None, level: str, points: list[grid_lib.GridPoint],
                         horizon: int, initial: int | None) -> None:
    """TrainedPrefix only makes sense at delays the model was trained with: fail early and clearly."""
    if policy is None:  # a random policy: the pipeline is exercised, no claim is made
        return
    limit = policy.trained_max_delay
    if limit is None:
        raise ValueError(
            f"trained_prefix needs a model trained with prefix conditioning; {policy.path} (level {level}) "
            f"has no 'training_delays' in its meta.json"
        )
    for p in points:
        told = _max_told(p, horizon, initial)
        if told > limit:
            raise ValueError(
                f"trained_prefix at level {level}, profile {p.profile_name}, d={p.d}, s={p.s} may be told a delay "
                f"of {told}, beyond the checkpoint's trained max_delay={limit} ({policy.path}); "
                f"restrict --delays/--profiles (e.g. a tail cap) or use a model trained for longer delays"
            )


def _estimator_key(estimator) -> dict:
    return {type(estimator).__name__: to_jsonable(estimator)}


def resume_key(config: EvalConfig, horizon: int) -> dict:
    """The settings a resumed sweep must share with the rows already written."""
    keys = ("num_envs", "num_flow_steps", "policy_dir", "weak_policy_dir", "trained_prefix_policy_dir",
            "method_settings", "shrink", "max_timesteps", "seed", "initial_estimate", "level_dir")
    out = {k: to_jsonable(getattr(config, k)) for k in keys}
    out["estimator"] = _estimator_key(config.estimator)
    if config.policy_dir is None:
        out["model"] = to_jsonable(config.model)
    out["horizon"] = horizon
    return out


def plan(config: EvalConfig) -> Plan:
    """Check a sweep against the files it reads, without JAX or Kinetix: a ``ValueError`` for anything wrong."""
    from rtchunk.kinetix.levels import level_files

    files = level_files(config.levels, config.level_dir)
    names = [f.stem for f in files]
    policies = {"policy": _describe_all(config.policy_dir, names), "weak": _describe_all(config.weak_policy_dir, names)}
    policies["trained_prefix"] = (policies["policy"] if config.trained_prefix_policy_dir is None
                                  else _describe_all(config.trained_prefix_policy_dir, names))
    horizons = {p.model.horizon for group in policies.values() for p in group if p is not None}
    if config.policy_dir is None:
        horizons.add(config.model.horizon)
    if len(horizons) != 1:
        raise ValueError(f"all policies (--policy-dir, --weak-policy-dir, --trained-prefix-policy-dir) must share "
                         f"one chunk horizon, got {sorted(horizons)}")
    horizon = horizons.pop()
    for weak, strong in zip(policies["weak"], policies["policy"]):
        if weak is not None and weak.model != (config.model if strong is None else strong.model):
            raise ValueError(f"the weak policy {weak.path} must have the same model config as the policy")
    points = grid_lib.grid(horizon, config.profiles, config.delays, config.execute_horizons,
                           config.shortest_horizon_only)
    if "trained_prefix" in config.methods:
        for name, policy in zip(names, policies["trained_prefix"]):
            check_trained_prefix(policy, name, points, horizon, config.initial_estimate)
    out = Path(config.out)
    results.check_run_file(out / results.RUN_FILE, resume_key(config, horizon))
    path = results.results_path(out, config.shard)
    done = {tuple(str(r[c]) for c in results.KEY_COLUMNS) for r in results.read_rows(path, results.COLUMNS)}
    todo = []
    for method in config.methods:
        for point in points:
            for li, name in enumerate(names):
                row_key = (name, method, "" if point.d is None else str(point.d), str(point.s), point.profile_name)
                todo.append((row_key, method, point, li))
    shard_index, shard_count = results.parse_shard(config.shard)
    return Plan(config, files, policies, horizon, points, path, todo[shard_index::shard_count], done)


# -- running it ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LevelPolicy:
    graphdef: Any
    params: Any
    weak_params: Any
    source: str


def _load_policies(plan: Plan, group: str, obs_dim: int, action_dim: int) -> list[LevelPolicy]:
    """One policy per level: from checkpoints, or randomly initialised (the same weights for every level)."""
    import flax.nnx as nnx

    from rtchunk.model import FlowPolicy

    config = plan.config
    out = []
    for name, info, weak_info in zip(plan.names, plan.policies[group], plan.policies["weak"]):
        if info is None:
            policy, source = FlowPolicy(obs_dim, action_dim, config.model, rngs=nnx.Rngs(config.seed)), RANDOM_INIT
        else:
            policy, source = policy_store.load_policy(info.path)[0], str(info.path)
        if (policy.obs_dim, policy.action_dim) != (obs_dim, action_dim):
            raise ValueError(
                f"policy for {name} ({source}) has obs_dim={policy.obs_dim}, action_dim={policy.action_dim}; "
                f"the environment has obs_dim={obs_dim}, action_dim={action_dim}"
            )
        weak = None if weak_info is None else nnx.split(policy_store.load_policy(weak_info.path)[0])[1]
        graphdef, params = nnx.split(policy)
        out.append(LevelPolicy(graphdef, params, weak, source))
    return out


def _banner(message: str) -> str:
    bar = "!" * 78
    return f"{bar}\n{message}\n{bar}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text) or "_"


def run(config: EvalConfig, log: Callable[[str], None] = lambda message: None) -> Path:
    """Run (or resume) the sweep; returns the results CSV. ``log`` receives what the sweep has to say."""
    checked = plan(config)
    import jax
    from tqdm.auto import tqdm

    from rtchunk.kinetix import envs, harness, levels
    from rtchunk.kinetix.chunk_fns import policy_chunk_fn, switched_chunk_fn, switched_params
    from rtchunk.methods import make_method

    level_list = [levels.load_level(f) for f in checked.level_files]
    env, arrays = envs.make_env(level_list, envs.EnvConfig(shrink=config.shrink, max_timesteps=config.max_timesteps))
    horizon = checked.horizon
    policies = _load_policies(checked, "policy", env.obs_dim, env.action_dim)
    prefix_policies = policies
    if config.trained_prefix_policy_dir is not None and "trained_prefix" in config.methods:
        prefix_policies = _load_policies(checked, "trained_prefix", env.obs_dim, env.action_dim)

    # Everything is checked: from here on the sweep writes.
    if config.trained_prefix_policy_dir is not None and "trained_prefix" not in config.methods:
        log("note: --trained-prefix-policy-dir is only used by trained_prefix")
    if "bid" not in config.methods and config.weak_policy_dir is not None:
        log("note: --weak-policy-dir is only used by bid")
    if policies[0].source == RANDOM_INIT:
        log(_banner("WARNING: no --policy-dir given: evaluating a RANDOMLY INITIALISED policy.\n"
                    "The numbers only show that the pipeline runs; they say nothing about any method."))
    out = Path(config.out)
    results.write_run_file(out / results.RUN_FILE, resume_key(config, horizon))
    path, todo, remaining = checked.path, checked.todo, checked.remaining
    log(f"{len(todo)} configurations ({len(todo) - len(remaining)} already in {path}); "
        f"{len(jax.devices())} device(s), {config.num_envs} environments each")

    # One method object per name (chunk functions, and with them compiled rollouts, are cached by identity).
    samplers = {name: make_method(name, config.method_settings, rng=jax.random.key(0)) for name in config.methods}

    # The methods that share an execution (all but temporal ensembling) share one rollout program, in which a
    # switch picks the method: the physics, most of a rollout's compile time, compiles once for all of them.
    # The group holds every method of the sweep, not only the remaining ones, so a resumed sweep finds the
    # same program in the persistent compilation cache.
    groups: dict[str, list[str]] = {}
    for name in config.methods:
        groups.setdefault(method_execution(name), []).append(name)

    def branch(method: str, li: int):
        policy = (prefix_policies if method == "trained_prefix" else policies)[li]
        weak = policy.weak_params is not None and method == "bid"
        chunk_fn = policy_chunk_fn(policy.graphdef, samplers[method], config.num_flow_steps, weak_policy=weak)
        return policy, chunk_fn, (policy.params, policy.weak_params) if weak else policy.params

    def job(method: str, point: grid_lib.GridPoint, li: int):
        """What one row evaluates: (policy, chunk_fn, harness config, params, told-delay bound)."""
        execution = method_execution(method)
        group = groups[execution]
        branches = [branch(m, li) for m in group]
        index = group.index(method)
        chunk_fn = switched_chunk_fn(tuple(b[1] for b in branches))
        params = switched_params(index, tuple(b[2] for b in branches))
        config_h = harness.HarnessConfig(
            num_envs=config.num_envs, horizon=horizon, execution=execution,
            ensemble_decay=config.method_settings.ensemble_decay, estimator=config.estimator,
            record_states=config.video_envs, fast_compile=config.fast_compile,
        )
        told_max = told_delay_bound(samplers[method], horizon, point.s)
        return branches[index][0], chunk_fn, config_h, params, told_max

    # One rollout program per group (and level architecture): compile them side by side before the first
    # row needs one.
    jobs, programs = [], set()
    for _, method, point, li in remaining:
        _, chunk_fn, config_h, params, _ = job(method, point, li)
        if (chunk_fn, config_h) not in programs:
            programs.add((chunk_fn, config_h))
            jobs.append((env, arrays[li], chunk_fn, params, point.s, point.profile, config_h, config.initial_estimate))
    if jobs:
        log(f"{len(config.methods)} method(s) in {len(jobs)} rollout program(s)")
    if harness.precompile(jobs):
        log(f"compiled {len(jobs)} rollouts in parallel")
    bar = tqdm(total=len(remaining), disable=not config.progress, desc="eval", unit="cfg")
    try:
        for row_key, method, point, li in remaining:
            policy, chunk_fn, config_h, params, told_max = job(method, point, li)
            rng = jax.random.fold_in(jax.random.key(config.seed), li)
            result = harness.evaluate(
                env, arrays[li], chunk_fn, params, execute_horizon=point.s, profile=point.profile, rng=rng,
                config=config_h, initial_estimate=config.initial_estimate, told_max=told_max,
            )
            row = dict(zip(results.KEY_COLUMNS, row_key))
            row.update(result.metrics)
            row.update(horizon=horizon, num_flow_steps=config.num_flow_steps, policy=policy.source,
                       shrink=config.shrink, seed=config.seed, seconds=round(result.seconds, 3),
                       finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            results.append_rows(path, [{c: results.format_value(row.get(c, "")) for c in results.COLUMNS}],
                                results.COLUMNS)
            if config.video_envs and wants_video(config.video_rows, method, row_key[2]):
                from rtchunk.kinetix import video

                stem = "__".join(_safe(x) for x in row_key)
                video.write_rollout_video(out / "videos" / f"{stem}.mp4", env, arrays[li], result.records,
                                          config.video_envs)
            bar.set_postfix_str(f"{row_key[0]} {method} d={row_key[2] or '~'} s={point.s}: "
                                f"{result.metrics['solve_rate']:.2f}")
            bar.update()
    finally:
        bar.close()
    return path
