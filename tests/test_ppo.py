"""PPO with RPO: squashing, GAE, and a short run that learns (on a tiny environment)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_env import ToyEnv, toy_level

from rtchunk.kinetix import ppo

CONFIG = ppo.PPOConfig(num_envs=32, num_steps=16, update_epochs=4, num_minibatches=4, hidden_dim=32,
                       learning_rate=3e-3, gamma=0.99)


def test_squash_ranges_and_log_prob():
    u = jnp.array([[-5.0, 0.0, 5.0, -5.0, 5.0]])
    a = ppo.squash(u, num_motors=3)
    np.testing.assert_allclose(a[0, :3], np.tanh([-5, 0, 5]), rtol=1e-6)
    np.testing.assert_allclose(a[0, 3:], 1 / (1 + np.exp([5.0, -5.0])), rtol=1e-6)
    mean, log_std = jnp.zeros((1, 2)), jnp.log(jnp.array([1.0, 2.0]))
    x = jnp.array([[0.5, -1.0]])
    expected = -0.5 * (0.25 + 0.25) - np.log(2.0) - np.log(2 * np.pi)
    np.testing.assert_allclose(ppo.gaussian_log_prob(x, mean, log_std), [expected], rtol=1e-6)


def test_gae_matches_a_hand_computation():
    t = ppo.Transition(*(jnp.zeros((3, 1)) for _ in range(10)))
    t = t.replace(reward=jnp.array([[1.0], [0.0], [2.0]]), value=jnp.array([[0.5], [0.2], [0.1]]),
                  done=jnp.array([[False], [True], [False]]))
    adv, ret = ppo.gae(t, jnp.array([0.3]), gamma=0.9, lam=0.8)
    d2 = 2.0 + 0.9 * 0.3 - 0.1
    d1 = 0.0 - 0.2  # episode ends after step 1: no bootstrap
    d0 = 1.0 + 0.9 * 0.2 - 0.5
    np.testing.assert_allclose(adv[:, 0], [d0 + 0.9 * 0.8 * d1, d1, d2], rtol=1e-6)
    np.testing.assert_allclose(ret, adv + t.value, rtol=1e-6)


def test_config_is_validated():
    with pytest.raises(ValueError, match="num_minibatches"):
        ppo.PPOConfig(num_envs=10, num_steps=3, num_minibatches=4)
    with pytest.raises(ValueError, match="gamma"):
        ppo.PPOConfig(gamma=1.5)
    with pytest.raises(ValueError, match="rpo_alpha"):
        ppo.PPOConfig(rpo_alpha=-0.1)


def test_short_ppo_run_improves_return():
    env, level = ToyEnv(), toy_level()
    update = jax.jit(ppo.make_update(env, CONFIG, num_motors=env.num_motors))
    runner = ppo.init_runner(jax.random.key(0), env, level, CONFIG)
    returns, solved = [], []
    for _ in range(40):
        runner, m = update(runner, level)
        returns.append(float(m["episode_return"]))
        solved.append(float(m["solve_rate"]))
    assert int(runner.update) == 40
    assert np.mean(returns[-5:]) > np.mean(returns[:5]) + 0.2, returns
    stats = ppo.evaluate_expert(env, runner.params, level, jax.random.key(1), 16, env.num_motors, env.horizon)
    assert bool(stats["finished"].all())
    assert float(stats["solved"].mean()) > 0.8


def test_a_compact_observation_learns_exactly_as_the_full_layout():
    # The papers' expert stack on h17_unicycle, observed in the full layout and compacted: the same networks
    # (the compact first layer is the full one's rows for the entries it keeps), so the same updates.
    import dataclasses

    from kinetix_helpers import FAST, level

    from rtchunk.kinetix import envs

    config = ppo.PPOConfig(num_envs=4, num_steps=8, update_epochs=2, num_minibatches=2, hidden_dim=16)
    runs = {}
    for compact in (False, True):
        env, (arrays,) = envs.make_env([level()], dataclasses.replace(envs.EXPERT_ENV, shrink=True,
                                                                       compact_obs=compact))
        step = ppo.make_update(env, config, num_motors=env.num_motors)

        def two_updates(key, arrays, env=env, step=step):
            runner = ppo.init_runner(key, env, arrays, config)
            first = runner.params
            for _ in range(2):
                runner, metrics = step(runner, arrays)
            return first, runner.params, env.full_obs_index(arrays)

        runs[compact] = jax.jit(two_updates, compiler_options=FAST)(jax.random.key(0), arrays)
    (full_init, full_after, _), (compact_init, compact_after, rows) = runs[False], runs[True]
    assert rows.shape[0] < full_init["actor"][0]["w"].shape[0] / 3
    for init, after in ((full_init, compact_init), (full_after, compact_after)):
        for net in ("actor", "critic"):
            np.testing.assert_allclose(after[net][0]["w"], init[net][0]["w"][rows], atol=1e-5)
            for layer_full, layer_compact in zip(init[net][1:], after[net][1:]):
                np.testing.assert_allclose(layer_compact["w"], layer_full["w"], atol=1e-5)
    # The first layer's rows left out multiply entries that are always 0: they never move.
    left_out = np.setdiff1d(np.arange(full_init["actor"][0]["w"].shape[0]), np.asarray(rows))
    np.testing.assert_array_equal(full_after["actor"][0]["w"][left_out], full_init["actor"][0]["w"][left_out])
    assert not np.allclose(full_after["actor"][0]["w"], full_init["actor"][0]["w"])  # it did learn
