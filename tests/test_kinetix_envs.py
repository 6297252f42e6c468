"""The environment stack on a real level (shrunk h17_unicycle, short episodes): one compiled rollout checked
for observation history, previous action, dense reward, auto-reset, episode statistics and action noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kinetix_helpers import FAST, level
from rtchunk.kinetix import envs

EPISODE = 5
STEPS = 12


@pytest.fixture(scope="module")
def expert_rollout():
    config = envs.EnvConfig(obs_history=4, prev_action=True, dense_reward=True, max_timesteps=EPISODE, shrink=True)
    env, (lvl,) = envs.make_env([level()], config)
    actions = jax.random.uniform(jax.random.key(1), (STEPS, 3, env.action_dim), minval=-1, maxval=1)
    actions = actions.at[:, 1].set(actions[:, 0])  # envs 0 and 1: same actions, different noise
    keys = jax.random.split(jax.random.key(2), STEPS * 3).reshape(STEPS, 3)
    keys = keys.at[:, 2].set(keys[:, 0])  # envs 0 and 2: same noise, different actions

    @jax.jit(compiler_options=FAST)
    def rollout(level, actions, keys):
        obs, state = env.reset_batch(jax.random.key(0), level, 3)

        def step(carry, x):
            obs, state = carry
            action, key = x
            nobs, nstate, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(key, state, action, level)
            return (nobs, nstate), (obs, nobs, reward, done, info, nstate.physics.polygon.position)

        _, out = jax.lax.scan(step, (obs, state), (actions, keys))
        return out

    return env, np.asarray(actions), rollout(lvl, actions, keys)


def test_observation_layout_history_and_previous_action(expert_rollout):
    env, actions, (obs, next_obs, reward, done, info, _) = expert_rollout
    base = env.base_obs_dim
    assert env.obs_dim == 4 * base + env.action_dim == obs.shape[-1]
    assert env.num_motors == 4 and env.action_dim == 6
    first = obs[0]
    for k in range(1, 4):  # a reset repeats the first observation
        np.testing.assert_array_equal(first[:, k * base : (k + 1) * base], first[:, :base])
    np.testing.assert_array_equal(first[:, 4 * base :], 0.0)
    for t in range(STEPS):
        live = ~np.asarray(done[t])
        # The history shifts by one observation and the commanded action is appended.
        np.testing.assert_array_equal(next_obs[t][live, : 3 * base], obs[t][live, base : 4 * base])
        np.testing.assert_array_equal(next_obs[t][live, 4 * base :], actions[t][live])


def test_auto_reset_replays_the_level_and_reports_the_episode(expert_rollout):
    env, actions, (obs, next_obs, reward, done, info, _) = expert_rollout
    done = np.asarray(done)
    assert done[EPISODE - 1].all(), "a 5-step episode ends at step 5 unless it ended earlier"
    for t, b in zip(*np.nonzero(done)):
        np.testing.assert_array_equal(next_obs[t, b], obs[0, b])  # the first observation again
        start = 0 if not done[:t, b].any() else np.flatnonzero(done[:t, b])[-1] + 1
        assert info["returned_episode_lengths"][t, b] == t - start + 1
        np.testing.assert_allclose(info["returned_episode_returns"][t, b], reward[start : t + 1, b].sum(), rtol=1e-5)
        assert info["returned_episode_solved"][t, b] == info["GoalR"][t, b]


def test_dense_reward_is_the_papers_distance_shaping(expert_rollout):
    env, actions, (obs, next_obs, reward, done, info, _) = expert_rollout
    steps_into = np.zeros(3, int)
    for t in range(STEPS):
        env_reward, distance = np.asarray(info["env_reward"][t]), np.asarray(info["distance"][t])
        penalty = np.where(env_reward > 0, 0.0, distance / 6.0 / EPISODE)
        expected = env_reward - np.where(done[t], (EPISODE - steps_into) * penalty, penalty)
        np.testing.assert_allclose(reward[t], expected, rtol=1e-5, atol=1e-7)
        steps_into = np.where(done[t], 0, steps_into + 1)
    assert (np.asarray(reward) != np.asarray(info["env_reward"])).any()


def test_action_noise_is_drawn_from_the_step_key(expert_rollout):
    env, actions, (*_, positions) = expert_rollout
    positions = np.asarray(positions)
    # Same actions, different keys: different trajectories (std 0.1 noise); same key and actions: identical.
    assert not np.allclose(positions[1:EPISODE - 1, 0], positions[1:EPISODE - 1, 1])
    assert np.abs(positions[:, 0] - positions[:, 2]).max() > 0  # different actions still differ


def test_shrunk_environment_observes_the_full_level():
    lvl = level()
    full_env, (full,) = envs.make_env([lvl])
    small_env, (small,) = envs.make_env([lvl], envs.EnvConfig(shrink=True))
    assert small_env.shrunk and not full_env.shrunk
    assert small_env.obs_dim == full_env.obs_dim
    assert small_env.static_env_params.num_polygons == 6
    obs_full, _ = jax.jit(full_env.reset)(jax.random.key(0), full)
    obs_small, _ = jax.jit(small_env.reset)(jax.random.key(0), small)
    np.testing.assert_array_equal(obs_full, obs_small)
    with pytest.raises(ValueError, match="obs_history"):
        envs.EnvConfig(obs_history=0)


def test_one_environment_serves_many_levels():
    levels_ = [level(), level("l/h4_cartpole")]
    env, arrays = envs.make_env(levels_, envs.EnvConfig(shrink=True))
    stacked = envs.stack_levels(arrays)
    assert stacked.state.polygon.position.shape[0] == 2
    reset = jax.jit(env.reset)
    for a in arrays:
        reset(jax.random.key(0), a)
    assert reset._cache_size() == 1
    obs, _ = jax.jit(jax.vmap(env.reset, in_axes=(None, 0)))(jax.random.key(0), stacked)
    assert obs.shape == (2, env.obs_dim) and not np.array_equal(obs[0], obs[1])
