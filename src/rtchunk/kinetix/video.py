"""Videos of evaluated environments with Kinetix's pixel renderer (mp4 through imageio-ffmpeg)."""

from __future__ import annotations

import functools
import os
import tempfile
import warnings
from pathlib import Path

import jax
import numpy as np


@functools.lru_cache(maxsize=8)
def _renderer(env, downscale: int):
    from kinetix.render.renderer_pixels import make_render_pixels

    static = env.full_static_env_params.replace(screen_dim=(512, 512), downscale=downscale)
    render = make_render_pixels(env.env_params, static)

    @jax.jit
    def frames(physics, level):
        def one(state):
            full = env.full_layout(state, level)
            # Kinetix renders x-major with y up; images are row-major with y down.
            return render(full).round().astype(np.uint8).transpose(1, 0, 2)[::-1]

        return jax.vmap(jax.vmap(one))(physics)

    return frames


def render_frames(env, level, physics_states, downscale: int = 2) -> np.ndarray:
    """Frames [T, N, height, width, 3] (uint8) of physics states [T, N] of one level.

    The frames are rendered on all of this process's devices, a share of the time steps each."""
    from rtchunk.kinetix.parallel import level_sharding

    steps = jax.tree.leaves(physics_states)[0].shape[0]
    devices = len(jax.local_devices())
    pad = -steps % devices
    padded = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]), physics_states)
    frames = _renderer(env, downscale)(jax.device_put(padded, level_sharding(steps + pad)), level)
    return np.asarray(frames)[:steps]


def tile(frames: np.ndarray, gap: int = 4) -> np.ndarray:
    """[T, N, h, w, 3] -> [T, h, N*w + (N-1)*gap, 3], environments side by side on a white background."""
    t, n, h, w, c = frames.shape
    out = np.full((t, h, n * w + (n - 1) * gap, c), 255, np.uint8)
    for i in range(n):
        out[:, :, i * (w + gap) : i * (w + gap) + w] = frames[:, i]
    return out


def write_mp4(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """Write [T, h, w, 3] uint8 frames as an mp4, atomically (temporary file, then rename)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # imageio starts ffmpeg with fork+exec, which is safe; JAX warns about any fork.
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            imageio.mimwrite(tmp, list(frames), fps=fps, macro_block_size=1, format="FFMPEG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_rollout_video(path: Path, env, level, records, num_envs: int, fps: int = 25, downscale: int = 2) -> Path:
    """The first ``num_envs`` environments of an evaluation (recorded with ``record_states``), side by side,
    until the last of their first episodes ends (what the evaluation scores)."""
    if records.states is None:
        raise ValueError("the evaluation recorded no states; run it with HarnessConfig(record_states=N)")
    done = np.asarray(records.done)[:, :num_envs]
    steps = done.shape[0]
    end = int(np.max(np.where(done.any(axis=0), done.argmax(axis=0) + 1, steps)))
    # All steps are rendered (one compiled renderer for every video of a run), only the scored ones kept.
    states = jax.tree.map(lambda x: np.asarray(x)[:, :num_envs], records.states)
    return write_mp4(path, tile(render_frames(env, level, states, downscale)[:end]), fps)
