"""Behaviour cloning of the flow policy on expert data, one policy per level (``rtchunk train-policy``).

Flow matching on chunks of H consecutive expert actions (zeroed after the episode's end), AdamW 3e-4
with weight decay 1e-2, 1000 warm-up steps, gradient clipping at 10, batch 512, 32 epochs (the papers'
settings). All levels train together: their weights are stacked, the update is vmapped over levels and
the level axis is sharded over the devices (or, when the levels do not split evenly over them, as one level
on two devices, each level's batch is). Optional training-time RTC (``simulated_delay``): the first
d tokens of each chunk are given clean, d drawn from ``TrainingDelays``.

Every epoch writes, atomically, one policy checkpoint per level (``<out>/<level>/epoch_XXX``) and the
full training state (``<out>/train_state``); an interrupted run resumes after its last finished epoch,
provided its settings match ``<out>/run.json``. Everything is read and checked before the first write.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from rtchunk import checkpoints
from rtchunk.delays import TrainingDelays
from rtchunk.files import to_jsonable
from rtchunk.kinetix import parallel, policy_store, results
from rtchunk.model_config import ModelConfig

if TYPE_CHECKING:
    from rtchunk.model import FlowPolicy

# JAX, Flax and optax are imported by the functions that train: ``rtchunk train-policy`` parses and checks
# its BCConfig before they load (seconds on a busy CPU).

TRAIN_STATE = "train_state"


def process_file(name: str) -> str:
    """A per-process file name in a multi-host run (each process trains its own levels)."""
    sub = parallel.process_subdir()
    return name if not sub else f"{Path(name).stem}_{sub}{Path(name).suffix}"


@dataclasses.dataclass(frozen=True)
class BCConfig:
    data_dir: Path
    """Directory of per-level datasets written by ``rtchunk generate-data``."""
    out_dir: Path
    levels: tuple[str, ...] = ()
    """Levels to train (dataset names in data_dir); empty = all."""
    model: ModelConfig = ModelConfig()
    batch_size: int = 512
    num_epochs: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 1000
    grad_clip: float = 10.0
    ema_decay: float | None = None
    """Save an exponential moving average of the weights (this decay per update, zero-debiased) as each
    epoch's policy instead of the last weights (the papers'); training itself is unchanged."""
    max_steps_per_epoch: int | None = None
    """Cap on updates per epoch (small CPU runs); None = one pass over the data."""
    simulated_delay: int | None = None
    """Training-time RTC as in the papers' code: delays 0..simulated_delay-1 (the papers fine-tune with 5)."""
    min_delay: int = 0
    delay_distribution: Literal["exp", "uniform"] = "exp"
    delay_decay: float = 1.0
    init_from: Path | None = None
    """A train-policy output directory to start from (the papers fine-tune the epoch-24 checkpoint)."""
    init_epoch: int | None = None
    """Which epoch of init_from (default: its last)."""
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for name in ("batch_size", "num_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("learning_rate", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        if self.simulated_delay is not None and not 1 <= self.simulated_delay <= self.model.horizon:
            raise ValueError(
                f"simulated_delay must be in [1, horizon={self.model.horizon}] (delays 0..simulated_delay-1), "
                f"got {self.simulated_delay}"
            )
        self.training_delays()  # validates the delay distribution

    def training_delays(self) -> TrainingDelays | None:
        if self.simulated_delay is None:
            return None
        return TrainingDelays(self.min_delay, self.simulated_delay - 1, self.delay_distribution, self.delay_decay)


def make_optimizer(config: BCConfig):
    """The papers' optimiser: AdamW with linear warm-up and global-norm gradient clipping."""
    import optax

    schedule = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(schedule if config.warmup_steps else config.learning_rate, weight_decay=config.weight_decay),
    )


def make_train_steps(graphdef, optimizer, delays: TrainingDelays | None, batch_size: int, horizon: int,
                     batch_sharding=None, ema_decay: float | None = None):
    """``run((params, opt_state, ema), data, perm, start, rng, num_steps) -> ((params, opt_state, ema),
    mean_loss)`` for one level; ``perm`` is the epoch's sample order, ``start`` the first update index within
    it. ``batch_sharding`` (``parallel.batch_sharding``): split each batch's samples over devices.
    ``ema``: the running average of the weights (zeros at first; ``ema_weights`` debiases it), kept only
    with ``ema_decay``."""
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp
    import optax

    from rtchunk.kinetix import dataset as dataset_lib
    from rtchunk.model import flow_matching_loss

    def one_step(carry, i):
        (params, opt_state, ema), data, perm, rng = carry
        obs, action, left = data
        num_steps_in_data = action.shape[1]
        idx = jax.lax.dynamic_slice(perm, (i * batch_size,), (batch_size,))
        env_idx, step_idx = idx // num_steps_in_data, idx % num_steps_in_data
        chunk = dataset_lib.chunk_actions(action, left, env_idx, step_idx, horizon)
        step_obs = obs[env_idx, step_idx]
        if batch_sharding is not None:
            step_obs, chunk = (jax.lax.with_sharding_constraint(x, batch_sharding) for x in (step_obs, chunk))
        key = jax.random.fold_in(rng, i)

        def loss_fn(p):
            return flow_matching_loss(nnx.merge(graphdef, p), key, step_obs, chunk, delays)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if ema_decay is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
        return ((params, opt_state, ema), data, perm, rng), loss

    def run(state, data, perm, start, rng, num_steps: int):
        (state, *_), losses = jax.lax.scan(one_step, (state, data, perm, rng), start + jnp.arange(num_steps))
        return state, losses.mean()

    return run


def ema_weights(ema, decay: float, updates: int):
    """The zero-debiased average after ``updates`` updates (numpy trees)."""
    import jax

    scale = 1.0 / (1.0 - decay ** max(updates, 1))
    return jax.tree.map(lambda e: (np.asarray(e) * scale).astype(np.asarray(e).dtype), ema)


def _dataset_names(config: BCConfig) -> list[str]:
    root = Path(config.data_dir)
    if not root.is_dir():
        raise ValueError(f"data_dir {root} does not exist (run `rtchunk generate-data` first)")
    available = sorted(p.name for p in root.iterdir() if (p / checkpoints.META).is_file())
    if not available:
        hint = " (it is one dataset itself: pass the directory above it)" if (root / checkpoints.META).is_file() else ""
        raise ValueError(f"data_dir {root} holds no datasets (<data_dir>/<level>/{checkpoints.META}){hint}")
    if not config.levels:
        return available
    missing = [lvl for lvl in config.levels if lvl not in available]
    if missing:
        raise ValueError(f"no dataset for level(s) {missing} in {root}; available: {available}")
    return list(config.levels)


def _resume_key(config: BCConfig, names: list[str]) -> dict:
    # Everything that must not change between an interrupted run and its resumption.
    body = to_jsonable(config)
    for volatile in ("num_epochs", "progress", "out_dir"):
        body.pop(volatile)
    body["levels"] = names
    return body


def train_policy(config: BCConfig, evaluate: Callable[[str, "FlowPolicy", dict], dict] | None = None,
                 log: Callable[[list[dict]], None] | None = None) -> Path:
    """Train (or resume) one flow policy per level; returns the output directory.

    ``evaluate(level, policy, meta) -> stats`` runs after every epoch when given (a quick evaluation).
    """
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from rtchunk.kinetix import dataset as dataset_lib
    from rtchunk.model import FlowPolicy

    names = _dataset_names(config)
    names = parallel.my_share(names)
    datasets = [dataset_lib.load(Path(config.data_dir) / n) for n in names]
    obs_dims = {d.obs.shape[-1] for d, _ in datasets}
    action_dims = {d.action.shape[-1] for d, _ in datasets}
    if len(obs_dims) != 1 or len(action_dims) != 1:
        raise ValueError(f"all levels must share observation and action sizes, got {obs_dims} and {action_dims}")
    obs_dim, action_dim = obs_dims.pop(), action_dims.pop()
    sizes = {d.done.shape for d, _ in datasets}
    if len(sizes) != 1:
        raise ValueError(f"all datasets must have the same [envs, steps] shape to train together, got {sorted(sizes)}")
    num_samples = int(np.prod(sizes.pop()))
    steps_per_epoch = num_samples // config.batch_size
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {config.batch_size} is larger than the dataset ({num_samples} samples)")
    out = Path(config.out_dir)
    delays = config.training_delays()

    model_config = config.model
    graphdef = None
    params_list = []
    for i, name in enumerate(names):
        if config.init_from is not None:
            path = policy_store.find_checkpoint(config.init_from, name, epoch=config.init_epoch)
            policy, meta = policy_store.load_policy(path)
            if (policy.obs_dim, policy.action_dim) != (obs_dim, action_dim):
                raise ValueError(
                    f"init_from checkpoint for {name} has obs/action dims {(policy.obs_dim, policy.action_dim)}, "
                    f"the data has {(obs_dim, action_dim)}"
                )
            if config.simulated_delay is not None and config.simulated_delay > policy.config.horizon:
                raise ValueError(f"simulated_delay must be in [1, horizon={policy.config.horizon}] (the horizon of "
                                 f"{path}), got {config.simulated_delay}")
            model_config = policy.config
        else:
            policy = FlowPolicy(obs_dim, action_dim, model_config, rngs=nnx.Rngs(config.seed * 1000 + i))
        graphdef, params = nnx.split(policy, nnx.Param)
        params_list.append(params)
    # Host-side stacking and one jitted init: eager per-leaf ops would each compile a small program.
    params = jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *params_list)

    optimizer = make_optimizer(config)
    opt_state = jax.jit(jax.vmap(optimizer.init))(params)
    ema = None if config.ema_decay is None else jax.tree.map(np.zeros_like, params)
    start_epoch = 0
    state_dir = out / process_file(TRAIN_STATE)
    run_file = out / process_file(results.RUN_FILE)
    resume_key = _resume_key(config, names)
    results.check_run_file(run_file, resume_key)
    if (state_dir / checkpoints.META).is_file():
        (params, opt_state, ema), meta = checkpoints.load(state_dir, (params, opt_state, ema))
        start_epoch = int(meta["epoch"]) + 1
    # Everything is checked: from here on the run writes.
    results.write_run_file(run_file, resume_key)

    # Data on the devices, stacked over levels: obs [L, E, T, O], action [L, E, T, A], left [L, E, T].
    data = (
        np.stack([d.obs for d, _ in datasets]),
        np.stack([d.action for d, _ in datasets]),
        np.stack([dataset_lib.steps_left(d.done) for d, _ in datasets]),
    )
    split_batch = parallel.batch_sharding(len(names), config.batch_size)
    if split_batch is None:
        placement = parallel.level_sharding(len(names))
    else:  # every device holds all of it and computes its share of each batch
        placement = jax.sharding.NamedSharding(split_batch.mesh, jax.sharding.PartitionSpec())
    data, state = jax.device_put((data, (params, opt_state, ema)), placement)

    run_steps = make_train_steps(graphdef, optimizer, delays, config.batch_size, model_config.horizon, split_batch,
                                 config.ema_decay)
    steps_per_call = max(1, min(steps_per_epoch, 50))
    compiled = {}

    def call(n):
        if n not in compiled:
            compiled[n] = jax.jit(jax.vmap(lambda st, d, perm, s, r: run_steps(st, d, perm, s, r, n),
                                           in_axes=(0, 0, 0, None, 0)))
        return compiled[n]

    stats_path = out / process_file("stats.csv")
    meta_common = {
        "training_delays": delays,
        "data_dir": str(config.data_dir),
        "bc_config": config,
    }
    @jax.jit
    def epoch_keys(epoch):
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(config.seed), epoch * 7919 + i))(
            jnp.arange(len(names))
        )
        return keys, jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, 1), num_samples))(keys)

    for epoch in range(start_epoch, config.num_epochs):
        started = time.perf_counter()
        keys, perms = epoch_keys(jnp.int32(epoch))
        done_steps, losses = 0, []
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.num_epochs}", disable=not config.progress,
                   unit="step", leave=False)
        while done_steps < steps_per_epoch:
            n = min(steps_per_call, steps_per_epoch - done_steps)
            state, loss = call(n)(state, data, perms, jnp.int32(done_steps), keys)
            losses.append(np.asarray(loss) * n)
            done_steps += n
            bar.update(n)
            bar.set_postfix(loss=f"{float(np.mean(loss)):.4f}")
        bar.close()
        epoch_loss = np.sum(losses, axis=0) / steps_per_epoch
        rows = []
        host_state = jax.device_get(state)
        # The policy of the epoch: the last weights, or their running average.
        weights = host_state[0] if config.ema_decay is None else \
            ema_weights(host_state[2], config.ema_decay, (epoch + 1) * steps_per_epoch)
        for i, name in enumerate(names):
            policy = nnx.merge(graphdef, jax.tree.map(lambda x: x[i], weights))
            row = {"epoch": epoch, "level": name, "loss": float(epoch_loss[i]), "steps": (epoch + 1) * steps_per_epoch,
                   "seconds": round(time.perf_counter() - started, 2)}
            if evaluate is not None:
                row.update(evaluate(name, policy, datasets[i][1]))
            checkpoints.save_policy(policy_store.epoch_dir(out, name, epoch), policy, {**meta_common, "level": name,
                                                                           "epoch": epoch, "stats": row})
            rows.append(row)
        checkpoints.save(state_dir, host_state, {"kind": "bc_train_state", "epoch": epoch})
        results.append_rows(stats_path, rows)
        if log is not None:
            log(rows)
        if config.progress:
            print(f"epoch {epoch + 1}/{config.num_epochs}: " + ", ".join(
                f"{r['level']} loss {r['loss']:.4f}" + (f" solve {r['solve_rate']:.2f}" if "solve_rate" in r else "")
                for r in rows))
    return out


def quick_evaluator(num_envs: int, seed: int = 0):
    """``evaluate(level, policy, data_meta) -> {"solve_rate", ...}``: the flow policy in the environment its
    data came from, naive sampling at d = 0 and s = H/2 (a training-progress signal, not a benchmark).
    Kinetix loads at the first call, after ``train_policy`` has checked its inputs (seconds sooner an error)."""
    cache = {}

    def evaluate(name: str, policy, meta: dict) -> dict:
        import flax.nnx as nnx
        import jax

        from rtchunk.delays import FixedDelay
        from rtchunk.kinetix import envs as envs_lib
        from rtchunk.kinetix import harness
        from rtchunk.kinetix import levels as levels_lib
        from rtchunk.kinetix.chunk_fns import policy_chunk_fn
        from rtchunk.sampling import Naive

        if name not in cache:
            level = levels_lib.load_level(meta["level_source"])
            env_config = envs_lib.EnvConfig(**meta["env"]) if "env" in meta else envs_lib.POLICY_ENV
            cache[name] = envs_lib.make_env([level], env_config)
        env, (arrays,) = cache[name]
        graphdef, params = nnx.split(policy)
        horizon = policy.config.horizon
        result = harness.evaluate(
            env, arrays, policy_chunk_fn(graphdef, Naive()), params, execute_horizon=max(1, horizon // 2),
            profile=FixedDelay(0), rng=jax.random.key(seed),
            config=harness.HarnessConfig(num_envs=num_envs, horizon=horizon),
        )
        m = result.metrics
        return {"solve_rate": m["solve_rate"], "solve_rate_low": m["solve_rate_low"],
                "solve_rate_high": m["solve_rate_high"], "return_mean": m["return_mean"]}

    return evaluate
