"""PPO experts for many seeds x levels at once, with checkpoints and resume (``rtchunk train-expert``).

Every (level, seed) pair is one learner; learners are vmapped and their axis is sharded over the
devices, so one compiled update trains them all (the papers: 8 seeds x 12 levels x 65M steps).
Every ``checkpoint_every`` updates the run evaluates each learner's deterministic policy on fresh
episodes (solve rate, return, length: first episode of each environment, with action noise), writes
the weights of all learners with those stats (``checkpoints/update_XXXXXX``) and the complete learner
state (``runner``). A crashed or interrupted run (Ctrl-C saves first) resumes from there exactly:
networks, optimisers, environments and random keys are all restored.

Output layout::

    <out>/run.json                    settings (a resumed run must match) and the level list
    <out>/runner/                     complete learner state of the last checkpoint (resume)
    <out>/checkpoints/update_XXXXXX/  weights [levels, seeds, ...] + per-learner stats in meta.json
    <out>/stats.csv                   one row per (checkpoint, level, seed)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rtchunk import checkpoints
from rtchunk.files import read_json, to_jsonable
from rtchunk.kinetix import parallel, ppo, results
from rtchunk.kinetix.results import RUN_FILE

CHECKPOINTS = "checkpoints"
RUNNER = "runner"


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """What the trainer itself needs (the command's config adds where levels come from)."""

    num_seeds: int = 8
    ppo: ppo.PPOConfig = ppo.PPOConfig()
    checkpoint_every: int = 50
    """Updates between checkpoints (each with an evaluation)."""
    updates_per_call: int = 5
    """Updates per compiled call (between progress-bar refreshes)."""
    num_eval_envs: int = 64
    """Environments for each checkpoint's evaluation of the deterministic policy; 0 = use the statistics of
    the training episodes since the last checkpoint instead (stochastic policy; no extra compile)."""
    video_envs: int = 0
    """At every checkpoint, an mp4 per level of the first seed's deterministic expert on this many
    environments side by side (videos/<level>_update_XXXXXX.mp4); 0 = no videos."""
    stop_at_solve_rate: float | None = None
    """Stop before the budget once every learner has reached this solve rate at some checkpoint (its best
    is what ``select_experts`` takes), e.g. the mixture's threshold; None: train the whole budget."""
    stop_at_solved_seeds: int | None = None
    """With ``stop_at_solve_rate``: stop once this many learners of every level have reached it (None: all of
    them). ``rtchunk reproduce`` sets it per round to the solving seeds its level still needs."""
    compact_obs: bool = False
    """The experts observe the shrunk level (``EnvConfig.compact_obs``; needs shrinking): the same
    information in a fraction of the inputs, and the same networks as on the papers' full-layout frames
    (``ppo.init_runner`` starts from the full layout's initialisation), so each PPO step costs less."""
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.video_envs < 0:
            raise ValueError(f"video_envs must be >= 0, got {self.video_envs}")
        for name in ("num_seeds", "checkpoint_every", "updates_per_call"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_eval_envs < 0:
            raise ValueError(f"num_eval_envs must be >= 0, got {self.num_eval_envs}")
        if self.stop_at_solve_rate is not None and not 0.0 < self.stop_at_solve_rate <= 1.0:
            raise ValueError(f"stop_at_solve_rate must be in (0, 1] or None, got {self.stop_at_solve_rate}")
        if self.stop_at_solved_seeds is not None and not 1 <= self.stop_at_solved_seeds <= self.num_seeds:
            raise ValueError(f"stop_at_solved_seeds must be in [1, num_seeds = {self.num_seeds}] or None, got "
                             f"{self.stop_at_solved_seeds}")


def expert_env(settings: TrainerSettings, *, shrink: bool, max_timesteps: int):
    """The environment the experts train in: the papers' expert stack (``envs.EXPERT_ENV``) at these sizes."""
    from rtchunk.kinetix import envs as envs_lib

    return dataclasses.replace(envs_lib.EXPERT_ENV, shrink=shrink, max_timesteps=max_timesteps,
                               compact_obs=settings.compact_obs)


def checkpoint_dirs(out: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = Path(out) / CHECKPOINTS
    return sorted(p for p in root.glob("update_*") if (p / checkpoints.META).is_file())


def _stack_for_learners(levels, num_seeds: int):
    """Level arrays [L, ...] -> [L * S, ...], seed-minor (numpy: no per-leaf compiles)."""
    return jax.tree.map(lambda x: np.repeat(np.asarray(x), num_seeds, axis=0), levels)


def train_experts(
    env,
    levels,
    names: Sequence[str],
    settings: TrainerSettings,
    out_dir: Path,
    *,
    num_motors: int,
    episode_steps: int,
    run_info: dict[str, Any] | None = None,
    log: Callable[[list[dict]], None] | None = None,
) -> Path:
    """Train ``settings.num_seeds`` experts on each of ``levels`` (stacked level arrays, one per name).

    ``log(rows)`` also receives every batch of statistics rows written to ``stats.csv`` (experiment tracking)."""
    cfg = settings.ppo
    out = Path(out_dir)
    num_levels, num_seeds = len(names), settings.num_seeds
    num_learners = num_levels * num_seeds
    run = {"names": list(names), "settings": settings, "num_motors": num_motors, "episode_steps": episode_steps,
           "obs_dim": env.obs_dim, "action_dim": env.action_dim, **(run_info or {})}
    resume_key = to_jsonable({**run, "settings": dataclasses.replace(settings, progress=True)})
    resume_key["settings"].pop("ppo")
    # What is kept and when to stop change no result: free to change on resume.
    for free in ("video_envs", "stop_at_solve_rate", "stop_at_solved_seeds"):
        resume_key["settings"].pop(free)
    resume_key["ppo"] = {k: v for k, v in to_jsonable(cfg).items() if k != "total_timesteps"}
    results.check_run_file(out / RUN_FILE, resume_key)
    results.write_run_file(out / RUN_FILE, resume_key, **to_jsonable(run))

    placement = parallel.level_sharding(num_learners)
    learner_levels = jax.device_put(_stack_for_learners(levels, num_seeds), placement)
    keys = jax.random.split(jax.random.key(settings.seed), num_learners)
    init = jax.jit(jax.vmap(lambda k, lv: ppo.init_runner(k, env, lv, cfg)))
    start = 0
    if (out / RUNNER / checkpoints.META).is_file():
        # The structure alone (no compile) is enough to check and load the saved state against.
        like = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(init, keys, learner_levels))
        runner, meta = checkpoints.load(out / RUNNER, like)
        runner = jax.device_put(runner, placement)
        start = int(meta["update"])
    else:
        runner = jax.device_put(init(keys, learner_levels), placement)

    update = jax.vmap(ppo.make_update(env, cfg, num_motors))

    @jax.jit
    def many_updates(runner, learner_levels, count_mask):
        def body(r, active):
            new, metrics = update(r, learner_levels)
            # A masked step keeps the state: lets the last call of a run be shorter without recompiling.
            return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, r), metrics

        return jax.lax.scan(body, runner, count_mask)

    @jax.jit
    def evaluate(params, learner_levels, rng):
        keys = jax.random.split(rng, num_learners)
        return jax.vmap(lambda p, lv, k: ppo.evaluate_expert(env, p, lv, k, settings.num_eval_envs, num_motors,
                                                             episode_steps))(params, learner_levels, keys)

    # Each learner's best checkpoint solve rate so far (for stop_at_solve_rate; also after a resume).
    best = best_solve_rates(out, names, num_seeds)

    def enough() -> bool:
        return enough_solved(best, settings)

    if settings.num_eval_envs > 0 and start < cfg.num_updates and not enough():  # compile side by side
        mask = jnp.arange(settings.updates_per_call) < settings.updates_per_call
        parallel.precompile([(many_updates, (runner, learner_levels, mask)),
                             (evaluate, (runner.params, learner_levels, jax.random.key(0)))])

    # Training-episode statistics since the last checkpoint (used when num_eval_envs == 0).
    train_sums = np.zeros((4, num_learners))  # episodes, solved, return, length

    def learner_stats(update_index: int) -> dict[str, np.ndarray]:
        if settings.num_eval_envs > 0:
            stats = jax.device_get(evaluate(runner.params, learner_levels, jax.random.key(settings.seed + update_index)))
            finished = np.asarray(stats["finished"], bool)
            with np.errstate(invalid="ignore"):
                return {
                    "solve_rate": np.asarray(stats["solved"]).mean(axis=1),
                    "return": np.where(finished, stats["return"], 0).sum(1) / finished.sum(1),
                    "length": np.where(finished, stats["length"], 0).sum(1) / finished.sum(1),
                    "episodes": finished.sum(1),
                }
        episodes, solved, ret, length = train_sums
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {"solve_rate": np.where(episodes > 0, solved / episodes, 0.0), "return": ret / episodes,
                   "length": length / episodes, "episodes": episodes.copy()}
        train_sums[:] = 0
        return out

    record = jax.jit(lambda p, lv, k: ppo.record_episode(env, p, lv, k, settings.video_envs, num_motors, episode_steps))

    def write_videos(update_index: int, host_params) -> None:
        from rtchunk.kinetix import video

        host_levels = jax.device_get(learner_levels)
        for i, name in enumerate(names):
            j = i * num_seeds  # the first seed's learner of this level
            level = jax.tree.map(lambda x: x[j], host_levels)
            states = record(jax.tree.map(lambda x: x[j], host_params), level, jax.random.key(update_index))
            video.write_mp4(out / "videos" / f"{name}_update_{update_index:06d}.mp4",
                            video.tile(video.render_frames(env, level, states)))

    def save(update_index: int, with_checkpoint: bool):
        host = jax.device_get(runner)
        if with_checkpoint and settings.video_envs:
            write_videos(update_index, host.params)
        if with_checkpoint:
            stats = learner_stats(update_index)
            rows = _stat_rows(stats, names, num_seeds, update_index, update_index * cfg.steps_per_update)
            params = jax.tree.map(lambda x: x.reshape(num_levels, num_seeds, *x.shape[1:]), host.params)
            checkpoints.save(out / CHECKPOINTS / f"update_{update_index:06d}", params,
                             {"kind": "ppo_experts", "update": update_index, "names": list(names), "stats": rows,
                              "num_motors": num_motors, "env_steps_per_learner": update_index * cfg.steps_per_update})
            results.append_rows(out / "stats.csv", rows)
            if log is not None:
                log(rows)
            if settings.progress:
                for name in names:
                    solved = [r["solve_rate"] for r in rows if r["level"] == name]
                    print(f"  update {update_index}: {name} solve rate per seed {np.round(solved, 2).tolist()}")
        checkpoints.save(out / RUNNER, host, {"kind": "ppo_runner", "update": update_index})
        return rows if with_checkpoint else []

    total = cfg.num_updates
    bar = tqdm(total=total, initial=start, desc="PPO updates", unit="upd", disable=not settings.progress)
    last_saved = start
    try:
        done = start
        while done < total and not enough():
            n = min(settings.updates_per_call, total - done,
                    settings.checkpoint_every - done % settings.checkpoint_every)
            mask = jnp.arange(settings.updates_per_call) < n
            started = time.perf_counter()
            runner, metrics = many_updates(runner, learner_levels, mask)
            m = {k: np.asarray(metrics[k])[:n] for k in ("episodes", "solve_rate", "episode_return", "episode_length")}
            train_sums += np.stack([m["episodes"].sum(0), (m["solve_rate"] * m["episodes"]).sum(0),
                                    (m["episode_return"] * m["episodes"]).sum(0),
                                    (m["episode_length"] * m["episodes"]).sum(0)])
            solve = float(m["solve_rate"].mean())
            done += n
            bar.update(n)
            bar.set_postfix(train_solve=f"{solve:.2f}",
                            sps=f"{n * cfg.steps_per_update * num_learners / (time.perf_counter() - started):.0f}")
            if done % settings.checkpoint_every == 0 or done == total:
                best = np.maximum(best, [r["solve_rate"] for r in save(done, with_checkpoint=True)])
                last_saved = done
                if enough() and done < total and settings.progress:
                    n = settings.stop_at_solved_seeds
                    seeds = ("every seed" if n in (None, num_seeds) else f"{n} seed{'s' * (n != 1)} of each level")
                    print(f"  {seeds} reached solve rate {settings.stop_at_solve_rate}: stopping at update "
                          f"{done} of {total}")
    except KeyboardInterrupt:
        if int(jax.device_get(runner.update)) > last_saved:
            save(int(jax.device_get(runner.update)), with_checkpoint=False)
            print(f"\ninterrupted: state saved in {out / RUNNER}; run the same command to resume")
        raise
    finally:
        bar.close()
    return out


def train_on_levels(level_list, env_config, settings: TrainerSettings, out_dir: Path,
                    log: Callable[[list[dict]], None] | None = None) -> Path:
    """``train_experts`` on loaded levels (``rtchunk.kinetix.levels.Level``) in the environment ``env_config``
    (the expert stack), recording in the run file what ``trained_levels`` reads back (level files, env)."""
    from rtchunk.kinetix import envs as envs_lib

    env, arrays = envs_lib.make_env(list(level_list), env_config)
    return train_experts(
        env, envs_lib.stack_levels(arrays), [lvl.name for lvl in level_list], settings, out_dir,
        num_motors=level_list[0].static_env_params.num_motor_bindings, episode_steps=env_config.max_timesteps,
        run_info={"level_specs": [lvl.source for lvl in level_list], "env": env_config}, log=log,
    )


def best_solve_rates(out_dir: Path, names: Sequence[str], num_seeds: int) -> np.ndarray:
    """[levels * seeds] (level-major): each learner's best solve rate over a run's checkpoints (0 if none),
    the checkpoint ``select_experts`` takes."""
    best = np.zeros(len(names) * num_seeds)
    if not any(checkpoint_dirs(run) for run in run_dirs(out_dir)):
        return best
    for name, chosen in select_experts(out_dir, threshold=0.0).items():
        for entry in chosen:
            best[list(names).index(name) * num_seeds + entry["seed"]] = entry["solve_rate"]
    return best


def enough_solved(best: np.ndarray, settings: TrainerSettings) -> bool:
    """Whether ``best`` ([levels * seeds], level-major best solve rates) meets ``settings``' stop rule:
    ``stop_at_solved_seeds`` (default: all) learners of every level at ``stop_at_solve_rate`` or above."""
    if settings.stop_at_solve_rate is None:
        return False
    solved = (np.asarray(best).reshape(-1, settings.num_seeds) >= settings.stop_at_solve_rate).sum(axis=1)
    return bool(np.all(solved >= (settings.stop_at_solved_seeds or settings.num_seeds)))


def run_finished(out_dir: Path, settings: TrainerSettings) -> bool:
    """Whether an expert run is over: it reached its last update, or enough learners reached
    ``settings.stop_at_solve_rate`` as ``enough_solved`` counts (then it is read, not resumed)."""
    done = checkpoint_dirs(out_dir)
    if not done:
        return False
    if int(checkpoints.load_meta(done[-1])["update"]) >= settings.ppo.num_updates:
        return True
    names = read_json(Path(out_dir) / RUN_FILE, "expert run file")["names"]
    return enough_solved(best_solve_rates(out_dir, names, settings.num_seeds), settings)


def _stat_rows(stats: dict[str, np.ndarray], names, num_seeds, update_index, env_steps):
    """One row per learner from per-learner arrays (learners level-major, seed-minor)."""
    rows = []
    for i, name in enumerate(names):
        for s in range(num_seeds):
            j = i * num_seeds + s
            rows.append({"update": update_index, "env_steps": env_steps, "level": name, "seed": s,
                         **{k: float(stats[k][j]) for k in ("solve_rate", "return", "length", "episodes")}})
    return rows


def run_dirs(out_dir: Path) -> list[Path]:
    """The expert runs under ``out_dir``: itself, or one per process of a multi-host run."""
    out = Path(out_dir)
    if (out / RUN_FILE).is_file():
        return [out]
    return sorted(p for p in out.glob("process_*_of_*") if (p / RUN_FILE).is_file())


def trained_levels(out_dir: Path) -> dict[str, dict]:
    """For every level of an expert run: its level file, env config, PPO settings and motor count."""
    info = {}
    for run in run_dirs(out_dir):
        body = read_json(run / RUN_FILE, "expert run file")
        try:
            for name, source in zip(body["names"], body["level_specs"]):
                info[name] = {"source": source, "env": body["env"], "ppo": body["settings"]["ppo"],
                              "num_motors": body["num_motors"]}
        except (KeyError, TypeError) as e:
            raise ValueError(f"{run / RUN_FILE} is not an expert run file (missing {e})") from None
    return info


def select_experts(out_dir: Path, threshold: float = 0.65) -> dict[str, list[dict]]:
    """Per level, the best checkpoint of every seed whose solve rate reaches ``threshold`` (seeds that never
    do are left out): {level: [{"seed", "checkpoint", "level_index", "solve_rate"}, ...]}."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    runs = run_dirs(out_dir)
    if not runs or not any(checkpoint_dirs(r) for r in runs):
        raise ValueError(f"{out_dir} has no expert checkpoints (run `rtchunk train-expert` first)")
    best: dict[tuple[str, int], dict] = {}
    names: list[str] = []
    for run in runs:
        for path in checkpoint_dirs(run):
            meta = checkpoints.load_meta(path)
            names += [n for n in meta["names"] if n not in names]
            for row in meta["stats"]:
                key = (row["level"], int(row["seed"]))
                # Ties go to the later checkpoint (more training at the same solve rate).
                if key not in best or row["solve_rate"] >= best[key]["solve_rate"]:
                    best[key] = {"seed": key[1], "checkpoint": str(path), "solve_rate": row["solve_rate"],
                                 "level_index": meta["names"].index(row["level"])}
    return {name: [v for (lvl, _), v in sorted(best.items()) if lvl == name and v["solve_rate"] >= threshold]
            for name in names}


def load_expert_params(selection: dict, like):
    """The weights of one selected expert (a ``select_experts`` entry), shaped like ``like``."""
    arrays = checkpoints.load_arrays(selection["checkpoint"])
    mine = {k: v[selection["level_index"], selection["seed"]] for k, v in arrays.items()}
    return checkpoints.unflatten_like(mine, like, source=selection["checkpoint"])
