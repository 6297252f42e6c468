"""PPO with RPO for the expert policies, as pure functions over explicit state (purejaxrl-style).

One ``update`` = one rollout of ``num_steps`` steps in ``num_envs`` environments, GAE, then
``update_epochs`` passes of clipped-surrogate minibatch updates. Everything (environment, networks,
optimiser state, keys) lives in ``RunnerState``; the level is an argument, so the same compiled update
is vmapped over seeds x levels and sharded over devices by the caller (``rtchunk.kinetix.expert``).

The policy is a squashed Gaussian: a pre-squash sample u ~ N(mu(obs), exp(log_std)) with a
state-independent log-std, acting as tanh(u) on motor dimensions and sigmoid(u) on thruster dimensions.
PPO ratios are taken on u (the squashing Jacobian cancels in the ratio). RPO perturbs the mean by
U(-alpha, alpha) when re-evaluating log-probabilities during the update.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """The papers' expert settings where they are given (RPO 0.3, gamma .995, lambda .9, clip .2, Adam 3e-4,
    grad clip 1, 2x256 tanh MLPs); rollout sizes are this project's choices."""

    num_envs: int = 512
    num_steps: int = 128
    """Rollout length per update."""
    total_timesteps: int = 65_000_000
    """Per seed and level (the papers: 65M)."""
    update_epochs: int = 4
    num_minibatches: int = 8
    learning_rate: float = 3e-4
    gamma: float = 0.995
    gae_lambda: float = 0.9
    clip_eps: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 1.0
    rpo_alpha: float = 0.3
    hidden_dim: int = 256
    num_hidden_layers: int = 2
    init_log_std: float = 0.0

    def __post_init__(self):
        for name in ("num_envs", "num_steps", "update_epochs", "num_minibatches", "hidden_dim", "num_hidden_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError(
                f"num_envs * num_steps ({self.num_envs * self.num_steps}) must be divisible by num_minibatches "
                f"({self.num_minibatches})"
            )
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("learning_rate", "clip_eps", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.rpo_alpha < 0:
            raise ValueError(f"rpo_alpha must be >= 0, got {self.rpo_alpha}")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return max(1, self.total_timesteps // self.steps_per_update)


# -- networks ----------------------------------------------------------------------------------------


def _dense(rng, n_in: int, n_out: int, scale: float) -> Params:
    return {"w": jax.nn.initializers.orthogonal(scale)(rng, (n_in, n_out)), "b": jnp.zeros(n_out)}


def _mlp(rng, sizes: list[int], out_scale: float) -> list[Params]:
    keys = jax.random.split(rng, len(sizes) - 1)
    last = len(sizes) - 2
    return [_dense(k, a, b, out_scale if i == last else math.sqrt(2)) for i, (k, a, b) in
            enumerate(zip(keys, sizes[:-1], sizes[1:]))]


def _apply_mlp(layers: list[Params], x: jax.Array) -> jax.Array:
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def init_params(rng: jax.Array, obs_dim: int, action_dim: int, config: PPOConfig) -> Params:
    k_actor, k_critic = jax.random.split(rng)
    hidden = [config.hidden_dim] * config.num_hidden_layers
    return {
        "actor": _mlp(k_actor, [obs_dim, *hidden, action_dim], 0.01),
        "critic": _mlp(k_critic, [obs_dim, *hidden, 1], 1.0),
        "log_std": jnp.full(action_dim, config.init_log_std, jnp.float32),
    }


def policy_mean(params: Params, obs: jax.Array) -> jax.Array:
    return _apply_mlp(params["actor"], obs)


def value(params: Params, obs: jax.Array) -> jax.Array:
    return _apply_mlp(params["critic"], obs)[..., 0]


def squash(u: jax.Array, num_motors: int) -> jax.Array:
    """tanh on the first ``num_motors`` dimensions (motors, [-1, 1]), sigmoid on the rest (thrusters, [0, 1])."""
    is_motor = jnp.arange(u.shape[-1]) < num_motors
    return jnp.where(is_motor, jnp.tanh(u), jax.nn.sigmoid(u))


def gaussian_log_prob(u: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    z = (u - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi), axis=-1)


def gaussian_entropy(log_std: jax.Array) -> jax.Array:
    return jnp.sum(log_std + 0.5 * math.log(2 * math.pi * math.e))


def act(params: Params, obs: jax.Array, rng: jax.Array, num_motors: int, deterministic: bool = False):
    """(action, pre-squash u, log-prob of u) for a batch of observations."""
    mean = policy_mean(params, obs)
    if deterministic:
        u = mean
    else:
        u = mean + jnp.exp(params["log_std"]) * jax.random.normal(rng, mean.shape)
    return squash(u, num_motors), u, gaussian_log_prob(u, mean, params["log_std"])


# -- rollout and update ------------------------------------------------------------------------------


@struct.dataclass
class RunnerState:
    params: Params
    opt_state: Any
    env_state: Any
    obs: jax.Array
    rng: jax.Array  # raw uint32 key data, so checkpoints hold plain arrays
    update: jax.Array  # int32


@struct.dataclass
class Transition:
    obs: jax.Array
    u: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array
    ended: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array
    solved: jax.Array


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.learning_rate, eps=1e-5))


def init_runner(rng: jax.Array, env, level, config: PPOConfig) -> RunnerState:
    """A fresh learner on ``level``: networks, optimiser and ``num_envs`` environments."""
    k_params, k_env, k_run = jax.random.split(rng, 3)
    full_obs_dim = getattr(env, "full_obs_dim", env.obs_dim)
    params = init_params(k_params, full_obs_dim, env.action_dim, config)
    if full_obs_dim != env.obs_dim:
        # A compact observation: the full-layout network's first-layer rows for the entries it keeps, so it
        # is that network exactly (the rows left out only ever multiply zeros) and learns as it does.
        rows = env.full_obs_index(level)
        for net in ("actor", "critic"):
            params[net][0] = {**params[net][0], "w": params[net][0]["w"][rows]}
    obs, env_state = env.reset_batch(k_env, level, config.num_envs)
    return RunnerState(params, make_optimizer(config).init(params), env_state, obs, jax.random.key_data(k_run),
                       jnp.int32(0))


def gae(transitions: Transition, last_value: jax.Array, gamma: float, lam: float):
    """(advantages, returns), both [T, N]. ``done`` at t means obs t+1 starts a new episode."""

    def body(carry, t):
        next_adv, next_value = carry
        not_done = 1.0 - t.done.astype(jnp.float32)
        delta = t.reward + gamma * next_value * not_done - t.value
        adv = delta + gamma * lam * not_done * next_adv
        return (adv, t.value), adv

    _, adv = jax.lax.scan(body, (jnp.zeros_like(last_value), last_value), transitions, reverse=True)
    return adv, adv + transitions.value


def ppo_loss(params: Params, batch: Transition, advantages, returns, rng, config: PPOConfig):
    mean = policy_mean(params, batch.obs)
    mean = mean + jax.random.uniform(rng, mean.shape, minval=-config.rpo_alpha, maxval=config.rpo_alpha)
    log_prob = gaussian_log_prob(batch.u, mean, params["log_std"])
    ratio = jnp.exp(log_prob - batch.log_prob)
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    actor_loss = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - config.clip_eps, 1 + config.clip_eps) * adv))
    v = value(params, batch.obs)
    v_clipped = batch.value + jnp.clip(v - batch.value, -config.clip_eps, config.clip_eps)
    value_loss = 0.5 * jnp.mean(jnp.maximum(jnp.square(v - returns), jnp.square(v_clipped - returns)))
    entropy = gaussian_entropy(params["log_std"])
    total = actor_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    return total, {"actor_loss": actor_loss, "value_loss": value_loss, "entropy": entropy,
                   "approx_kl": jnp.mean(batch.log_prob - log_prob)}


def make_update(env, config: PPOConfig, num_motors: int) -> Callable[[RunnerState, Any], tuple[RunnerState, dict]]:
    """``update(runner, level) -> (runner, metrics)``: one rollout + PPO epochs, for one learner."""
    optimizer = make_optimizer(config)

    def env_step(carry, _):
        runner, level = carry
        rng, k_act, k_env = jax.random.split(jax.random.wrap_key_data(runner.rng), 3)
        action, u, log_prob = act(runner.params, runner.obs, k_act, num_motors)
        v = value(runner.params, runner.obs)
        obs, env_state, reward, done, info = env.step_batch(k_env, runner.env_state, action, level)
        t = Transition(runner.obs, u, log_prob, v, reward, done, info["returned_episode"],
                       info["returned_episode_returns"], info["returned_episode_lengths"],
                       info["returned_episode_solved"])
        return (runner.replace(env_state=env_state, obs=obs, rng=jax.random.key_data(rng)), level), t

    def update(runner: RunnerState, level) -> tuple[RunnerState, dict]:
        (runner, _), traj = jax.lax.scan(env_step, (runner, level), None, length=config.num_steps)
        advantages, returns = gae(traj, value(runner.params, runner.obs), config.gamma, config.gae_lambda)

        batch_size = config.steps_per_update
        flat = lambda x: x.reshape(batch_size, *x.shape[2:])  # noqa: E731
        data = (jax.tree.map(flat, traj), flat(advantages), flat(returns))

        def epoch(carry, key):
            params, opt_state = carry
            k_perm, k_rpo = jax.random.split(key)
            perm = jax.random.permutation(k_perm, batch_size)
            shuffled = jax.tree.map(
                lambda x: x[perm].reshape(config.num_minibatches, -1, *x.shape[1:]), data
            )

            def minibatch(carry, inputs):
                params, opt_state = carry
                (batch, adv, ret), key = inputs
                grads, stats = jax.grad(ppo_loss, has_aux=True)(params, batch, adv, ret, key, config)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), stats

            keys = jax.random.split(k_rpo, config.num_minibatches)
            return jax.lax.scan(minibatch, (params, opt_state), (shuffled, keys))

        rng, k_epochs = jax.random.split(jax.random.wrap_key_data(runner.rng))
        (params, opt_state), stats = jax.lax.scan(
            epoch, (runner.params, runner.opt_state), jax.random.split(k_epochs, config.update_epochs)
        )
        ended = traj.ended.astype(jnp.float32)
        n_ended = ended.sum()
        metrics = {k: v.mean() for k, v in stats.items()}
        metrics.update(
            episodes=n_ended,
            episode_return=(traj.episode_return * ended).sum() / jnp.maximum(n_ended, 1),
            episode_length=(traj.episode_length * ended).sum() / jnp.maximum(n_ended, 1),
            solve_rate=(traj.solved * ended).sum() / jnp.maximum(n_ended, 1),
        )
        runner = runner.replace(params=params, opt_state=opt_state, rng=jax.random.key_data(rng),
                                update=runner.update + 1)
        return runner, metrics

    return update


def evaluate_expert(env, params: Params, level, rng: jax.Array, num_envs: int, num_motors: int, max_steps: int):
    """First-episode statistics of the deterministic expert (mean action, plus the env's action noise):
    dict of [num_envs] arrays ``return``, ``length``, ``solved``."""
    obs, state = env.reset_batch(rng, level, num_envs)

    def body(carry, key):
        obs, state, finished, ret, length, solved = carry
        action, _, _ = act(params, obs, key, num_motors, deterministic=True)
        obs, state, reward, done, info = env.step_batch(key, state, action, level)
        first = done & ~finished
        ret = jnp.where(first, info["returned_episode_returns"], ret)
        length = jnp.where(first, info["returned_episode_lengths"], length)
        solved = jnp.where(first, info["returned_episode_solved"], solved)
        return (obs, state, finished | done, ret, length, solved), None

    zeros = jnp.zeros(num_envs)
    init = (obs, state, jnp.zeros(num_envs, bool), zeros, zeros.astype(jnp.int32), jnp.zeros(num_envs, bool))
    (_, _, finished, ret, length, solved), _ = jax.lax.scan(body, init, jax.random.split(rng, max_steps))
    return {"return": ret, "length": length, "solved": solved & finished, "finished": finished}


def record_episode(env, params: Params, level, rng: jax.Array, num_envs: int, num_motors: int, max_steps: int):
    """Environment states [max_steps + 1, num_envs] of the deterministic expert from a reset (for videos):
    the physics state where the environment has one, else the whole state."""
    obs, state = env.reset_batch(rng, level, num_envs)

    def body(carry, key):
        obs, state = carry
        action, _, _ = act(params, obs, key, num_motors, deterministic=True)
        obs, state, _, _, _ = env.step_batch(key, state, action, level)
        return (obs, state), getattr(state, "physics", state)

    _, states = jax.lax.scan(body, (obs, state), jax.random.split(rng, max_steps))
    first = jax.tree.map(lambda x: x[None], getattr(state, "physics", state))
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, states)
