"""Videos: Kinetix's pixel renderer on (shrunk) physics states, tiled and written as mp4."""

import imageio.v2 as imageio
import jax
import numpy as np

from kinetix_helpers import level
from rtchunk.kinetix import envs, video


def test_render_tile_and_write(tmp_path):
    env, (lvl,) = envs.make_env([level()], envs.EnvConfig(shrink=True))
    _, state = env.reset(jax.random.key(0), lvl)
    moved = state.physics.replace(polygon=state.physics.polygon.replace(
        position=state.physics.polygon.position.at[4:].add(0.5)))
    states = jax.tree.map(lambda a, b: np.stack([np.stack([a, b])] * 3), state.physics, moved)  # [T=3, N=2]
    frames = video.render_frames(env, lvl, states, downscale=4)
    assert frames.shape[:2] == (3, 2) and frames.dtype == np.uint8 and frames.shape[-1] == 3
    assert (frames < 255).any(), "shapes are drawn"
    assert not np.array_equal(frames[0, 0], frames[0, 1]), "moving shapes moves pixels"
    tiled = video.tile(frames, gap=2)
    assert tiled.shape == (3, frames.shape[2], 2 * frames.shape[3] + 2, 3)
    path = video.write_mp4(tmp_path / "v.mp4", tiled, fps=5)
    back = imageio.mimread(path)
    assert len(back) == 3 and back[0].shape == tiled.shape[1:]


def test_rollout_video_ends_with_the_last_scored_episode(tmp_path):
    from rtchunk.kinetix.harness import Records

    env, (lvl,) = envs.make_env([level()], envs.EnvConfig(shrink=True))
    _, state = env.reset(jax.random.key(0), lvl)
    states = jax.tree.map(lambda a: np.stack([np.stack([a, a, a])] * 3), state.physics)  # [T=3, N=3]
    done = np.zeros((3, 3), bool)
    done[0, 0] = done[1, 1] = True  # the shown environments' first episodes end at steps 0 and 1
    records = Records(action=None, done=done, starved=None, switched=None, cycle_start=None, delay=None,
                      told_delay=None, first_return=None, first_length=None, first_solved=None, first_done=None,
                      states=states)
    path = video.write_rollout_video(tmp_path / "r.mp4", env, lvl, records, num_envs=2, fps=5, downscale=4)
    back = imageio.mimread(path)
    assert len(back) == 2  # steps 0 and 1; step 2 belongs to a second, unscored episode
    assert back[0].shape[1] > back[0].shape[0]  # two environments side by side
