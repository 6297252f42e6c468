"""The environment stack: the wrappers checked exactly over scripted physics (no compile of the simulator),
and the real stack's observations (full and shrunk) at reset. Real physics runs in test_kinetix_eval.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from kinetix_helpers import FAST, level
from rtchunk.kinetix import envs

EPISODE = 6
STEPS = 16
GOAL = 1.5


@struct.dataclass
class Body:
    """Scripted physics: a point moved by the (noisy) first action dimension; solved past +GOAL, failed past -GOAL."""

    pos: jax.Array
    timestep: jax.Array


class ScriptedPhysics:
    def __init__(self, max_timesteps):
        self.max_timesteps = max_timesteps

    def step_env(self, rng, state, action, params):
        pos = state.pos + action[0]
        t = state.timestep + 1
        solved, failed = pos > GOAL, pos < -GOAL
        reward = jnp.where(solved, 1.0, jnp.where(failed, -1.0, 0.0))
        done = solved | failed | (t >= self.max_timesteps)
        info = {"GoalR": solved, "distance": jnp.abs(GOAL - pos), "pos": pos}
        return None, Body(pos, t), reward, done, info


class ScriptedEnv(envs.KinetixEnv):
    """The real wrapper stack over scripted physics; the base observation is [position, timestep]."""

    def __init__(self, config):
        lvl = level()
        super().__init__(config, lvl.static_env_params, lvl.env_params)
        self._physics = ScriptedPhysics(config.max_timesteps)
        self.base_obs_dim = 2

    def _base_obs(self, physics, level):
        return jnp.stack([physics.pos, physics.timestep.astype(jnp.float32)])


START = envs.LevelArrays(Body(jnp.float32(0.0), jnp.int32(0)))


def rollout(config, actions, keys):
    env = ScriptedEnv(config)

    @jax.jit
    def run(actions, keys):
        obs, state = env.reset_batch(jax.random.key(0), START, actions.shape[1])

        def step(carry, x):
            obs, state = carry
            action, key = x
            nobs, nstate, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(key, state, action, START)
            return (nobs, nstate), (obs, nobs, reward, done, info, info["pos"])  # pos before any reset

        return jax.lax.scan(step, (obs, state), (actions, keys))[1]

    return env, run(actions, keys)


@pytest.fixture(scope="module")
def expert():
    config = envs.EnvConfig(obs_history=4, prev_action=True, dense_reward=True, max_timesteps=EPISODE)
    actions = jax.random.uniform(jax.random.key(1), (STEPS, 4, 6), minval=-0.6, maxval=0.6)
    actions = actions.at[:, 1].set(actions[:, 0])  # envs 0 and 1: same actions, different noise
    keys = jax.random.split(jax.random.key(2), STEPS * 4).reshape(STEPS, 4)
    keys = keys.at[:, 2].set(keys[:, 0])  # envs 0 and 2: same noise, different actions
    actions = actions.at[:, 3, 0].set(0.4)  # env 3 walks to the goal
    env, out = rollout(config, actions, keys)
    return env, np.asarray(actions), jax.tree.map(np.asarray, out)


def test_observation_history_and_previous_action(expert):
    env, actions, (obs, next_obs, reward, done, info, _) = expert
    assert env.obs_dim == 4 * 2 + 6 == obs.shape[-1]
    np.testing.assert_array_equal(obs[0], np.zeros_like(obs[0]))  # reset: 4 x the first obs, no action
    for t in range(STEPS):
        live = ~done[t]
        # The history shifts by one observation, the newest is the new state, the commanded action follows.
        np.testing.assert_array_equal(next_obs[t][live, :6], obs[t][live, 2:8])
        np.testing.assert_array_equal(next_obs[t][live, 7], obs[t][live, 7] + 1)  # the newest timestep
        np.testing.assert_array_equal(next_obs[t][live, 8:], actions[t][live])


def test_auto_reset_and_episode_statistics(expert):
    env, actions, (obs, next_obs, reward, done, info, pos) = expert
    assert done.any(axis=0).all() and info["returned_episode_solved"][:, 3].any()
    for t, b in zip(*np.nonzero(done)):
        np.testing.assert_array_equal(next_obs[t, b], obs[0, b])  # the level again, from its start
        start = 0 if not done[:t, b].any() else np.flatnonzero(done[:t, b])[-1] + 1
        assert info["returned_episode_lengths"][t, b] == t - start + 1 <= EPISODE
        np.testing.assert_allclose(info["returned_episode_returns"][t, b], reward[start : t + 1, b].sum(), rtol=1e-5)
        assert info["returned_episode_solved"][t, b] == (pos[t, b] > GOAL)
        ended_early = t - start + 1 < EPISODE
        assert ended_early == (abs(pos[t, b]) > GOAL)


def test_dense_reward_is_the_papers_distance_shaping(expert):
    env, actions, (obs, next_obs, reward, done, info, pos) = expert
    steps_into = np.zeros(4, int)
    for t in range(STEPS):
        env_reward, distance = info["env_reward"][t], info["distance"][t]
        penalty = np.where(env_reward > 0, 0.0, distance / 6.0 / EPISODE)
        expected = env_reward - np.where(done[t], (EPISODE - steps_into) * penalty, penalty)
        np.testing.assert_allclose(reward[t], expected, rtol=1e-6)
        steps_into = np.where(done[t], 0, steps_into + 1)
    assert (reward != info["env_reward"]).any()


def test_action_noise_comes_from_the_step_key(expert):
    env, actions, (obs, next_obs, reward, done, info, pos) = expert
    start = np.vstack([np.zeros((1, 4)), np.where(done[:-1], 0.0, pos[:-1])])
    noise = pos - start - actions[..., 0]  # the scripted physics adds the noisy action to the position
    assert noise.std() == pytest.approx(0.1, rel=0.3)
    np.testing.assert_allclose(noise[:, 0], noise[:, 2], atol=1e-6)  # same key, same noise
    assert np.abs(noise[:, 0] - noise[:, 1]).min() > 0  # same action, other key: other noise


def test_policy_environment_has_no_history_shaping_or_previous_action():
    actions = jnp.full((STEPS, 2, 6), 0.3)
    keys = jax.random.split(jax.random.key(0), STEPS * 2).reshape(STEPS, 2)
    env, (obs, next_obs, reward, done, info, pos) = rollout(envs.EnvConfig(max_timesteps=EPISODE), actions, keys)
    assert env.obs_dim == 2 and obs.shape[-1] == 2
    np.testing.assert_array_equal(reward, info["env_reward"])
    np.testing.assert_array_equal(next_obs[..., 0], np.where(done, 0.0, pos))


# -- the real stack ----------------------------------------------------------------------------------


def test_shrunk_environment_observes_exactly_the_full_level():
    lvl = level()
    full_env, (full,) = envs.make_env([lvl], envs.EXPERT_ENV)
    small_env, (small,) = envs.make_env([lvl], envs.EnvConfig(obs_history=4, prev_action=True, shrink=True))
    assert small_env.shrunk and not full_env.shrunk and small_env.static_env_params.num_polygons == 6
    assert small_env.obs_dim == full_env.obs_dim == 4 * full_env.base_obs_dim + 6
    obs_full, _ = jax.jit(full_env.reset, compiler_options=FAST)(jax.random.key(0), full)
    obs_small, _ = jax.jit(small_env.reset, compiler_options=FAST)(jax.random.key(0), small)
    np.testing.assert_array_equal(obs_full, obs_small)
    assert full_env == envs.make_env([lvl], envs.EXPERT_ENV)[0]  # hashable and equal: shared compiles
    with pytest.raises(ValueError, match="obs_history"):
        envs.EnvConfig(obs_history=0)


def test_compact_observation_is_smaller_and_the_flow_policy_still_sees_the_full_layout():
    lvl = level()
    full_env, (arrays,) = envs.make_env([lvl], envs.EnvConfig(obs_history=4, prev_action=True, shrink=True))
    compact_env, _ = envs.make_env([lvl], envs.EnvConfig(obs_history=4, prev_action=True, shrink=True,
                                                         compact_obs=True))
    assert compact_env.base_obs_dim < full_env.base_obs_dim / 2
    assert compact_env.obs_dim == 4 * compact_env.base_obs_dim + 6

    def run(env):
        def step(state, key):
            obs, state, *_ = env.step(key, state, jnp.full(6, 0.5), arrays)
            return state, (obs, env.flow_observation(state, arrays))

        _, state = env.reset(jax.random.key(0), arrays)
        return jax.lax.scan(step, state, jax.random.split(jax.random.key(1), 3))[1]

    (obs_full, seen_full), (obs_compact, seen_compact) = (
        jax.jit(run, static_argnums=0, compiler_options=FAST)(e) for e in (full_env, compact_env))
    np.testing.assert_array_equal(seen_compact, seen_full)  # the same physics, the same flow observation
    np.testing.assert_array_equal(seen_full, obs_full[:, 3 * full_env.base_obs_dim:4 * full_env.base_obs_dim])
    assert obs_compact.shape == (3, compact_env.obs_dim) and not np.array_equal(obs_compact[0], obs_compact[-1])
    # The same information: Kinetix zeroes inactive slots, so the compact observation is the full one's
    # entries at full_obs_index, and every other full entry is 0.
    rows = np.asarray(compact_env.full_obs_index(arrays))
    assert compact_env.full_obs_dim == full_env.obs_dim and len(set(rows.tolist())) == len(rows)
    np.testing.assert_array_equal(obs_compact, obs_full[:, rows])
    np.testing.assert_array_equal(np.delete(obs_full, rows, axis=1), 0)
    np.testing.assert_array_equal(full_env.full_obs_index(arrays), np.arange(full_env.obs_dim))
    with pytest.raises(ValueError, match="compact_obs .* shrink"):
        envs.EnvConfig(compact_obs=True)


def test_one_environment_serves_many_levels():
    env, arrays = envs.make_env([level(), level("l/h4_cartpole")], envs.EnvConfig(shrink=True))
    reset = jax.jit(env.reset, compiler_options=FAST)
    obs = [reset(jax.random.key(0), a)[0] for a in arrays]
    assert reset._cache_size() == 1 and not np.array_equal(obs[0], obs[1])
    stacked = envs.stack_levels(arrays)
    both, _ = jax.jit(jax.vmap(env.reset, in_axes=(None, 0)), compiler_options=FAST)(jax.random.key(0), stacked)
    np.testing.assert_array_equal(both, np.stack(obs))
