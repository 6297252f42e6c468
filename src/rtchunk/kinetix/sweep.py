"""``rtchunk eval``: levels x methods x delays x execute horizons, one CSV row each, resumable.

The default grid is the papers': fixed delays d = 0..4 and, for each, execute horizons
s = max(d, 1) .. H - d. Stochastic delay profiles add rows of their own (``--profiles``, see
``parse_profile``). Every finished configuration is appended to ``<out>/results.csv`` at once; a
rerun skips the rows already there (a line cut short by a crash is dropped), so an interrupted sweep
resumes where it stopped. ``<out>/run.json`` records the settings that shape the results, and a
resumed sweep must match them.

Policies: ``--policy-dir`` is a checkpoint written by ``rtchunk.checkpoints.save_policy``, either one
for every level or a directory with one sub-directory per level name. Without it the sweep evaluates a
randomly initialised policy and says so loudly: that only exercises the pipeline.

Environments are sharded over all JAX devices; on a CPU the command asks XLA for 2 host devices
(about 1.9x on 2 cores) unless ``XLA_FLAGS`` already says otherwise. (This module imports neither JAX's
backend nor Kinetix at import time, so the flag can still take effect when ``run`` starts.) ``--shard i/n`` evaluates every
n-th row only (for several processes or machines), writing ``results.shard-i-of-n.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from rtchunk import delays as delays_lib
from rtchunk.kinetix.paper import PAPER_LEVELS
from rtchunk.model import ModelConfig

RUN_FILE = "run.json"
KEY_COLUMNS = ("level", "method", "d", "s", "profile")
METRIC_COLUMNS = (
    "num_envs", "solved", "solve_rate", "solve_rate_low", "solve_rate_high", "return_mean", "length_mean",
    "episodes_finished", "chunks", "d_mean", "d_p50", "d_p95", "d_p99", "told_d_mean", "p_violate",
    "starvation_steps", "starvation_rate", "max_delta_action", "max_ddelta_action", "seam_jump_mean",
    "seam_jump_p99",
)
INFO_COLUMNS = ("horizon", "num_flow_steps", "policy", "shrink", "seed", "seconds", "finished_at")
COLUMNS = KEY_COLUMNS + METRIC_COLUMNS + INFO_COLUMNS

METHOD_NAMES = (
    "naive", "rtc", "rtc_linear", "hard_mask", "jacobian_free", "bid", "temporal_ensembling", "trained_prefix",
)
DEFAULT_METHODS = ("naive", "rtc", "rtc_linear", "hard_mask", "jacobian_free", "bid", "temporal_ensembling")


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
    """'fixed' (uses --delays), or a stochastic profile spec (see rtchunk.kinetix.sweep.parse_profile)."""
    estimator_window: int = 10
    """The sampler is told the max of the last this-many observed delays (per environment)."""
    initial_estimate: int | None = None
    """Delay estimate before any delay was observed (default: the profile's median)."""
    num_envs: int = 2048
    num_flow_steps: int = 5
    policy_dir: Path | None = None
    """Checkpoint (or directory of per-level checkpoints); empty = a randomly initialised policy."""
    weak_policy_dir: Path | None = None
    """BID's weak policy (optional; same layout as --policy-dir)."""
    trained_prefix_policy_dir: Path | None = None
    """Policy for the trained_prefix rows: a model fine-tuned with training-time RTC (same layout as
    --policy-dir; default: --policy-dir itself)."""
    model: ModelConfig = ModelConfig()
    """Model sizes for the randomly initialised policy (ignored with --policy-dir)."""
    bid_samples: int = 32
    bid_top_k: int = 3
    max_guidance_weight: float = 5.0
    ensemble_decay: float = 0.01
    shrink: bool = False
    """Simulate levels compacted to their used slots (faster, not bit-identical: see rtchunk levels shrink)."""
    max_timesteps: int = 256
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
    host_devices: int = 2
    """CPU only: JAX host devices to ask for (ignored when XLA_FLAGS already sets the count)."""
    progress: bool = True


PRESETS = {
    "paper": EvalConfig(),
    "cpu": EvalConfig(num_envs=256, shrink=True),
    "smoke": EvalConfig(
        levels=("l/h17_unicycle",), methods=("naive", "rtc"), delays=(1,), num_envs=16, max_timesteps=64,
        shrink=True, fast_compile=True, model=ModelConfig(channel_dim=32, channel_hidden_dim=64,
                                                            token_hidden_dim=16, num_layers=1),
    ),
}
"""Ready-made settings: the papers' sweep, a CPU-sized one, and a seconds-long smoke run."""


# -- delay profiles from the command line -----------------------------------------------------------


def parse_profile(spec: str) -> delays_lib.DelayProfile:
    """A delay profile from a compact spec.

    * ``fixed:D``: always D steps (``fixed`` alone means the --delays grid).
    * ``mixture:D=P,D=P,...[,spike=D@P][,cap=C]``: base delays with probabilities (summing to 1),
      plus a spike delay drawn with probability P, optionally capped at C. E.g.
      ``mixture:1=0.5,2=0.5,spike=6@0.05,cap=4``.
    * ``empirical:L,L,...[,period=S][,cap=C]``: measured latencies in seconds (or one file holding them,
      whitespace/comma separated or a JSON list) and the control period in seconds (default 0.02).
    """
    kind, _, body = spec.partition(":")
    items = [x.strip() for x in body.split(",") if x.strip()]
    options = {}
    rest = []
    for item in items:
        key, eq, value = item.partition("=")
        if eq and key in ("spike", "cap", "period"):
            options[key] = value
        else:
            rest.append(item)
    try:
        cap = int(options["cap"]) if "cap" in options else None
        if kind == "fixed":
            if len(rest) != 1 or options.keys() - {"cap"}:
                raise ValueError("expected fixed:D")
            return delays_lib.FixedDelay(int(rest[0]), tail_cap=cap)
        if kind == "mixture":
            pairs = [item.split("=") for item in rest]
            if not pairs or any(len(p) != 2 for p in pairs):
                raise ValueError("expected mixture:D=P,D=P,...")
            spike_delay, spike_prob = 0, 0.0
            if "spike" in options:
                d, at, p = options["spike"].partition("@")
                if not at:
                    raise ValueError("expected spike=D@P")
                spike_delay, spike_prob = int(d), float(p)
            return delays_lib.MixtureDelay(
                delays=tuple(int(d) for d, _ in pairs), probs=tuple(float(p) for _, p in pairs),
                spike_delay=spike_delay, spike_prob=spike_prob, tail_cap=cap,
            )
        if kind == "empirical":
            if len(rest) == 1 and Path(rest[0]).is_file():
                text = Path(rest[0]).read_text()
                values = json.loads(text) if text.lstrip().startswith("[") else text.replace(",", " ").split()
            else:
                values = rest
            return delays_lib.EmpiricalDelay(
                latencies_s=tuple(float(v) for v in values),
                control_period_s=float(options.get("period", 0.02)), tail_cap=cap,
            )
    except ValueError as e:
        raise ValueError(f"bad delay profile {spec!r}: {e}") from None
    raise ValueError(f"bad delay profile {spec!r}: kind must be fixed, mixture or empirical")


@dataclasses.dataclass(frozen=True)
class GridPoint:
    profile_name: str
    d: int | None  # fixed delay, None for stochastic profiles
    s: int
    profile: delays_lib.DelayProfile


def grid(config: EvalConfig, horizon: int) -> list[GridPoint]:
    """Every (profile, d, s) the sweep evaluates, in order."""
    points = []
    for s in config.execute_horizons:
        if not 1 <= s <= horizon:
            raise ValueError(f"execute_horizons must be in [1, horizon={horizon}], got {s}")
    for name in config.profiles:
        if name == "fixed":
            for d in config.delays:
                if d < 0:
                    raise ValueError(f"delays must be >= 0, got {d}")
                horizons = config.execute_horizons or range(max(d, 1), horizon - d + 1)
                if config.shortest_horizon_only and not config.execute_horizons:
                    horizons = [max(d, 1)]
                points += [GridPoint("fixed", d, s, delays_lib.FixedDelay(d)) for s in horizons]
        else:
            profile = parse_profile(name)
            median = delays_lib.quantile(profile, 0.5)
            horizons = config.execute_horizons or range(max(median, 1), horizon - median + 1)
            if config.shortest_horizon_only and not config.execute_horizons:
                horizons = [max(median, 1)]
            points += [GridPoint(name, None, s, profile) for s in horizons]
    return points


# -- methods and policies ----------------------------------------------------------------------------


def wants_video(video_rows: tuple[str, ...], method: str, d: str) -> bool:
    """Whether a row (method, d as written in the CSV) is selected by ``--video-rows``."""
    return not video_rows or method in video_rows or f"{method}:{d}" in video_rows


def make_method(name: str, config: EvalConfig):
    """(sampling method, execution) for a method name."""
    import jax

    from rtchunk.sampling import BID, RTC, HardMask, JacobianFree, Naive, TrainedPrefix

    beta = config.max_guidance_weight
    table = {
        "naive": (Naive(), "latest"),
        "rtc": (RTC(schedule="exp", max_guidance_weight=beta), "latest"),
        "rtc_linear": (RTC(schedule="linear", max_guidance_weight=beta), "latest"),
        "hard_mask": (HardMask(max_guidance_weight=beta), "latest"),
        "jacobian_free": (JacobianFree(schedule="exp", max_guidance_weight=beta), "latest"),
        "temporal_ensembling": (Naive(), "ensemble"),
        "trained_prefix": (TrainedPrefix(), "latest"),
    }
    if name == "bid":
        return BID(rng=jax.random.key(0), num_samples=config.bid_samples, top_k=config.bid_top_k), "latest"
    if name not in table:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    return table[name]


@dataclasses.dataclass
class LevelPolicy:
    graphdef: Any
    params: Any
    weak_params: Any
    meta: dict
    source: str


def _checkpoint_for(directory: Path, level: str) -> Path:
    from rtchunk.checkpoints import META

    per_level = directory / level
    if (per_level / META).is_file():
        return per_level
    # A `rtchunk train-policy` run: <dir>/<level>/epoch_XXX, of which the last is taken.
    epochs = sorted(p for p in per_level.glob("epoch_*") if (p / META).is_file())
    if epochs:
        return epochs[-1]
    if (directory / META).is_file():
        return directory
    raise ValueError(f"no policy checkpoint for level {level!r}: neither {per_level} (or its epoch_*) nor "
                     f"{directory} holds one")


def load_policies(config: EvalConfig, level_names: list[str], obs_dim: int, action_dim: int,
                  policy_dir: Path | None = None) -> list[LevelPolicy]:
    """One policy per level: from checkpoints, or randomly initialised (the same weights for every level)."""
    import flax.nnx as nnx

    from rtchunk.checkpoints import load_policy
    from rtchunk.model import FlowPolicy

    policy_dir = config.policy_dir if policy_dir is None else policy_dir
    out = []
    for name in level_names:
        if policy_dir is None:
            policy = FlowPolicy(obs_dim, action_dim, config.model, rngs=nnx.Rngs(config.seed))
            meta, source = {}, "random-init"
        else:
            path = _checkpoint_for(Path(policy_dir), name)
            policy, meta = load_policy(path)
            source = str(path)
        if (policy.obs_dim, policy.action_dim) != (obs_dim, action_dim):
            raise ValueError(
                f"policy for {name} ({source}) has obs_dim={policy.obs_dim}, action_dim={policy.action_dim}; "
                f"the environment has obs_dim={obs_dim}, action_dim={action_dim}"
            )
        weak = None
        if config.weak_policy_dir is not None:
            weak_policy, _ = load_policy(_checkpoint_for(Path(config.weak_policy_dir), name))
            if weak_policy.config != policy.config:
                raise ValueError(f"the weak policy for {name} must have the same model config as the policy")
            weak = nnx.split(weak_policy)[1]
        graphdef, params = nnx.split(policy)
        out.append(LevelPolicy(graphdef, params, weak, meta, source))
    horizons = {_horizon(p) for p in out}
    if len(horizons) != 1:
        raise ValueError(f"all levels' policies must share one chunk horizon, got {sorted(horizons)}")
    return out


def _horizon(policy: LevelPolicy) -> int:
    import flax.nnx as nnx

    return nnx.merge(policy.graphdef, policy.params).config.horizon


def _max_told(point: GridPoint, horizon: int, initial: int | None) -> int:
    top = delays_lib.max_delay(point.profile)
    if initial is not None:
        top = max(top, initial)
    return min(top, horizon - point.s)


def check_trained_prefix(policy: LevelPolicy, level: str, points: list[GridPoint], horizon: int,
                         initial: int | None) -> None:
    """TrainedPrefix only makes sense at delays the model was trained with: fail early and clearly."""
    delays = policy.meta.get("training_delays")
    if policy.source == "random-init":
        return
    if not delays:
        raise ValueError(
            f"trained_prefix needs a model trained with prefix conditioning; {policy.source} (level {level}) "
            f"has no 'training_delays' in its meta.json"
        )
    limit = int(delays["max_delay"])
    for p in points:
        told = _max_told(p, horizon, initial)
        if told > limit:
            raise ValueError(
                f"trained_prefix at level {level}, profile {p.profile_name}, d={p.d}, s={p.s} may be told a delay "
                f"of {told}, beyond the checkpoint's trained max_delay={limit} ({policy.source}); "
                f"restrict --delays/--profiles (e.g. a tail cap) or use a model trained for longer delays"
            )


# -- results file ------------------------------------------------------------------------------------


def _key(row: dict) -> tuple[str, ...]:
    return tuple(str(row[c]) for c in KEY_COLUMNS)


def read_rows(path: Path) -> list[dict]:
    """The complete rows of a results CSV; a last line cut short by a crash is removed from the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    lines = data.decode().splitlines()
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    if tuple(header) != COLUMNS:
        raise ValueError(f"{path} has different columns than this version writes; use another --out")
    return list(csv.DictReader(lines))


class ResultsWriter:
    """Appends one row at a time, flushed to disk before the next configuration starts."""

    def __init__(self, path: Path):
        self.path = path
        fresh = not path.is_file() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if fresh:
            self._writer.writeheader()
            self._flush()

    def _flush(self):
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, row: dict):
        self._writer.writerow({c: _fmt(row.get(c, "")) for c in COLUMNS})
        self._flush()

    def close(self):
        self._file.close()


def _fmt(value):
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.6g}"
    return value


def _fingerprint(config: EvalConfig, horizon: int) -> dict:
    """The settings a resumed sweep must share with the rows already written."""
    from rtchunk.checkpoints import to_jsonable

    keys = ("num_envs", "num_flow_steps", "policy_dir", "weak_policy_dir", "trained_prefix_policy_dir",
            "bid_samples", "bid_top_k",
            "max_guidance_weight", "ensemble_decay", "shrink", "max_timesteps", "seed", "estimator_window",
            "initial_estimate", "level_dir")
    out = {k: to_jsonable(getattr(config, k)) for k in keys}
    if config.policy_dir is None:
        out["model"] = to_jsonable(config.model)
    out["horizon"] = horizon
    return out


def _check_run_file(out: Path, fingerprint: dict) -> None:
    from rtchunk.checkpoints import atomic_write_text

    path = out / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text()).get("settings", {})
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if diff:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff)
            raise ValueError(f"{out} holds a sweep with other settings ({details}); use another --out")
    else:
        atomic_write_text(path, json.dumps({"settings": fingerprint}, indent=2, sort_keys=True))


def _shard(spec: str) -> tuple[int, int]:
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n, got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard i/n needs 0 <= i < n, got {spec!r}")
    return i, n


def results_path(out: Path, shard: str = "") -> Path:
    i, n = _shard(shard)
    return out / ("results.csv" if n == 1 else f"results.shard-{i}-of-{n}.csv")


# -- the sweep ---------------------------------------------------------------------------------------


def ensure_host_devices(count: int) -> None:
    """Ask XLA for ``count`` CPU devices unless XLA_FLAGS already sets it (only before JAX starts)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags and count > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _warn(message: str) -> None:
    bar = "!" * 78
    print(f"{bar}\n{message}\n{bar}", file=sys.stderr, flush=True)


def run(config: EvalConfig) -> Path:
    """Run (or resume) the sweep; returns the results CSV."""
    ensure_host_devices(config.host_devices)
    import jax
    from tqdm.auto import tqdm

    from rtchunk.kinetix import envs, evaluate, levels

    shard_index, shard_count = _shard(config.shard)
    unknown = [m for m in config.methods if m not in METHOD_NAMES]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHOD_NAMES)}")
    if config.num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {config.num_envs}")
    if config.estimator_window < 1:
        raise ValueError(f"estimator_window must be >= 1, got {config.estimator_window}")
    for spec in config.profiles:
        if spec != "fixed":
            parse_profile(spec)

    level_list = levels.load_levels(list(config.levels), level_dir=config.level_dir)
    env, arrays = envs.make_env(level_list, envs.EnvConfig(shrink=config.shrink, max_timesteps=config.max_timesteps))
    names = [lvl.name for lvl in level_list]
    policies = load_policies(config, names, env.obs_dim, env.action_dim)
    horizon = _horizon(policies[0])
    points = grid(config, horizon)
    prefix_policies = policies
    if config.trained_prefix_policy_dir is not None:
        if "trained_prefix" not in config.methods:
            print("note: --trained-prefix-policy-dir is only used by trained_prefix", file=sys.stderr)
        prefix_policies = load_policies(config, names, env.obs_dim, env.action_dim, config.trained_prefix_policy_dir)
        if _horizon(prefix_policies[0]) != horizon:
            raise ValueError("the trained_prefix policies must have the same chunk horizon as --policy-dir's")
    if "trained_prefix" in config.methods:
        for name, policy in zip(names, prefix_policies):
            check_trained_prefix(policy, name, points, horizon, config.initial_estimate)
    if "bid" not in config.methods and config.weak_policy_dir is not None:
        print("note: --weak-policy-dir is only used by bid", file=sys.stderr)
    if policies[0].source == "random-init":
        _warn("WARNING: no --policy-dir given: evaluating a RANDOMLY INITIALISED policy.\n"
              "The numbers only show that the pipeline runs; they say nothing about any method.")

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_run_file(out, _fingerprint(config, horizon))
    path = results_path(out, config.shard)
    done = {_key(r) for r in read_rows(path)}

    todo = []
    for method in config.methods:
        for point in points:
            for li, name in enumerate(names):
                row_key = (name, method, "" if point.d is None else str(point.d), str(point.s), point.profile_name)
                todo.append((row_key, method, point, li))
    todo = todo[shard_index::shard_count]
    remaining = [t for t in todo if t[0] not in done]
    print(f"{len(todo)} configurations ({len(todo) - len(remaining)} already in {path}); "
          f"{len(jax.devices())} device(s), {config.num_envs} environments each", file=sys.stderr)

    # One method object per name (chunk functions, and with them compiled rollouts, are cached by identity).
    methods = {name: make_method(name, config) for name in config.methods}

    # The methods that share a harness (all but temporal ensembling) share one rollout program, in which a
    # switch picks the method: the physics, most of a rollout's compile time, compiles once for all of them.
    # The group holds every method of the sweep, not only the remaining ones, so a resumed sweep finds the
    # same program in the persistent compilation cache.
    groups: dict[str, list[str]] = {}
    for name in config.methods:
        groups.setdefault(methods[name][1], []).append(name)

    def branch(method: str, li: int):
        sampler = methods[method][0]
        policy = (prefix_policies if method == "trained_prefix" else policies)[li]
        weak = policy.weak_params is not None and method == "bid"
        chunk_fn = evaluate.policy_chunk_fn(policy.graphdef, sampler, config.num_flow_steps, weak_policy=weak)
        return policy, chunk_fn, (policy.params, policy.weak_params) if weak else policy.params

    def job(method: str, point: GridPoint, li: int):
        """What one row evaluates: (policy, chunk_fn, harness config, params, delay contract)."""
        sampler, execution = methods[method]
        group = groups[execution]
        branches = [branch(m, li) for m in group]
        index = group.index(method)
        chunk_fn = evaluate.switched_chunk_fn(tuple(b[1] for b in branches))
        params = evaluate.switched_params(index, tuple(b[2] for b in branches))
        harness = evaluate.HarnessConfig(
            num_envs=config.num_envs, horizon=horizon, execution=execution,
            ensemble_decay=config.ensemble_decay,
            estimator=delays_lib.MaxEstimator(window=config.estimator_window),
            record_states=config.video_envs, fast_compile=config.fast_compile,
        )
        return branches[index][0], chunk_fn, harness, params, evaluate.delay_contract(sampler)

    # One rollout program per group (and level architecture): compile them side by side before the first
    # row needs one.
    jobs, programs = [], set()
    for _, method, point, li in remaining:
        _, chunk_fn, harness, params, _ = job(method, point, li)
        if (chunk_fn, harness) not in programs:
            programs.add((chunk_fn, harness))
            jobs.append((env, arrays[li], chunk_fn, params, point.s, point.profile, harness, config.initial_estimate))
    if jobs:
        print(f"{len(config.methods)} method(s) in {len(jobs)} rollout program(s)", file=sys.stderr)
    if evaluate.precompile(jobs):
        print(f"compiled {len(jobs)} rollouts in parallel", file=sys.stderr)
    writer = ResultsWriter(path)
    bar = tqdm(total=len(remaining), disable=not config.progress, desc="eval", unit="cfg")
    try:
        for row_key, method, point, li in remaining:
            policy, chunk_fn, harness, params, contract = job(method, point, li)
            rng = jax.random.fold_in(jax.random.key(config.seed), li)
            result = evaluate.evaluate(
                env, arrays[li], chunk_fn, params, execute_horizon=point.s, profile=point.profile, rng=rng,
                config=harness, initial_estimate=config.initial_estimate, delay_contract=contract,
            )
            row = dict(zip(KEY_COLUMNS, row_key))
            row.update(result.metrics)
            row.update(horizon=horizon, num_flow_steps=config.num_flow_steps, policy=policy.source,
                       shrink=config.shrink, seed=config.seed, seconds=round(result.seconds, 3),
                       finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            writer.write(row)
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
        writer.close()
    print(f"results: {path}")
    return path


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text) or "_"


def main(config: EvalConfig = EvalConfig()) -> int:
    run(config)
    return 0


def iter_result_files(directory: Path) -> Iterable[Path]:
    return sorted(Path(directory).glob("results*.csv"))
