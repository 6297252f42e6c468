"""Expert training over seeds x levels: checkpoints with stats, exact resume, expert selection."""

import dataclasses

import jax
import numpy as np
import pytest
from toy_env import ToyEnv, toy_level

from rtchunk import checkpoints
from rtchunk.kinetix import expert, ppo

SETTINGS = expert.TrainerSettings(
    num_seeds=2,
    ppo=ppo.PPOConfig(num_envs=16, num_steps=16, update_epochs=2, num_minibatches=2, hidden_dim=16,
                      learning_rate=3e-3, gamma=0.99, total_timesteps=16 * 16 * 6),
    checkpoint_every=3, updates_per_call=2, num_eval_envs=8, progress=False,
)


def _levels():
    a, b = toy_level(target=(1.0, -0.5)), toy_level(target=(-0.5, 0.8))
    return jax.tree.map(lambda x, y: np.stack([x, y]), a, b)


def _train(out, settings=SETTINGS, log=None):
    env = ToyEnv()
    return expert.train_experts(env, _levels(), ["a", "b"], settings, out, num_motors=env.num_motors,
                                episode_steps=env.horizon, log=log)


def test_checkpoints_stats_and_exact_resume(tmp_path):
    logged = []
    straight = _train(tmp_path / "straight", log=logged.append)
    assert [p.name for p in expert.checkpoint_dirs(straight)] == ["update_000003", "update_000006"]
    meta = checkpoints.load_meta(straight / "checkpoints" / "update_000006")
    assert {(r["level"], r["seed"]) for r in meta["stats"]} == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    assert logged[-1] == meta["stats"] and len(logged) == 2  # what tracking (--wandb-project) receives
    arrays = checkpoints.load_arrays(straight / "checkpoints" / "update_000006")
    assert arrays["log_std"].shape == (2, 2, ToyEnv.action_dim)  # [levels, seeds, ...]

    half = dataclasses.replace(SETTINGS, ppo=dataclasses.replace(SETTINGS.ppo, total_timesteps=16 * 16 * 3))
    resumed = _train(tmp_path / "resumed", half)
    assert len(expert.checkpoint_dirs(resumed)) == 1
    _train(tmp_path / "resumed")  # longer total: continues from update 3
    for name, value in arrays.items():
        np.testing.assert_array_equal(value, checkpoints.load_arrays(resumed / "checkpoints" / "update_000006")[name])
    rows = (resumed / "stats.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4

    with pytest.raises(ValueError, match="different settings"):
        _train(tmp_path / "resumed", dataclasses.replace(SETTINGS, num_seeds=3))


def test_training_episode_statistics_without_evaluation(tmp_path):
    out = _train(tmp_path / "train_stats", dataclasses.replace(SETTINGS, num_eval_envs=0))
    rows = checkpoints.load_meta(out / "checkpoints" / "update_000006")["stats"]
    for row in rows:
        # Three updates of 16 envs x 16 steps with 16-step episodes: every env finishes 3 episodes.
        assert row["episodes"] == 3 * 16 and 0.0 <= row["solve_rate"] <= 1.0 and row["length"] == 16.0


def test_select_experts_applies_the_threshold(tmp_path):
    out = _train(tmp_path / "run")
    everything = expert.select_experts(out, threshold=0.0)
    assert sorted(everything) == ["a", "b"] and all(len(v) == 2 for v in everything.values())
    all_rows = [r for p in expert.checkpoint_dirs(out) for r in checkpoints.load_meta(p)["stats"]]
    for name, chosen in everything.items():
        for sel in chosen:
            rates = [r["solve_rate"] for r in all_rows if r["level"] == name and r["seed"] == sel["seed"]]
            assert sel["solve_rate"] == max(rates)
    strict = expert.select_experts(out, threshold=1.0)
    for name, chosen in strict.items():
        assert all(c["solve_rate"] == 1.0 for c in chosen)
    like = ppo.init_params(jax.random.key(0), ToyEnv.obs_dim, ToyEnv.action_dim, SETTINGS.ppo)
    params = expert.load_expert_params(everything["b"][1], like)
    assert jax.tree.structure(params) == jax.tree.structure(like)
    with pytest.raises(ValueError, match="threshold"):
        expert.select_experts(out, threshold=1.5)


def test_collect_uses_one_expert_per_episode():
    from rtchunk.kinetix import collect

    env = ToyEnv()
    like = ppo.init_params(jax.random.key(0), env.obs_dim, env.action_dim, SETTINGS.ppo)

    def constant_expert(value):
        # Zero weights everywhere; the output bias alone sets the mean action.
        p = jax.tree.map(np.zeros_like, like)
        p["actor"][-1]["b"] = np.full(env.action_dim, value, np.float32)
        return p

    experts = jax.tree.map(lambda a, b: np.stack([a, b]), constant_expert(2.0), constant_expert(-2.0))
    data = collect.collect(env, toy_level(), experts, num_motors=env.num_motors, num_envs=6, num_steps=5 * env.horizon,
                           rng=jax.random.key(3), segment=24, progress=False)
    assert data.obs.shape == (6, 80, env.obs_dim) and data.action.shape == (6, 80, env.action_dim)
    episodes = data.action[:, :, 0].reshape(6, 5, env.horizon)  # episodes are exactly `horizon` steps here
    assert np.all(episodes == episodes[..., :1]), "the expert changed inside an episode"
    signs = np.sign(episodes[..., 0])
    assert (signs > 0).any() and (signs < 0).any(), "both experts should appear"
    assert data.done.sum() == 6 * 5 and np.all(data.episode_length[data.done] == env.horizon)
    summary = data.summary()
    assert summary["episodes"] == 30 and 0.0 <= summary["solve_rate"] <= 1.0


def test_checkpoint_videos_show_the_first_seeds_expert(tmp_path, monkeypatch):
    from rtchunk.kinetix import video

    rendered, written = [], []

    def fake_render(env, level, states, downscale=2):
        rendered.append((np.asarray(level.target), jax.tree.map(np.shape, states)))
        steps, envs = np.shape(jax.tree.leaves(states)[0])[:2]
        return np.zeros((steps, envs, 4, 4, 3), np.uint8)

    monkeypatch.setattr(video, "render_frames", fake_render)
    monkeypatch.setattr(video, "write_mp4", lambda path, frames, fps=25: written.append((path.name, frames.shape)))
    _train(tmp_path / "videos", dataclasses.replace(SETTINGS, video_envs=3))
    # Two checkpoints x two levels, each an episode (16 steps + the reset state) of 3 environments side by side.
    assert [name for name, _ in written] == ["a_update_000003.mp4", "b_update_000003.mp4",
                                            "a_update_000006.mp4", "b_update_000006.mp4"]
    assert all(shape == (17, 4, 3 * 4 + 2 * 4, 3) for _, shape in written)
    np.testing.assert_allclose(rendered[0][0], (1.0, -0.5))  # level a's own arrays
    np.testing.assert_allclose(rendered[1][0], (-0.5, 0.8))


def test_stop_at_solve_rate_ends_the_run_once_every_learner_reached_it(tmp_path):
    # Targets at the start point: a policy that barely moves solves them, so every learner does at once.
    env = ToyEnv()
    near = toy_level(target=(0.0, 0.0))
    levels = jax.tree.map(lambda x, y: np.stack([x, y]), near, near)

    def train(settings=SETTINGS):
        return expert.train_experts(env, levels, ["a", "b"], settings, tmp_path / "early", num_motors=env.num_motors,
                                    episode_steps=env.horizon)

    early = dataclasses.replace(SETTINGS, stop_at_solve_rate=0.5)
    out = train(early)
    assert [p.name for p in expert.checkpoint_dirs(out)] == ["update_000003"]
    assert expert.run_finished(out, early) and not expert.run_finished(out, SETTINGS)
    train(early)  # a rerun reads it and stops at once
    assert len(expert.checkpoint_dirs(out)) == 1
    train()  # without the stop (free to change on resume) it trains on to the budget
    assert [p.name for p in expert.checkpoint_dirs(out)][-1] == "update_000006"
    assert expert.run_finished(out, SETTINGS)
    with pytest.raises(ValueError, match="stop_at_solve_rate"):
        dataclasses.replace(SETTINGS, stop_at_solve_rate=0.0)


def test_stop_at_solved_seeds_counts_each_level():
    settings = dataclasses.replace(SETTINGS, stop_at_solve_rate=0.6, stop_at_solved_seeds=1)
    best = np.array([0.7, 0.0, 0.0, 0.9])  # [levels a, b] x [seeds 0, 1], level-major
    assert expert.enough_solved(best, settings)
    assert not expert.enough_solved(best, dataclasses.replace(settings, stop_at_solved_seeds=None))  # all of them
    assert not expert.enough_solved(np.array([0.7, 0.8, 0.5, 0.0]), settings)  # level b has none
    assert not expert.enough_solved(best, dataclasses.replace(settings, stop_at_solve_rate=None))
    assert expert.enough_solved(np.array([0.7, 0.8, 0.6, 0.9]), dataclasses.replace(settings, stop_at_solved_seeds=2))
    with pytest.raises(ValueError, match=r"stop_at_solved_seeds must be in \[1, num_seeds = 2\]"):
        dataclasses.replace(SETTINGS, stop_at_solved_seeds=3)
